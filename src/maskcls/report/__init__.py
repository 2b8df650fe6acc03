"""The run report: its page, the run's data read back, the figures."""
