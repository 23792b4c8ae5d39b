"""AMDM in plain torch: aggregation, deviation optimisation, schedules and the window loop.

Nothing here imports ComfyUI; the nodes package adapts ComfyUI's samplers to it.
"""
from .aggregation import (AGGREGATION_MODES, DEVIATION_MODES, aggregate, deviate,
                          deviation_fractions, member_coefficients)
from .guidance import GUIDANCE_MODES, compensated_cfg, guidance_factors
from .engine import StepFn, StepMap, WindowPlan, aggregation_step, one_after_another, run_window
from .schedule import (NOISE_MODES, WEIGHT_CURVES, Schedule, curve_factors, progress_of,
                       step_weights, validate_weights, window_for, window_steps)
from .seeds import derive_seed

__all__ = [
    "AGGREGATION_MODES", "DEVIATION_MODES", "GUIDANCE_MODES", "NOISE_MODES", "WEIGHT_CURVES",
    "Schedule", "StepFn", "StepMap", "WindowPlan",
    "aggregate", "aggregation_step", "compensated_cfg", "curve_factors", "derive_seed", "deviate",
    "deviation_fractions", "guidance_factors", "member_coefficients", "one_after_another", "progress_of",
    "run_window", "step_weights", "validate_weights", "window_for", "window_steps",
]
