"""Training: typed YAML recipes, student and teacher, cached teacher targets, the objective, the loop, DDP."""
