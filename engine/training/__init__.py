"""Training: the config, the trainer with EMA, checkpoints and run state, and datasets."""
