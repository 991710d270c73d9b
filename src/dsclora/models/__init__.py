"""Networks and what is done to them: adapters (ConvLoRA / LoRA), the model descriptor, SPAN, self-ensemble,
bicubic, receptive-field measurement."""
