"""What the study runs: the rows of its tables, each one way of combining the toy members,
and the AMDM settings it chooses among.

Every AMDM row starts from the pack's own defaults (amdm_core.Schedule()) and states in its
name every setting that matters, so a row means the same thing whatever the defaults are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import comfy.model_patcher
import comfy.samplers
import torch

from .methods import (PACK, AMDMSettings, Batch, EvaluationCounter, SamplingSettings, ScoreSum, merged_model,
                      model_list, run_node, sample_alone, sample_amdm, sample_handoff)
from .models import EXPERTS, HIGH_NOISE, LOW_NOISE, MEMBER_ASPECTS, Ecosystem, ExpertPlan, toy_model_sampling

Sampler = Callable[[Batch], torch.Tensor]
Builder = Callable[[Ecosystem, EvaluationCounter], Sampler]

# The three-member ecosystem, in stack order, and the member that finishes alone: the one
# whose aspect settles last (measured: shape; see docs/toy_ecosystem.md).
MEMBERS: tuple[str, ...] = tuple(MEMBER_ASPECTS)
TARGET = "shape"
# The paper's case: two members, a layout model aggregated into an attribute model.
PAIR: tuple[str, ...] = ("position", "colour")
PAIR_TARGET = "colour"

SETTINGS = SamplingSettings()
# Fewer steps of the score sum, at the evaluations of AMDM with the default window.
SHORT_STEPS = 12

# The reference implementation's setting, in this toy: its window (steps 1 to 7 of 50) as
# a share of the steps; its deviation length p = 50 on 4x64x64 latents scaled by
# sqrt(numel), as a latent's norm scales (4x8x8 here: 50 / 8); each member from its own
# noise; its sqrt weights for two members (aggregation 'paper', equal weights).
PAPER_WINDOW = (0.0, 0.15)
PAPER_DEVIATION = 6.25
SCORE_SUM = "score sum (every member every step)"


@dataclass(frozen=True)
class Handoff:
    """How the high-noise expert hands over to the low-noise expert around their boundary:
    both are active on an overlap of ``overlap`` (timestep percent, centred on the
    boundary, as AMDMExpertBoundary computes it; 0: a hard switch), each alone on its side
    outside it. ``combine``: 'chain', ComfyUI's KSamplerAdvanced nodes (a hard switch
    only); 'ranges', the pack's member ranges, aggregating in the overlap with these
    settings; 'score sum', both experts' guidance summed in the overlap."""

    overlap: float
    combine: str
    aggregation: str = "slerp"
    noise_mode: str = "independent"
    guidance: str = "full"


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    members: tuple[str, ...]  # the members it combines; scored on their aspects
    build: Builder
    amdm: AMDMSettings | None = None
    handoff: Handoff | None = None


def alone_row(name: str, settings: SamplingSettings = SETTINGS) -> Row:
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        model = counter.counted(ecosystem.base if name == "base" else ecosystem.members[name])
        return lambda batch: sample_alone(model, batch, settings)
    if name == "base":
        return Row("reference", "base (unconditional)", (), build)
    return Row("member alone", f"{name} member", (name,), build)


def handoff_row(members: tuple[str, ...], target: str, steps_each: int,
                settings: SamplingSettings = SETTINGS) -> Row:
    """Each other member runs steps_each steps in stack order, then the target finishes."""
    order = [name for name in members if name != target] + [target]

    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        models = model_list(ecosystem, order, counter)
        segments = [(model, steps_each * (index + 1)) for index, model in enumerate(models)]
        return lambda batch: sample_handoff(segments, batch, settings)
    label = " -> ".join(f"{name}({steps_each})" for name in order[:-1]) + f" -> {target}"
    return Row("baseline", f"step handoff {label}", members, build)


def merge_row(settings: SamplingSettings = SETTINGS) -> Row:
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        model = counter.counted(merged_model([ecosystem.members[name] for name in MEMBERS]))
        return lambda batch: sample_alone(model, batch, settings)
    return Row("baseline", "weight merge (ModelMergeSimple, equal thirds)", MEMBERS, build)


def score_sum_row(members: tuple[str, ...], target: str, settings: SamplingSettings = SETTINGS) -> Row:
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        others = [name for name in members if name != target]
        model = ScoreSum(counter.counted(ecosystem.members[target]), model_list(ecosystem, others, counter)).model()
        return lambda batch: sample_alone(model, batch, settings)
    return Row("baseline", score_sum_name(members, settings.steps), members, build)


def score_sum_name(members: tuple[str, ...], steps: int) -> str:
    name = SCORE_SUM if members == MEMBERS else f"score sum of {' + '.join(members)} (every step)"
    return name if steps == SETTINGS.steps else f"{name}, {steps} steps"


def step_sigmas(model: comfy.model_patcher.ModelPatcher, settings: SamplingSettings) -> torch.Tensor:
    """The S + 1 sigmas of the sampler's S steps, as KSampler computes them."""
    return comfy.samplers.KSampler(model, steps=settings.steps, device="cpu", sampler=settings.sampler_name,
                                   scheduler=settings.scheduler).sigmas


def sigma_between(sigmas: torch.Tensor, step: int) -> float:
    """A sigma between those of step - 1 and step: ScoreSum's band edge that puts ``step``
    on the low side of it."""
    return float(sigmas[step] + sigmas[step - 1]) / 2


def relative_sum_row(window_steps: int, settings: SamplingSettings = SETTINGS) -> Row:
    """The other members' guidance against the target's unconditional prediction, added to
    the target's during its first window_steps steps: what AMDM with full guidance, linear
    aggregation and shared noise computes inside its window, at one evaluation per other
    member and step instead of two. Not an option of the pack: a measurement of that idea."""
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        target = ecosystem.members[TARGET]
        sigmas = step_sigmas(target, settings)
        others = [name for name in MEMBERS if name != TARGET]
        model = ScoreSum(counter.counted(target), model_list(ecosystem, others, counter),
                         sigma_floor=sigma_between(sigmas, window_steps), target_unconditional=True).model()
        return lambda batch: sample_alone(model, batch, settings)
    return Row("guidance sum (idea)", f"guidance sum against the target's unconditional, first {window_steps} "
                                      f"of {settings.steps} steps", MEMBERS, build)


def describe_amdm(amdm: AMDMSettings, members: tuple[str, ...]) -> str:
    deviation = "no deviation" if amdm.deviation_mode == "none" else \
        f"{amdm.deviation_mode} deviation {amdm.deviation_strength:g}"
    parts = [f"AMDM {amdm.aggregation}"]
    if members != MEMBERS:
        parts.append(f"members {' + '.join(members)}")
    parts += [f"window {amdm.start_percent:g}-{amdm.end_percent:g}",
             f"{amdm.guidance} guidance", f"{amdm.noise_mode} noise", deviation]
    if amdm.others_cfg_factor != 1.0:
        parts.append(f"others' cfg x{amdm.others_cfg_factor:g}")
    if amdm.weight_curve != "constant":
        parts.append(amdm.weight_curve)
    parts.append(f"target {members[amdm.target_member - 1]}")
    if amdm.steps != SETTINGS.steps:
        parts.append(f"{amdm.steps} steps")
    return ", ".join(parts)


def amdm_row(group: str, amdm: AMDMSettings, members: tuple[str, ...] = MEMBERS,
             settings: SamplingSettings = SETTINGS) -> Row:
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        models = model_list(ecosystem, list(members), counter)
        return lambda batch: sample_amdm(models, amdm, batch, settings)
    return Row(group, describe_amdm(amdm, members), members, build, amdm)


def default_amdm(members: tuple[str, ...] = MEMBERS, target: str = TARGET) -> AMDMSettings:
    """The pack's defaults, with the given target."""
    return AMDMSettings(target_member=members.index(target) + 1)


def explicit(aggregation: str, noise_mode: str, guidance: str, others_cfg_factor: float, end_percent: float,
             steps: int = SETTINGS.steps, members: tuple[str, ...] = MEMBERS, target: str = TARGET) -> AMDMSettings:
    """AMDM settings that name every choice the study varies (a window from step 0, no
    deviation, constant weights), so that they mean the same whatever the defaults."""
    return replace(default_amdm(members, target), aggregation=aggregation, noise_mode=noise_mode, guidance=guidance,
                   others_cfg_factor=others_cfg_factor, start_percent=0.0, end_percent=end_percent,
                   deviation_mode="none", deviation_strength=0.0, weight_curve="constant", steps=steps)


# The chosen settings: what `--full` selects on the development ecosystems by
# study.choose_presets, recorded here so that the main job reports them without the
# selection sweep. `--full` checks that its choice still equals them.
BUDGET_PRESET = explicit("slerp", "independent", "full", 2.0, 0.8, steps=12)
MATCH_PRESET: AMDMSettings | None = explicit("slerp", "independent", "full", 3.0, 0.4, steps=12)

# Aggregations that keep the merged latent at the scale its noise level expects: linear
# only with shared noise (averaging N independent noises shrinks them by 1/sqrt(N)),
# slerp with either.
NORM_SAFE = (("linear", "shared"), ("slerp", "shared"), ("slerp", "independent"))
# Guidance with the others' CFG factor: the former behaviour, its manual compensation
# (others' cfg x N), the guidance option, and the option with the others boosted.
GUIDANCE_CHOICES = (("averaged", 1.0), ("averaged", float(len(MEMBERS))), ("full", 1.0), ("full", 2.0),
                    ("full", float(len(MEMBERS))))
WINDOW_ENDS = (0.2, 0.4, 0.6, 0.8)
# The sampler's steps: a budget of evaluations buys a longer window at fewer steps.
STEP_COUNTS = (12, 16, SETTINGS.steps)


def candidate_settings() -> list[AMDMSettings]:
    """The grid the presets are chosen from: every norm-safe aggregation, guidance choice,
    window length and step count."""
    return [explicit(aggregation, noise, guidance, factor, end, steps)
            for aggregation, noise in NORM_SAFE for guidance, factor in GUIDANCE_CHOICES for end in WINDOW_ENDS
            for steps in STEP_COUNTS]


def _unique(rows: list[Row]) -> list[Row]:
    seen: set[str] = set()
    return [row for row in rows if not (row.name in seen or seen.add(row.name))]


def three_member_rows(budget: AMDMSettings, match: AMDMSettings | None) -> list[Row]:
    """The main table, target shape: the baselines; the pack's defaults; every norm-safe
    aggregation (and linear with independent noise, which is not) with both guidance
    modes at the budget preset's window; the paper's weights; the manual compensation;
    the presets; the window sweep and the other options around the budget preset."""
    rows = [alone_row("base"), *(alone_row(name) for name in MEMBERS),
            handoff_row(MEMBERS, TARGET, 2), handoff_row(MEMBERS, TARGET, 4), merge_row(),
            score_sum_row(MEMBERS, TARGET), score_sum_row(MEMBERS, TARGET, replace(SETTINGS, steps=SHORT_STEPS)),
            score_sum_row(MEMBERS, TARGET, replace(SETTINGS, steps=budget.steps))]
    rows.append(amdm_row("AMDM defaults", default_amdm()))
    rows += [amdm_row("AMDM modes", replace(budget, aggregation=aggregation, noise_mode=noise, guidance=guidance,
                                            others_cfg_factor=1.0))
             for aggregation, noise in (*NORM_SAFE, ("linear", "independent")) for guidance in ("averaged", "full")]
    rows.append(amdm_row("AMDM modes", replace(budget, aggregation="paper", noise_mode="independent",
                                               guidance="averaged", others_cfg_factor=1.0)))
    rows.append(amdm_row("AMDM modes", replace(budget, guidance="averaged", others_cfg_factor=float(len(MEMBERS)))))
    rows += [amdm_row("AMDM preset", preset) for preset in (budget, match) if preset is not None]
    rows += [amdm_row("AMDM window", replace(budget, end_percent=end)) for end in (0.2, 0.4, 0.6, 0.8, 1.0)]
    rows += [amdm_row("AMDM options", replace(budget, deviation_mode="relative", deviation_strength=0.25)),
             amdm_row("AMDM options", replace(budget, weight_curve="cosine_decay"))]
    rows += [amdm_row("AMDM options", replace(budget, target_member=MEMBERS.index(name) + 1))
             for name in MEMBERS if name != TARGET]
    return _unique(rows)


def sweep(budget: AMDMSettings, amdm: AMDMSettings | None) -> bool:
    """Whether a row belongs to the window sweep around the budget preset."""
    return amdm is not None and amdm == replace(budget, end_percent=amdm.end_percent)


def two_member_rows(budget: AMDMSettings) -> list[Row]:
    """The paper's case, two members (layout into attribute, target colour): the
    reference implementation's setting next to linear and slerp, and the budget preset's
    settings for two members."""
    paper = replace(default_amdm(PAIR, PAIR_TARGET), start_percent=PAPER_WINDOW[0], end_percent=PAPER_WINDOW[1],
                    aggregation="paper", guidance="averaged", noise_mode="independent",
                    deviation_mode="absolute", deviation_strength=PAPER_DEVIATION)
    pair_budget = replace(budget, target_member=PAIR.index(PAIR_TARGET) + 1)
    rows = [*(alone_row(name) for name in PAIR), score_sum_row(PAIR, PAIR_TARGET), handoff_row(PAIR, PAIR_TARGET, 4)]
    rows += [amdm_row("AMDM paper setting", replace(paper, aggregation=mode), PAIR) for mode in ("paper", "linear", "slerp")]
    rows.append(amdm_row("AMDM paper setting", replace(paper, deviation_mode="none", deviation_strength=0.0), PAIR))
    rows += [amdm_row("AMDM", replace(pair_budget, end_percent=end), PAIR) for end in (0.4, 0.6)]
    return _unique(rows)


def idea_rows() -> list[Row]:
    """Measured by --full only: ideas that are not options of the pack."""
    return [relative_sum_row(steps) for steps in (8, 12, 16)]


# The noise-level experts (models.EXPERTS): the high-noise expert samples the steps before
# the boundary (ExpertPlan.boundary_percent), the low-noise expert the rest, as Wan 2.2's
# two experts do.
EXPERT_LABELS = {HIGH_NOISE: "high-noise expert", LOW_NOISE: "low-noise expert"}
EXPERT_BOUNDARY = ExpertPlan().boundary_percent
# Overlap widths in timestep percent: at 20 normal steps (a step is 1/19 of progress) they
# are 2, 4 and 8 steps, 1, 2 and 4 on each side of the boundary.
OVERLAPS = (0.1, 0.2, 0.4)
# How the overlap aggregates: every aggregation that keeps the noise level, with both
# guidance modes ('full' divides each expert's cfg by its share, so that the merge sums
# both experts' guidance; 'averaged' keeps each expert's cfg, so that it averages them).
# The main job runs the first two (the pack's default aggregation); --full all.
OVERLAP_SETTINGS = tuple((aggregation, noise, guidance) for aggregation, noise in reversed(NORM_SAFE)
                         for guidance in ("full", "averaged"))
MAIN_OVERLAP_SETTINGS = OVERLAP_SETTINGS[:2]
# The score sum over the overlap: the main job runs the middle width.
MAIN_SCORE_SUM_OVERLAP = 0.2


def expert_steps(overlap: float, settings: SamplingSettings = SETTINGS) -> tuple[range, range]:
    """(the high-noise expert's steps, the low-noise expert's) by the pack's rule, for the
    ranges AMDMExpertBoundary gives."""
    model_sampling = toy_model_sampling()
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler, settings.steps).tolist()
    core = PACK.amdm_core
    first_end, second_start = core.handoff_bounds(EXPERT_BOUNDARY, overlap)
    return (core.steps_in(sigmas, model_sampling.percent_to_sigma, core.StepRange(end_percent=first_end)),
            core.steps_in(sigmas, model_sampling.percent_to_sigma, core.StepRange(start_percent=second_start)))


def overlap_steps(overlap: float, settings: SamplingSettings = SETTINGS) -> range:
    high, low = expert_steps(overlap, settings)
    return range(low.start, high.stop)


def boundary_step(settings: SamplingSettings = SETTINGS) -> int:
    """The low-noise expert's first step at a hard switch."""
    return expert_steps(0.0, settings)[1].start


def describe_handoff(handoff: Handoff, settings: SamplingSettings = SETTINGS) -> str:
    if handoff.overlap == 0.0:
        where = f"hard switch at {EXPERT_BOUNDARY:g} (step {boundary_step(settings)})"
    else:
        steps = overlap_steps(handoff.overlap, settings)
        where = f"overlap {handoff.overlap:g} (steps {steps.start}-{steps.stop - 1})"
    return f"{where}, {describe_combining(handoff)}"


def describe_combining(handoff: Handoff) -> str:
    """How a handoff combines the experts (a hard switch through the pack's ranges aggregates
    nothing, so it names no aggregation settings)."""
    return {"chain": "KSamplerAdvanced chain", "score sum": "score sum of both experts' guidance",
            "ranges": "the pack's member ranges" + ("" if handoff.overlap == 0.0 else
                                                    f", {handoff.aggregation}, {handoff.noise_mode} noise, "
                                                    f"{handoff.guidance} guidance")}[handoff.combine]


def expert_alone_row(name: str, settings: SamplingSettings = SETTINGS) -> Row:
    def build(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        model = counter.counted(ecosystem.experts[name])
        return lambda batch: sample_alone(model, batch, settings)
    return Row("expert alone", f"{EXPERT_LABELS[name]} alone", (name,), build)


def expert_handoff_row(group: str, handoff: Handoff, settings: SamplingSettings = SETTINGS) -> Row:
    """One way of handing over (see Handoff), through ComfyUI's or the pack's nodes."""
    boundary = boundary_step(settings)

    def chain(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        high, low = (counter.counted(ecosystem.experts[name]) for name in EXPERTS)
        return lambda batch: sample_handoff([(high, boundary), (low, settings.steps)], batch, settings)

    def score_sum(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        # The expert whose side of the boundary a step is on gives the unconditional
        # prediction and its guidance, the other adds its own guidance in the overlap.
        high, low = (counter.counted(ecosystem.experts[name]) for name in EXPERTS)
        steps = overlap_steps(handoff.overlap, settings)
        sigmas = step_sigmas(high, settings)
        before = ScoreSum(high, [low], sigma_ceiling=sigma_between(sigmas, steps.start)).model()
        after = ScoreSum(low, [high], sigma_floor=sigma_between(sigmas, steps.stop)).model()
        return lambda batch: sample_handoff([(before, boundary), (after, settings.steps)], batch, settings)

    def ranges(ecosystem: Ecosystem, counter: EvaluationCounter) -> Sampler:
        high, low = (counter.counted(ecosystem.experts[name]) for name in EXPERTS)
        first_end, second_start = run_node("AMDMExpertBoundary", model=high, preset="custom",
                                           boundary=EXPERT_BOUNDARY, unit="percent", overlap=handoff.overlap)
        own = [PACK.amdm_core.StepRange(end_percent=first_end), PACK.amdm_core.StepRange(start_percent=second_start)]
        amdm = AMDMSettings(aggregation=handoff.aggregation, noise_mode=handoff.noise_mode,
                            guidance=handoff.guidance, target_member=2, steps=settings.steps)
        return lambda batch: sample_amdm([high, low], amdm, batch, settings, own)

    build = {"chain": chain, "score sum": score_sum, "ranges": ranges}[handoff.combine]
    return Row(group, describe_handoff(handoff, settings), EXPERTS, build, handoff=handoff)


def overlap_rows(overlap_settings: tuple[tuple[str, str, str], ...]) -> list[Row]:
    return [expert_handoff_row("handoff", Handoff(overlap, "ranges", aggregation, noise, guidance))
            for aggregation, noise, guidance in overlap_settings for overlap in OVERLAPS]


def handoff_candidates() -> list[Row]:
    """What the handoff preset is chosen from: the pack's hard switch, and every overlap
    width with every aggregation that keeps the noise level and either guidance."""
    return [expert_handoff_row("handoff", Handoff(0.0, "ranges")), *overlap_rows(OVERLAP_SETTINGS)]


def handoff_rows(preset: Handoff, full: bool) -> list[Row]:
    """The handoff table: the base and each expert alone, the hard switch through
    ComfyUI's nodes and the pack's, the preset, the overlaps and the score sum over them
    (with ``full``: every overlap setting and every width of the score sum)."""
    rows = [alone_row("base"), *(expert_alone_row(name) for name in EXPERTS),
            expert_handoff_row("baseline", Handoff(0.0, "chain")), expert_handoff_row("handoff preset", preset),
            expert_handoff_row("handoff", Handoff(0.0, "ranges"))]
    rows += overlap_rows(OVERLAP_SETTINGS if full else MAIN_OVERLAP_SETTINGS)
    rows += [expert_handoff_row("baseline", Handoff(overlap, "score sum"))
             for overlap in (OVERLAPS if full else (MAIN_SCORE_SUM_OVERLAP,))]
    return _unique(rows)


# The handoff chosen: what `--full` selects on the development ecosystems by
# study.choose_handoff, recorded here like the presets above.
HANDOFF_PRESET = Handoff(0.0, "ranges")
