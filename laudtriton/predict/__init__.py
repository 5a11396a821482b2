"""Hardware specs, latency models and calibration."""
