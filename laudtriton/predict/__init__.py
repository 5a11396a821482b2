"""Hardware specs, latency models and calibration (DESIGN.md section 6)."""

from .calibration import Calibration, calibrate, load_calibration, save_calibration
from .fit import ValidationReport, fit, validate
from .hardware import PRESETS, HardwareSpec, get_hardware, known_hardware
from .model import Factors, predict_block, predict_expected, predict_timings
from .network import flops_ratio, model_specs, rate_for_flops_ratio
from .prune import config_time, make_prune

__all__ = [
    "PRESETS", "Calibration", "Factors", "HardwareSpec", "ValidationReport", "calibrate",
    "config_time", "make_prune",
    "fit", "flops_ratio", "get_hardware", "known_hardware", "load_calibration",
    "model_specs", "predict_block", "predict_expected", "predict_timings",
    "rate_for_flops_ratio", "save_calibration", "validate",
]
