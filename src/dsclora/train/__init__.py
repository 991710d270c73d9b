"""Training: typed YAML recipes, the patch data pipeline, the loop (EMA, AMP, resume), and DDP."""
