"""When aggregation happens and with which per-member weights: the aggregation window.

The window is the set of sampler steps k (step k goes from sigma_k to sigma_k+1) whose
progress lies in [start_percent, end_percent), progress following the same sigma
convention as ComfyUI's timestep ranges, intersected with [start_step, end_step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .aggregation import AGGREGATION_MODES, DEVIATION_MODES
from .guidance import GUIDANCE_MODES

WEIGHT_CURVES = ("constant", "linear_decay", "cosine_decay")
NOISE_MODES = ("independent", "shared")
MAX_STEP = 10000


@dataclass(frozen=True)
class Schedule:
    """Everything about an AMDM run that is not a member. ``target_member`` is 1-based."""

    start_percent: float = 0.0
    end_percent: float = 0.4
    aggregation: str = "linear"
    weight_curve: str = "constant"
    deviation_mode: str = "none"
    deviation_strength: float = 0.0
    target_member: int = 1
    noise_mode: str = "independent"
    start_step: int = 0
    end_step: int = MAX_STEP
    guidance: str = "averaged"

    def __post_init__(self) -> None:
        _check_choice("aggregation", self.aggregation, AGGREGATION_MODES)
        _check_choice("weight_curve", self.weight_curve, WEIGHT_CURVES)
        _check_choice("deviation_mode", self.deviation_mode, DEVIATION_MODES)
        _check_choice("noise_mode", self.noise_mode, NOISE_MODES)
        _check_choice("guidance", self.guidance, GUIDANCE_MODES)
        for name in ("start_percent", "end_percent"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.end_percent <= self.start_percent:
            raise ValueError(f"end_percent ({self.end_percent}) must be greater than "
                             f"start_percent ({self.start_percent})")
        for name in ("start_step", "end_step"):
            value = getattr(self, name)
            if not (0 <= value <= MAX_STEP):
                raise ValueError(f"{name} must lie in [0, {MAX_STEP}], got {value}")
        if self.end_step <= self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be greater than "
                             f"start_step ({self.start_step})")
        if not (math.isfinite(self.deviation_strength) and self.deviation_strength >= 0):
            raise ValueError(f"deviation_strength must be a finite number >= 0, "
                             f"got {self.deviation_strength}")
        if self.deviation_mode == "relative" and self.deviation_strength > 1:
            raise ValueError(f"deviation_strength is a fraction in [0, 1] when deviation_mode "
                             f"is 'relative', got {self.deviation_strength}")
        if self.target_member < 1:
            raise ValueError(f"target_member is 1-based, got {self.target_member}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def window_steps(sigmas: Sequence[float], sigma_start: float, sigma_end: float,
                 start_step: int, end_step: int) -> range:
    """Steps k with sigma_end < sigmas[k] <= sigma_start and start_step <= k < end_step.

    ``sigmas`` holds S + 1 values for S steps. With decreasing sigmas the matching steps
    are consecutive; for other sequences (restarts) the window is their first run.
    """
    n_steps = max(len(sigmas) - 1, 0)
    inside = [sigma_end < sigmas[k] <= sigma_start and start_step <= k < end_step
              for k in range(n_steps)]
    if True not in inside:
        return range(n_steps, n_steps)
    first = inside.index(True)
    last = first
    while last < n_steps and inside[last]:
        last += 1
    return range(first, last)


def curve_factors(curve: str, length: int) -> torch.Tensor:
    """Factor applied to the non-target weights at each of ``length`` window steps."""
    t = torch.arange(length, dtype=torch.float32) / max(length, 1)
    if curve == "constant":
        return torch.ones_like(t)
    if curve == "linear_decay":
        return 1.0 - t
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def step_weights(weights: Sequence[float], target: int, curve: str, length: int) -> torch.Tensor:
    """Per-step member weights ``[length, N]``: the target's weight stays, the others
    follow the curve. ``target`` is 0-based."""
    base = torch.tensor(weights, dtype=torch.float32)
    factors = curve_factors(curve, length).unsqueeze(1).expand(length, len(weights)).clone()
    factors[:, target] = 1.0
    return factors * base


def validate_weights(weights: Sequence[float], names: Sequence[str]) -> None:
    """Weights must be finite, >= 0 and not all zero; errors name the member."""
    for weight, name in zip(weights, names):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}: weight must be a finite number >= 0, got {weight}")
    if not any(w > 0 for w in weights):
        raise ValueError("every member's weight is 0: at least one must be positive")
