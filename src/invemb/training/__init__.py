"""The shared training loop, checkpoints, metric logs and schedules."""
