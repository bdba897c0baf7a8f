"""Training: optimizer and schedules, the pretraining step and its plain-dict state."""
