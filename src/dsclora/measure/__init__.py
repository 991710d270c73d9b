"""Measuring models: image-quality metrics, benchmark evaluation, efficiency figures (params, FLOPs, time)."""
