"""Stack members and the checks that they belong to one ecosystem."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

import comfy.model_sampling

from ..amdm_core import Schedule, StepRange, validate_weights
from .sessions import load_device

SIGMA_RTOL = 1e-3


@dataclass(frozen=True)
class Member:
    """One model of the stack: a MODEL with its own conditioning, CFG and AMDM weights, and
    the steps it is active on (None: the schedule's window, every step for the target)."""

    model: Any
    positive: list
    negative: list
    cfg: float
    weight: float = 1.0
    deviation: float = 1.0
    name: str = ""
    step_range: Optional[StepRange] = None

    def __post_init__(self) -> None:
        for field in ("cfg", "weight", "deviation"):
            value = getattr(self, field)
            if not math.isfinite(value) or (field != "cfg" and value < 0):
                bound = "a finite number" if field == "cfg" else "a finite number >= 0"
                raise ValueError(f"{field} must be {bound}, got {value}")


def member_label(index: int, name: str) -> str:
    """'member 2 ('style')': 1-based, as the user counts ModelStack nodes in a chain."""
    return f"member {index + 1}" + (f" ('{name}')" if name else "")


def _is_flow_matching(model_sampling: Any) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def _sampling_family(model_sampling: Any) -> str:
    if _is_flow_matching(model_sampling):
        return "flow matching (CONST)"
    return "sigma space (EPS / V_PREDICTION / EDM)"


def _noise_schedule(model_sampling: Any) -> Optional[torch.Tensor]:
    """What must match for members to read one sigma alike. Flow matching: nothing beyond
    the family (sigma is the noise fraction whatever the shift, and the run follows the
    target's sigmas). Discrete models: their whole sigma table (zsnr changes it). Others:
    their sigma range."""
    if _is_flow_matching(model_sampling):
        return None
    table = getattr(model_sampling, "sigmas", None)  # discrete models' table; EDM a range
    if isinstance(table, torch.Tensor):
        return table.detach().float().cpu()
    return torch.tensor([float(model_sampling.sigma_min), float(model_sampling.sigma_max)])


# What each ecosystem property is, and what to change when members differ in it.
_ECOSYSTEM_FIXES = {
    "latent format": "AMDM merges latents, so every member must produce the same kind: choose "
                     "members of one model family (all SD1.x, all SDXL, all Flux, ...)",
    "model_sampling family": "flow-matching models (SD3, Flux, Wan) and sigma-space models "
                             "(SD1.x, SDXL) read noise levels differently: choose members of "
                             "one family",
    "noise schedule": "their noise schedules differ (zero-terminal-SNR against a standard "
                      "schedule, or an EDM range): apply the same ModelSamplingDiscrete (or "
                      "ModelSamplingContinuousEDM) node, with the same settings, to every "
                      "member",
}


def _ecosystem(model: Any) -> dict[str, Any]:
    model_sampling = model.get_model_object("model_sampling")
    latent = model.get_model_object("latent_format")
    return {
        # what makes two models' latents the same kind
        "latent format": (type(latent).__name__, latent.latent_channels, latent.latent_dimensions,
                          latent.scale_factor, getattr(latent, "shift_factor", None)),
        "model_sampling family": _sampling_family(model_sampling),
        "noise schedule": _noise_schedule(model_sampling),
    }


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "noise schedule":
        if a is None or b is None:
            return a is b
        return a.shape == b.shape and torch.allclose(a, b, rtol=SIGMA_RTOL, atol=0.0)
    return a == b


def _describe(key: str, value: Any) -> str:
    if key == "noise schedule" and value is not None:
        return f"sigmas {float(value.min()):.4g} to {float(value.max()):.4g}"
    return str(value)


def check_members(members: Sequence[Member], schedule: Schedule) -> None:
    """Every error a stack can have, raised before any sampling starts."""
    if len(members) == 0:
        raise ValueError("the stack is empty: connect at least one ModelStack node")
    labels = [member_label(i, m.name) for i, m in enumerate(members)]
    if not 1 <= schedule.target_member <= len(members):
        raise ValueError(f"AggregationSchedule target_member ({schedule.target_member}) is "
                         f"outside the stack of {len(members)} member(s)")
    validate_weights([m.weight for m in members], labels)
    if schedule.deviation_mode == "relative":
        for member, label in zip(members, labels):
            fraction = schedule.deviation_strength * member.deviation
            if fraction > 1:
                raise ValueError(f"{label}: deviation {member.deviation} x deviation_strength "
                                 f"{schedule.deviation_strength} = {fraction} exceeds 1, the "
                                 f"largest 'relative' deviation")
    reference = _ecosystem(members[0].model)
    for member, label in zip(members[1:], labels[1:]):
        for key, value in _ecosystem(member.model).items():
            if not _same(key, value, reference[key]):
                raise ValueError(f"{label} is not of the same ecosystem as {labels[0]}: "
                                 f"{key} {_describe(key, value)} against "
                                 f"{_describe(key, reference[key])}. {_ECOSYSTEM_FIXES[key]}")
    _check_devices(members, labels)


def _check_devices(members: Sequence[Member], labels: Sequence[str]) -> None:
    """Members may sit on different devices, each stepping on its own; but clones of one
    checkpoint share one set of weights, which cannot live on two devices at once."""
    for i, first in enumerate(members):
        for j in range(i + 1, len(members)):
            second = members[j]
            if first.model.model is not second.model.model:
                continue
            devices = load_device(first.model), load_device(second.model)
            if devices[0] != devices[1]:
                raise ValueError(f"{labels[i]} and {labels[j]} are clones of one checkpoint "
                                 f"(one set of weights) but load on {devices[0]} and "
                                 f"{devices[1]}: load the checkpoint once per device, or "
                                 f"put both on one device")
