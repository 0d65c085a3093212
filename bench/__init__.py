"""``python -m bench``: throughput figures, each against a reference measured
in the same run (these machines are shared and noisy; see DESIGN.md)."""
