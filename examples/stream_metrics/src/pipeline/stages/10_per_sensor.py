"""Count, sum, mean and max of `value` per sensor and minute (the window is in config.yaml)."""
