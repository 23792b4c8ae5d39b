"""Which members step at each sampler step, and what a run does with them.

Every member is active on a contiguous range of steps: its own StepRange when it has one,
else the schedule's window (the target: every step). One rule decides each step: a single
active member steps alone; two or more aggregate. A span is a maximal run of consecutive
steps with the same active members, so a run is a sequence of spans:

- a span of one member runs that member's sampler over the whole span (as one
  KSamplerAdvanced call over those steps would);
- a span of several members steps them one step at a time, aggregating after each step
  (engine.run_window);
- the latent carries over from one span to the next: a member that stays active continues
  from its own latent, a member that joins starts from the latent the previous span ended
  with (its merge, for an aggregated span).

Two consecutive single-member spans are a hard handoff (an expert switch); two members
whose ranges overlap are a soft handoff, aggregated where they overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .engine import WindowPlan
from .schedule import Schedule, StepRange, curve_factors, progress_of, steps_in


@dataclass(frozen=True)
class Span:
    """Consecutive steps with the same active members (indices in stack order)."""

    steps: range
    members: tuple[int, ...]

    @property
    def aggregated(self) -> bool:
        return len(self.members) > 1


@dataclass(frozen=True)
class Stage:
    """Spans between hard handoffs. A stage that is one single-member span is what one
    KSamplerAdvanced call of a chain does; the latent passes between stages as a LATENT."""

    spans: tuple[Span, ...]

    @property
    def steps(self) -> range:
        return range(self.spans[0].steps.start, self.spans[-1].steps.stop)

    @property
    def single(self) -> bool:
        return len(self.spans) == 1 and not self.spans[0].aggregated


def stages_of(spans: Sequence[Span]) -> list[Stage]:
    """Split the run at its hard handoffs: a single-member span followed by a
    single-member span of another member."""
    stages: list[list[Span]] = []
    for span in spans:
        previous = stages[-1][-1] if stages else None
        handoff = previous is not None and not previous.aggregated and not span.aggregated
        if previous is None or handoff:
            stages.append([span])
        else:
            stages[-1].append(span)
    return [Stage(tuple(spans_)) for spans_ in stages]


def member_steps(sigmas: Sequence[float], percent_to_sigma: Callable[[float], float],
                 ranges: Sequence[Optional[StepRange]], schedule: Schedule) -> list[range]:
    """Each member's steps: its own range (None: the schedule's window, every step for the
    target member)."""
    n_steps = max(len(sigmas) - 1, 0)
    window = steps_in(sigmas, percent_to_sigma, schedule.window)
    target = schedule.target_member - 1
    return [steps_in(sigmas, percent_to_sigma, own) if own is not None
            else range(n_steps) if m == target else window
            for m, own in enumerate(ranges)]


def spans_of(active: Sequence[range], n_steps: int) -> list[Span]:
    """The run's spans, from each member's steps. A step no member covers makes a span with
    no members (check_spans refuses it)."""
    spans: list[Span] = []
    for k in range(n_steps):
        members = tuple(m for m, steps in enumerate(active) if k in steps)
        if spans and spans[-1].members == members and spans[-1].steps.stop == k:
            spans[-1] = Span(range(spans[-1].steps.start, k + 1), members)
        else:
            spans.append(Span(range(k, k + 1), members))
    return spans


def range_errors(spans: Sequence[Span], active: Sequence[range], ranges: Sequence[Optional[StepRange]],
                 weights: Sequence[float], labels: Sequence[str], target: int, sigmas: Sequence[float],
                 percent_to_sigma: Callable[[float], float]) -> list[str]:
    """Why a run cannot be sampled as its ranges say: a member with a range of its own that
    holds none of the run's steps, a step no member covers, members that aggregate with
    weights that are all 0 (no merge is defined), a target that is not active at the last
    step. Empty when the run is sound."""
    n_steps = max(len(sigmas) - 1, 0)
    if n_steps == 0:
        return []
    errors = []

    def progress(k: int) -> str:
        return f"{progress_of(sigmas[k], percent_to_sigma):.3f}"

    for m, (own, steps) in enumerate(zip(ranges, active)):
        if own is not None and not steps:
            errors.append(f"{labels[m]}: its range {own.describe()} holds none of this run's "
                          f"{n_steps} steps (progress {progress(0)} to {progress(n_steps - 1)})")
    for span in spans:
        if not span.members:
            errors.append(f"steps {span.steps.start} to {span.steps.stop - 1} (progress "
                          f"{progress(span.steps.start)} to {progress(span.steps.stop - 1)}) are in "
                          f"no member's range")
        elif span.aggregated and not any(weights[m] > 0 for m in span.members):
            errors.append(f"{' and '.join(labels[m] for m in span.members)} aggregate at steps "
                          f"{span.steps.start} to {span.steps.stop - 1}, but their weights are all 0: "
                          f"give one of them a positive weight, or let their ranges not overlap")
    if (n_steps - 1) not in active[target]:
        errors.append(f"the target, {labels[target]}, is not active at the last step "
                      f"({n_steps - 1}): the image is the target's latent, so its range must "
                      f"reach the end (set target_member to the member that finishes)")
    return errors


def window_plans(spans: Sequence[Span], weights: Sequence[float], deviation: Sequence[float],
                 target: int, schedule: Schedule) -> dict[int, WindowPlan]:
    """A WindowPlan for every aggregated span, keyed by its first step.

    The target keeps its weight; every other member's weight follows the schedule's curve
    over that member's own aggregated steps (with one window, the window's steps)."""
    aggregated = [span for span in spans if span.aggregated]
    factor: dict[tuple[int, int], float] = {}
    for m in range(len(weights)):
        steps = [k for span in aggregated if m in span.members for k in span.steps]
        curve = curve_factors(schedule.weight_curve, len(steps)).tolist()
        factor.update(((m, k), 1.0 if m == target else value) for k, value in zip(steps, curve))
    plans = {}
    for span in aggregated:
        # float32 throughout, as the weights are applied
        factors = torch.tensor([[factor[m, k] for m in span.members] for k in span.steps], dtype=torch.float32)
        span_weights = factors * torch.tensor([weights[m] for m in span.members], dtype=torch.float32)
        span_deviation = torch.tensor([schedule.deviation_strength * deviation[m] for m in span.members],
                                      dtype=torch.float32).expand(len(span.steps), len(span.members))
        plans[span.steps.start] = WindowPlan(span.steps, span.members, span_weights, span_deviation,
                                             schedule.aggregation, schedule.deviation_mode)
    return plans
