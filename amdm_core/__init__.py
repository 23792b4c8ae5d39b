"""AMDM in plain torch: aggregation, deviation optimisation, step ranges, run plans and the
aggregated-span loop.

Nothing here imports ComfyUI; the nodes package adapts ComfyUI's samplers to it.
"""
from .aggregation import (AGGREGATION_MODES, DEVIATION_MODES, aggregate, deviate,
                          deviation_fractions, member_coefficients)
from .guidance import GUIDANCE_MODES, compensated_cfg, guidance_factors
from .engine import StepFn, StepMap, WindowPlan, aggregation_step, one_after_another, run_window
from .plan import Span, Stage, member_steps, range_errors, spans_of, stages_of, window_plans
from .schedule import (EVERY_STEP, NOISE_MODES, WEIGHT_CURVES, Schedule, StepRange, curve_factors,
                       handoff_bounds, progress_of, sigma_at_timestep, steps_in, validate_weights,
                       window_steps)
from .seeds import derive_seed

__all__ = [
    "AGGREGATION_MODES", "DEVIATION_MODES", "EVERY_STEP", "GUIDANCE_MODES", "NOISE_MODES", "WEIGHT_CURVES",
    "Schedule", "Span", "Stage", "StepFn", "StepMap", "StepRange", "WindowPlan",
    "aggregate", "aggregation_step", "compensated_cfg", "curve_factors", "derive_seed", "deviate",
    "deviation_fractions", "guidance_factors", "handoff_bounds", "member_coefficients", "member_steps",
    "one_after_another",
    "progress_of", "range_errors", "run_window", "sigma_at_timestep", "spans_of", "stages_of", "steps_in",
    "validate_weights",
    "window_plans", "window_steps",
]
