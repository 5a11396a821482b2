"""Timing, sweeps and the persistent autotune cache."""
