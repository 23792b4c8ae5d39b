"""Guidance compensation: each member's CFG scale inside the aggregation window.

Aggregating the members' proposals with coefficients c_m (summing to one for linear and
slerp) also blends their classifier-free guidance: a member at scale s contributes
c_m * s * (cond - uncond) to the merged latent, so with N equal members each keeps only
1/N of its guidance. Scaling every member's CFG by f = 1 / max_m c_m gives the member with
the largest coefficient its whole guidance back and the others theirs in proportion to
their weight (all of them, when the weights are equal), as a sum of the members' guidance
(Composable Diffusion) would. Plain torch, per window step.
"""
from __future__ import annotations

import math

import torch

from .aggregation import member_coefficients

GUIDANCE_MODES = ("averaged", "full")


def guidance_factors(weights: torch.Tensor, aggregation: str, guidance: str) -> torch.Tensor:
    """Factor applied to every member's CFG scale at each window step: ``[L]`` from the
    per-step member weights ``[L, N]``. 'averaged' leaves the scales as they are."""
    if guidance == "averaged":
        return torch.ones(weights.shape[0], dtype=torch.float32)
    return torch.stack([1.0 / member_coefficients(step, aggregation).max() for step in weights])


def compensated_cfg(cfg: float, factor: float) -> float:
    """A member's CFG scale at a window step.

    A scale of 1 means no guidance at all (ComfyUI then evaluates the conditional
    prediction only, as for guidance-distilled models such as Flux): there is nothing to
    compensate, and it stays 1 rather than turning classifier-free guidance on.
    """
    return cfg if math.isclose(cfg, 1.0) else cfg * factor
