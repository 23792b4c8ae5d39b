"""Stack members and the checks that they belong to one ecosystem."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import comfy.model_sampling

from ..amdm_core import Schedule, validate_weights

SIGMA_RANGE_RTOL = 1e-3


@dataclass(frozen=True)
class Member:
    """One model of the stack: a MODEL with its own conditioning, CFG and AMDM weights."""

    model: Any
    positive: list
    negative: list
    cfg: float
    weight: float = 1.0
    deviation: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("cfg", "weight", "deviation"):
            value = getattr(self, field)
            if not math.isfinite(value) or (field != "cfg" and value < 0):
                bound = "a finite number" if field == "cfg" else "a finite number >= 0"
                raise ValueError(f"{field} must be {bound}, got {value}")


def member_label(index: int, name: str) -> str:
    """'member 2 ('style')': 1-based, as the user counts ModelStack nodes in a chain."""
    return f"member {index + 1}" + (f" ('{name}')" if name else "")


def _sampling_family(model_sampling: Any) -> str:
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return "flow matching (CONST)"
    return "sigma space (EPS / V_PREDICTION / EDM)"


def _ecosystem(model: Any) -> dict[str, Any]:
    latent_format = model.get_model_object("latent_format")
    model_sampling = model.get_model_object("model_sampling")
    return {
        "latent format": (type(latent_format).__name__, latent_format.latent_channels,
                          latent_format.latent_dimensions, latent_format.scale_factor,
                          getattr(latent_format, "shift_factor", None)),
        "model_sampling family": _sampling_family(model_sampling),
        "sigma range": (float(model_sampling.sigma_min), float(model_sampling.sigma_max)),
    }


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "sigma range":
        return all(math.isclose(x, y, rel_tol=SIGMA_RANGE_RTOL) for x, y in zip(a, b))
    return a == b


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
                                 f"{key} {value} vs {reference[key]}. AMDM members must "
                                 f"share latent format, model_sampling family and sigma range")
