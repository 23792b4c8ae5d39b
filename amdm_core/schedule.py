"""Where members are active: step ranges by ComfyUI's timestep percent, and the schedule.

A step range is the set of sampler steps k (step k goes from sigma_k to sigma_k+1) whose
progress lies in [start_percent, end_percent), intersected with [start_step, end_step).
progress(k) is the percent p whose sigma is sigma_k in the model's own convention
(``percent_to_sigma``, as ComfyUI's timestep ranges use it). Steps whose progress lies
within PROGRESS_TIE of a boundary are on it: a range includes a step on its start and
excludes a step on its end, so that ranges [a, b) and [b, c) split the steps between them
exactly, whatever the float precision of the sigmas. end_percent 1 reaches the last step.
The schedule's aggregation window and every member's own range follow this one rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .aggregation import AGGREGATION_MODES, DEVIATION_MODES
from .guidance import GUIDANCE_MODES

WEIGHT_CURVES = ("constant", "linear_decay", "cosine_decay")
NOISE_MODES = ("independent", "shared")
MAX_STEP = 10000
NO_STEP_LIMIT = 0
# Progress closer than this to a window boundary counts as on it. Float32 sigmas put an
# exact tie (Flux, 6 steps, simple: step 3 at progress 0.5) about 1e-7 off its boundary;
# real steps are never closer than 1e-4 apart (10000 steps at most).
PROGRESS_TIE = 1e-5


@dataclass(frozen=True)
class StepRange:
    """Steps by percent and, optionally, by index (end_step 0: no limit)."""

    start_percent: float = 0.0
    end_percent: float = 1.0
    start_step: int = 0
    end_step: int = NO_STEP_LIMIT

    def __post_init__(self) -> None:
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
        if self.end_step != NO_STEP_LIMIT and self.end_step <= self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be greater than "
                             f"start_step ({self.start_step}), or 0 for no limit")

    def describe(self) -> str:
        limits = "" if (self.start_step, self.end_step) == (0, NO_STEP_LIMIT) else \
            f", steps [{self.start_step}, {self.end_step or 'end'})"
        return f"[{self.start_percent}, {self.end_percent}){limits}"


EVERY_STEP = StepRange()


@dataclass(frozen=True)
class Schedule:
    """Everything about an AMDM run that is not a member. ``target_member`` is 1-based."""

    start_percent: float = 0.0
    end_percent: float = 0.4
    aggregation: str = "slerp"
    weight_curve: str = "constant"
    deviation_mode: str = "none"
    deviation_strength: float = 0.0
    target_member: int = 1
    noise_mode: str = "independent"
    start_step: int = 0
    end_step: int = NO_STEP_LIMIT
    guidance: str = "full"

    def __post_init__(self) -> None:
        _check_choice("aggregation", self.aggregation, AGGREGATION_MODES)
        _check_choice("weight_curve", self.weight_curve, WEIGHT_CURVES)
        _check_choice("deviation_mode", self.deviation_mode, DEVIATION_MODES)
        _check_choice("noise_mode", self.noise_mode, NOISE_MODES)
        _check_choice("guidance", self.guidance, GUIDANCE_MODES)
        self.window  # validates the window's fields
        if not (math.isfinite(self.deviation_strength) and self.deviation_strength >= 0):
            raise ValueError(f"deviation_strength must be a finite number >= 0, "
                             f"got {self.deviation_strength}")
        if self.deviation_mode == "relative" and self.deviation_strength > 1:
            raise ValueError(f"deviation_strength is a fraction in [0, 1] when deviation_mode "
                             f"is 'relative', got {self.deviation_strength}")
        if self.target_member < 1:
            raise ValueError(f"target_member is 1-based, got {self.target_member}")

    @property
    def window(self) -> StepRange:
        """The aggregation window: where members without a range of their own step (the
        target: every step)."""
        return StepRange(self.start_percent, self.end_percent, self.start_step, self.end_step)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def window_steps(sigmas: Sequence[float], sigma_start: float, sigma_end: float,
                 start_step: int, end_step: int) -> range:
    """Steps k with sigma_end < sigmas[k] <= sigma_start and start_step <= k < end_step
    (end_step 0: no limit).

    ``sigmas`` holds S + 1 values for S steps. With decreasing sigmas the matching steps
    are consecutive; for other sequences (restarts) the window is their first run.
    """
    n_steps = max(len(sigmas) - 1, 0)
    last_step = n_steps if end_step == NO_STEP_LIMIT else min(end_step, n_steps)
    inside = [sigma_end < sigmas[k] <= sigma_start and start_step <= k < last_step
              for k in range(n_steps)]
    if True not in inside:
        return range(n_steps, n_steps)
    first = inside.index(True)
    last = first
    while last < n_steps and inside[last]:
        last += 1
    return range(first, last)


def steps_in(sigmas: Sequence[float], percent_to_sigma: Callable[[float], float],
             step_range: StepRange) -> range:
    """The steps of ``step_range`` over ``sigmas`` (S + 1 values), by the rule of this
    module: start <= progress(k) < end up to PROGRESS_TIE, and start_step <= k < end_step.

    ``percent_to_sigma`` is the model's (decreasing in percent). A progress bound p maps to
    the sigma of p - PROGRESS_TIE, so that a tie with either boundary resolves the same way
    however the sigma of step k was rounded.
    """
    sigma_start = percent_to_sigma(step_range.start_percent - PROGRESS_TIE)
    sigma_end = (0.0 if step_range.end_percent >= 1.0
                 else percent_to_sigma(step_range.end_percent - PROGRESS_TIE))
    return window_steps(sigmas, sigma_start, sigma_end, step_range.start_step, step_range.end_step)


def progress_of(sigma: float, percent_to_sigma: Callable[[float], float]) -> float:
    """The percent p in [0, 1] whose sigma is ``sigma`` (bisection on the decreasing
    ``percent_to_sigma``); for messages and charts, not for deciding the window."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = 0.5 * (low + high)
        if percent_to_sigma(middle) > sigma:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def sigma_at_timestep(fraction: float, timestep_of_sigma: Callable[[float], float],
                      sigma_min: float, sigma_max: float) -> float:
    """The sigma at which the model's timestep is ``fraction`` of its largest (the timestep
    at sigma_max), by bisection on the increasing ``timestep_of_sigma``. A flow model's
    timestep is sigma x 1000 on its shifted schedule, so Wan 2.2's boundary 0.875 of the
    training timesteps is sigma 0.875."""
    goal = fraction * timestep_of_sigma(sigma_max)
    low, high = sigma_min, sigma_max
    for _ in range(60):
        middle = 0.5 * (low + high)
        if timestep_of_sigma(middle) < goal:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def handoff_bounds(boundary: float, overlap: float) -> tuple[float, float]:
    """The first expert's end percent and the second's start percent for a handoff at
    ``boundary`` (timestep percent) with an aggregated ``overlap`` centred on it (0: the
    ranges touch, a hard switch)."""
    if not (0.0 <= overlap <= 1.0 and 0.0 < boundary < 1.0):
        raise ValueError(f"the boundary must lie inside (0, 1) and the overlap in [0, 1]; got boundary "
                         f"{boundary:.4f}, overlap {overlap}")
    end, start = boundary + overlap / 2, boundary - overlap / 2
    if start < 0.0 or end > 1.0:
        raise ValueError(f"an overlap of {overlap} around the boundary at {boundary:.4f} reaches past "
                         f"[0, 1] ({start:.4f} to {end:.4f}): make it at most "
                         f"{2 * min(boundary, 1.0 - boundary):.4f}")
    return end, start


def curve_factors(curve: str, length: int) -> torch.Tensor:
    """Factor applied to the non-target weights at each of ``length`` window steps."""
    t = torch.arange(length, dtype=torch.float32) / max(length, 1)
    if curve == "constant":
        return torch.ones_like(t)
    if curve == "linear_decay":
        return 1.0 - t
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def validate_weights(weights: Sequence[float], names: Sequence[str]) -> None:
    """Weights must be finite, >= 0 and not all zero; errors name the member."""
    for weight, name in zip(weights, names):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}: weight must be a finite number >= 0, got {weight}")
    if not any(w > 0 for w in weights):
        raise ValueError("every member's weight is 0: at least one must be positive")
