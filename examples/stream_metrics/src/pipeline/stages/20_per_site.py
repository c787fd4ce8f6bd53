"""Count, sum, mean and max of `value` per site and minute (the window is in config.yaml)."""
