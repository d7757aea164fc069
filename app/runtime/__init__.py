"""The runtime half of the app: the sampling worker, its typed results, and frame encoding with each
job's replay log."""
