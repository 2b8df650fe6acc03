"""Synthetic faces in the competition's layout (tests and the demo), label noise."""
