"""Record-level transforms the stages share (pure Python, picklable)."""
