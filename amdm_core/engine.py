"""An aggregated span as a loop over per-member step callables.

The engine knows nothing of the sampler behind a step: a member's step callable takes the
member's current latent and the step index k and returns its proposal for step k + 1. How
the members' steps of one window step are run (one after another, or concurrently on
several devices) is the caller's choice of ``map_steps``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .aggregation import aggregate, deviate

StepFn = Callable[[torch.Tensor, int], torch.Tensor]
StepMap = Callable[[Sequence[StepFn], Sequence[torch.Tensor], int], list[torch.Tensor]]


def one_after_another(step_fns: Sequence[StepFn], states: Sequence[torch.Tensor],
                      k: int) -> list[torch.Tensor]:
    """Every member's proposal for step k, in member order."""
    return [step(x, k) for step, x in zip(step_fns, states)]


@dataclass(frozen=True)
class WindowPlan:
    """What an aggregated span does at each of its steps.

    ``members`` are the active members (stack indices); weights and deviation are
    ``[len(steps), len(members)]``; deviation holds each member's strength (r for
    'relative', p for 'absolute').
    """

    steps: range
    members: tuple[int, ...]
    weights: torch.Tensor
    deviation: torch.Tensor
    aggregation: str
    deviation_mode: str

    def to(self, device: torch.device) -> "WindowPlan":
        return WindowPlan(self.steps, self.members, self.weights.to(device), self.deviation.to(device),
                          self.aggregation, self.deviation_mode)


def aggregation_step(proposals: torch.Tensor, weights: torch.Tensor, deviation: torch.Tensor,
                     plan: WindowPlan) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One AMDM step on stacked proposals ``[N, B, ...]``: aggregate, then deviate. Returns
    the merged latent and each member's next latent. Without deviation every member
    continues from the merged latent itself, one tensor, so that a caller can see which
    members share their state."""
    merged = aggregate(proposals, weights, plan.aggregation)
    if plan.deviation_mode == "none":
        return merged, [merged] * proposals.shape[0]
    return merged, list(deviate(merged, proposals, deviation, plan.deviation_mode).unbind(0))


def run_window(states: Sequence[torch.Tensor], step_fns: Sequence[StepFn], plan: WindowPlan,
               map_steps: StepMap = one_after_another) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Advance the span's members through its steps; returns the last merged latent and
    each member's latent after the span."""
    merged = states[0]
    for j, k in enumerate(plan.steps):
        proposals = torch.stack(map_steps(step_fns, states, k))
        merged, states = aggregation_step(proposals, plan.weights[j], plan.deviation[j], plan)
    return merged, list(states)
