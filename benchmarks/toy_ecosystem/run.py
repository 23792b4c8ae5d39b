"""The whole job: load (or train) the ecosystems, choose the presets (with --full), run
the tables (three members, two members, the noise-level experts' handoff), and write the
markdown, the JSON, the frontier plots and the grid."""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import DEVELOPMENT_SEEDS, REPORT_SEEDS, models, report, rows, study, task
from .methods import AMDMSettings, Schedule
from .rows import Handoff
from .study import RowSummary

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
IMAGES_DIR = REPO_ROOT / "docs" / "images"
RESULTS_PAGE = REPO_ROOT / "docs" / "toy_ecosystem.md"
# The results page's copy of the tables lies between these lines; the main job rewrites it.
RESULTS_BEGIN = "<!-- toy ecosystem results: written by python3 -m benchmarks.toy_ecosystem -->"
RESULTS_END = "<!-- end of toy ecosystem results -->"
# The handoff page's copy of its table, likewise.
HANDOFF_PAGE = REPO_ROOT / "docs" / "handoff.md"
HANDOFF_BEGIN = "<!-- toy handoff results: written by python3 -m benchmarks.toy_ecosystem -->"
HANDOFF_END = "<!-- end of toy handoff results -->"
GRID_COLUMNS = 12


@dataclass(frozen=True)
class Outcome:
    three_members: list[RowSummary]
    two_members: list[RowSummary]
    presets: study.Presets
    report_seeds: tuple[int, ...]
    handoff: list[RowSummary]
    handoff_preset: Handoff
    selection: list[RowSummary] | None = None  # the candidates on the development ecosystems (--full)
    ideas: list[RowSummary] | None = None  # idea rows on the report ecosystems (--full)
    handoff_selection: list[RowSummary] | None = None  # the handoff candidates, likewise (--full)


def load(seeds: Sequence[int], retrain: bool, retrain_experts: bool, ship: bool) -> list[models.Ecosystem]:
    ecosystems = [models.load_ecosystem(seed, retrain=retrain, retrain_experts=retrain_experts) for seed in seeds]
    if ship:
        shipped = models.MODEL_NAMES if retrain else models.EXPERTS
        for ecosystem in ecosystems:
            logger.info("shipped ecosystem %d (%s) to %s", ecosystem.seed, ", ".join(shipped),
                        models.ship_weights(ecosystem, shipped))
    return ecosystems


@dataclass(frozen=True)
class Selection:
    """What --full chooses on the development ecosystems, and the candidates' rows."""

    presets: study.Presets
    handoff: Handoff
    candidates: list[RowSummary]
    handoff_candidates: list[RowSummary]


def select(development: Sequence[models.Ecosystem], config: study.StudyConfig) -> Selection:
    """Run both candidate grids on the development ecosystems and apply the rules."""
    candidates = [rows.score_sum_row(rows.MEMBERS, rows.TARGET)]
    candidates += [rows.amdm_row("AMDM candidate", settings) for settings in rows.candidate_settings()]
    results = study.run_tables({"presets": study.Table(candidates, development, task.ASPECTS),
                                "handoff": study.Table(rows.handoff_candidates(), development, task.ASPECTS,
                                                       config.handoff_seeds)},
                               config)
    summaries = results["presets"]
    presets = study.choose_presets(summaries[1:], summaries[0])
    if (presets.budget, presets.match) != (rows.BUDGET_PRESET, rows.MATCH_PRESET):
        logger.warning("the rule chose other presets than rows.py records (budget: %s; match: %s): "
                       "this run reports the chosen ones", describe(presets.budget), describe(presets.match))
    handoff = study.choose_handoff(results["handoff"])
    if handoff != rows.HANDOFF_PRESET:
        logger.warning("the rule chose another handoff than rows.py records (%s): this run reports the chosen one",
                       rows.describe_handoff(handoff))
    return Selection(presets, handoff, summaries, results["handoff"])


def describe(settings: AMDMSettings | None) -> str:
    return "none" if settings is None else rows.describe_amdm(settings, rows.MEMBERS)


def run_study(config: study.StudyConfig, report_seeds: Sequence[int] = REPORT_SEEDS, full: bool = False,
              retrain: bool = False, retrain_experts: bool = False, ship: bool = False) -> Outcome:
    """The main job; with ``full`` the presets are chosen first and the idea rows run too."""
    selection = select(load(DEVELOPMENT_SEEDS, retrain, retrain_experts, ship), config) if full else None
    presets = selection.presets if selection else study.Presets(rows.BUDGET_PRESET, rows.MATCH_PRESET)
    handoff = selection.handoff if selection else rows.HANDOFF_PRESET
    ecosystems = load(report_seeds, retrain, retrain_experts, ship)
    tables = {"three": study.Table(rows.three_member_rows(presets.budget, presets.match), ecosystems, task.ASPECTS),
              "two": study.Table(rows.two_member_rows(presets.budget), ecosystems, rows.PAIR),
              "handoff": study.Table(rows.handoff_rows(handoff, full), ecosystems, task.ASPECTS,
                                     config.handoff_seeds)}
    if full:
        tables["ideas"] = study.Table(rows.idea_rows(), ecosystems, task.ASPECTS)
    results = study.run_tables(tables, config)
    check_hard_switch(results["handoff"], report_seeds)
    return Outcome(results["three"], results["two"], presets, tuple(report_seeds), results["handoff"], handoff,
                   selection.candidates if selection else None, results.get("ideas"),
                   selection.handoff_candidates if selection else None)


def hard_switches(summaries: Sequence[RowSummary]) -> tuple[RowSummary, RowSummary]:
    """(the KSamplerAdvanced chain, the pack's member ranges) of the handoff table."""
    chain, ranges = (next(s for s in summaries if s.row.handoff == Handoff(0.0, combine))
                     for combine in ("chain", "ranges"))
    return chain, ranges


def check_hard_switch(summaries: Sequence[RowSummary], seeds: Sequence[int]) -> None:
    """The pack's hard switch must be the KSamplerAdvanced chain users wire, bit for bit and
    at its evaluations, in every ecosystem (``seeds``, in the order of the measurements)."""
    chain, ranges = hard_switches(summaries)
    if ranges.evaluations_per_image != chain.evaluations_per_image:
        raise RuntimeError(f"{ranges.row.name}: {ranges.evaluations_per_image} evaluations per image, the "
                           f"KSamplerAdvanced chain {chain.evaluations_per_image}")
    for seed, a, b in zip(seeds, chain.measurements, ranges.measurements):
        if not torch.equal(a.latents, b.latents):
            raise RuntimeError(f"{ranges.row.name} differs from the KSamplerAdvanced chain in ecosystem {seed} "
                               f"(largest difference {(a.latents - b.latents).abs().max().item():.3g})")


def _find(summaries: Sequence[RowSummary], amdm: AMDMSettings) -> RowSummary | None:
    return next((s for s in summaries if s.row.amdm == amdm), None)


def _differences(a: RowSummary, b: RowSummary, metric: str = "joint", digits: int = 2) -> str:
    # round() then + 0.0: a difference that rounds to zero reads +0.00, never -0.00.
    return ", ".join(f"{round(x - y, digits) + 0.0:+.{digits}f}"
                     for x, y in zip(a.metrics[metric].per_ecosystem, b.metrics[metric].per_ecosystem))


def with_equal_step_score_sum(summaries: Sequence[RowSummary]) -> list[tuple[RowSummary, RowSummary]]:
    """Each AMDM row with the score sum at its own step count (rows at a step count the
    table has no score sum for are left out)."""
    pairs = [(summary, study.score_sum(summaries, summary.row.amdm.steps))
             for summary in summaries if summary.row.amdm is not None]
    return [(summary, reference) for summary, reference in pairs if reference is not None]


def meeting_at_equal_steps(summaries: Sequence[RowSummary]) -> list[RowSummary]:
    """AMDM rows that meet the goal against the score sum at their own step count."""
    return [summary for summary, reference in with_equal_step_score_sum(summaries)
            if study.matches_in_every_ecosystem(summary, reference)]


def conclusions(outcome: Outcome) -> list[str]:
    """What the numbers say, stated from the numbers (per-ecosystem differences, so that
    a conclusion 'in every ecosystem' can be read off)."""
    three = outcome.three_members
    reference = study.score_sum(three)
    lines = [f"- Score sum: joint {reference.joint.mean:.2f} ± {reference.joint.standard_error:.2f} at "
             f"{reference.evaluations_per_image:.0f} evaluations per image."]
    meeting = [s for s in three if s.row.amdm is not None and study.matches_in_every_ecosystem(s, reference)]
    if meeting:
        lines.append(f"- Within {study.MATCH_MARGIN:.2f} of the score sum's joint accuracy in every ecosystem at "
                     f"<= {study.BUDGET_SHARE:.0%} of its evaluations: " + "; ".join(s.row.name for s in meeting) + ".")
    else:
        lines.append(f"- No AMDM row comes within {study.MATCH_MARGIN:.2f} of the score sum's joint accuracy in "
                     f"every ecosystem at <= {study.BUDGET_SHARE:.0%} of its evaluations.")
    at_equal_steps = meeting_at_equal_steps(three)
    compared = sorted({s.row.amdm.steps for s, _ in with_equal_step_score_sum(three)})
    lines.append(f"- Within {study.MATCH_MARGIN:.2f} of the score sum at the row's own step count in every "
                 f"ecosystem at <= {study.BUDGET_SHARE:.0%} of its evaluations (AMDM rows at "
                 f"{' or '.join(map(str, compared))} steps): "
                 + ("; ".join(s.row.name for s in at_equal_steps) if at_equal_steps else "none") + ".")
    for preset in (s for s in three if s.row.group == "AMDM preset"):
        lines.append(f"- Preset {preset.row.name}: joint {preset.joint.mean:.2f} ± {preset.joint.standard_error:.2f} at "
                     f"{preset.evaluations_per_image / reference.evaluations_per_image:.0%} of the score sum's "
                     f"evaluations; minus the score sum per ecosystem: joint {_differences(preset, reference)}, "
                     f"realism {_differences(preset, reference, 'realism')}.")
        equal = study.score_sum(three, preset.row.amdm.steps)
        if equal is not None and equal is not reference:
            lines.append(f"  - Against the score sum at its {preset.row.amdm.steps} steps: "
                         f"{preset.evaluations_per_image / equal.evaluations_per_image:.0%} of its evaluations; "
                         f"joint {_differences(preset, equal)}, realism {_differences(preset, equal, 'realism')}.")
    budget = outcome.presets.budget
    for aggregation, noise in (*rows.NORM_SAFE, ("linear", "independent")):
        full = _find(three, replace(budget, aggregation=aggregation, noise_mode=noise, guidance="full",
                                    others_cfg_factor=1.0))
        averaged = _find(three, replace(full.row.amdm, guidance="averaged")) if full else None
        if full and averaged:
            lines.append(f"- Joint, full minus averaged guidance, {aggregation} with {noise} noise, per ecosystem: "
                         f"{_differences(full, averaged)}.")
    modes = [_find(three, replace(budget, aggregation=a, noise_mode=n, guidance="full", others_cfg_factor=1.0))
             for a, n in rows.NORM_SAFE]
    for first, second in zip(modes, modes[1:]):
        if first and second:
            lines.append(f"- Joint, {first.row.amdm.aggregation} with {first.row.amdm.noise_mode} noise minus "
                         f"{second.row.amdm.aggregation} with {second.row.amdm.noise_mode} noise (full guidance), "
                         f"per ecosystem: {_differences(first, second)}.")
    return lines


def setup_text(config: study.StudyConfig, outcome: Outcome) -> str:
    settings = rows.SETTINGS
    labels = "; ".join(f"{aspect}: {', '.join(names)}" for aspect, names in task.LABEL_NAMES.items())
    seeds = ", ".join(str(seed) for seed in outcome.report_seeds)
    chosen = ", ".join(str(seed) for seed in DEVELOPMENT_SEEDS)
    return (f"Toy ecosystems {seeds} (training seeds; presets chosen on ecosystem(s) {chosen}): "
            f"{task.CHANNELS}x{task.GRID}x{task.GRID} latents holding one object ({labels}); members "
            f"{', '.join(rows.MEMBERS)} fine-tuned from one base. Per ecosystem and row: {config.requests} "
            f"requests x {config.seeds} seeds = {config.images} images; {settings.sampler_name}/{settings.scheduler}, "
            f"{settings.steps} steps (rows that name a step count: that many), cfg {settings.cfg:g}. Means over "
            f"the ecosystems ± one standard error (standard deviation over the ecosystems / "
            f"sqrt({len(outcome.report_seeds)}): training and sampling variation both count). Chance: position "
            f"0.25, colour 0.25, shape 0.33, joint 0.02 (two aspects: 0.06). Realism: mean RMS distance to the "
            f"nearest clean render (an empty latent scores 0.28). "
            f"Schedule defaults: " + ", ".join(f"{f.name} {getattr(Schedule(), f.name)}" for f in fields(Schedule))
            + ".")


def results_text(outcome: Outcome, config: study.StudyConfig, heading: str) -> str:
    """The set-up, both tables and the conclusions, with sections at markdown ``heading``."""
    three, two = outcome.three_members, outcome.two_members
    return "\n\n".join([
        setup_text(config, outcome),
        f"{heading} Three members (target shape)", report.markdown_table(three, 1),
        f"{heading} Two members, the paper's case (target colour)", report.markdown_table(two, len(three) + 1),
        f"{heading} What the numbers say", "\n".join(conclusions(outcome))])


def handoff_summaries(handoff: dict) -> list[RowSummary]:
    """The handoff table as the results JSON's section ``handoff`` holds it (rounded, no
    latents): what docs/handoff.md is written from."""
    return report.summaries_from_json(handoff["rows"], rows.handoff_rows(rows.HANDOFF_PRESET, full=True))


def handoff_setup_text(result: dict, config: study.StudyConfig) -> str:
    handoff, sampling = result["handoff"], result["sampling"]
    seeds = ", ".join(map(str, result["ecosystem_seeds"]))
    chosen = ", ".join(map(str, result["selection_ecosystem_seeds"]))
    trained = ", ".join(f"{rows.EXPERT_LABELS[name]} {steps}"
                        for name, steps in handoff["expert_training_steps"].items())
    boundary = handoff["boundary_percent"]
    sigma = models.toy_model_sampling().percent_to_sigma(boundary)
    return (f"Toy ecosystems {seeds} (handoff preset chosen on ecosystem(s) {chosen}). Two noise-level experts "
            f"fine-tuned from each ecosystem's base on every aspect's labels (steps: {trained}): the high-noise "
            f"expert on the noise levels before progress {boundary:g} (sigma {sigma:.2f}), the "
            f"low-noise expert on those after it. Per ecosystem and row: {config.requests} requests x "
            f"{handoff['images_per_ecosystem'] // config.requests} seed(s) = {handoff['images_per_ecosystem']} images; "
            f"{sampling['sampler']}/{sampling['scheduler']}, {sampling['steps']} steps, cfg {sampling['cfg']:g}: the "
            f"high-noise expert's steps are 0 to {handoff['boundary_step'] - 1}. Overlaps in timestep percent, "
            f"centred on the boundary (AMDMExpertBoundary's overlap input): on the overlap both experts step and the "
            f"pack aggregates them (target: the low-noise expert). Means over the ecosystems ± one standard error "
            f"(standard deviation / sqrt({len(result['ecosystem_seeds'])})); realism: mean RMS distance to the "
            f"nearest clean render.")


def overlap_summaries(summaries: Sequence[RowSummary]) -> list[RowSummary]:
    return [s for s in summaries if s.row.handoff is not None and s.row.handoff.overlap > 0]


def shared_noise_json(summaries: Sequence[RowSummary]) -> dict | None:
    """Which shared-noise overlap rows gave the latents of the same row with independent
    noise, in every ecosystem (None when the table has no such pair)."""
    overlaps = overlap_summaries(summaries)
    pairs = [(a, b) for a in overlaps for b in overlaps if a.row.handoff.noise_mode == "independent"
             and b.row.handoff == replace(a.row.handoff, noise_mode="shared")]
    if not pairs:
        return None
    identical = [b.row.name for a, b in pairs
                 if all(torch.equal(x.latents, y.latents) for x, y in zip(a.measurements, b.measurements))]
    return {"pairs": len(pairs), "identical_latents": identical}


def handoff_conclusions(summaries: Sequence[RowSummary], handoff: dict) -> list[str]:
    """What the handoff numbers say, against the hard switch, per ecosystem (``handoff``:
    the results JSON's section, for what it records besides the rows)."""
    if not handoff["hard_switch_equals_chain"]:
        raise ValueError("the results record a hard switch that differs from the KSamplerAdvanced chain")
    chain, switch = hard_switches(summaries)
    lines = [f"- Hard switch: the pack's member ranges gave the KSamplerAdvanced chain's latents bit for bit in "
             f"every ecosystem, at its {chain.evaluations_per_image:.0f} evaluations per image: joint "
             f"{switch.joint.mean:.2f} ± {switch.joint.standard_error:.2f} "
             f"({' / '.join(f'{value:.2f}' for value in switch.joint.per_ecosystem)}), realism "
             f"{switch.metrics['realism'].mean:.3f}."]
    overlaps = overlap_summaries(summaries)
    for label, metric, compare in (("Joint accuracy above", "joint", operator.gt),
                                   ("Joint accuracy below", "joint", operator.lt),
                                   ("Realism better (closer to clean renders) than", "realism", operator.lt),
                                   ("Realism worse than", "realism", operator.gt)):
        names = [s.row.name for s in overlaps if _in_every_ecosystem(compare, s, switch, metric)]
        lines.append(f"- {label} the hard switch's in every ecosystem: "
                     + ("; ".join(names) if names else "none") + ".")
    for summary in overlaps:
        lines.append(f"- {summary.row.name}: {_extra_evaluations(summary, switch)} evaluations; minus "
                     f"the hard switch per ecosystem: joint {_differences(summary, switch)}, realism "
                     f"{_differences(summary, switch, 'realism', 3)}.")
    shared = handoff.get("shared_noise")
    if shared is not None:
        lines.append(f"- Shared noise gave the latents of independent noise in {len(shared['identical_latents'])} of "
                     f"{shared['pairs']} pair(s) of rows" + (" (identical latents: only the high-noise expert starts "
                                                            "from noise; the low-noise expert joins from its latent)"
                                                            if shared["identical_latents"] else "") + ".")
    lines.append(f"- Preset (the rule in study.choose_handoff, on ecosystem(s) "
                 f"{', '.join(map(str, DEVELOPMENT_SEEDS))}): {handoff['preset']}.")
    return lines


def _in_every_ecosystem(compare: Callable[[float, float], bool], summary: RowSummary, reference: RowSummary,
                        metric: str) -> bool:
    return all(compare(x, y) for x, y in zip(summary.metrics[metric].per_ecosystem,
                                             reference.metrics[metric].per_ecosystem))


def _at_ceiling(summary: RowSummary) -> bool:
    return all(value == 1.0 for value in summary.joint.per_ecosystem)


def _span(values: Sequence[float], digits: int = 3) -> str:
    """'+0.018 to +0.020', or one value where they agree at ``digits``."""
    low, high = (f"{round(value, digits) + 0.0:+.{digits}f}" for value in (min(values), max(values)))
    return low if low == high else f"{low} to {high}"


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _extra_evaluations(summary: RowSummary, switch: RowSummary) -> str:
    return f"{summary.evaluations_per_image / switch.evaluations_per_image - 1:+.0%}"


@dataclass(frozen=True)
class HandoffReading:
    """The handoff table read against its hard switch: the overlap rows, by how they
    combine the experts (in table order), each such line by width."""

    summaries: Sequence[RowSummary]
    switch: RowSummary
    overlaps: list[RowSummary]
    lines: dict[str, list[RowSummary]]
    widths: list[float]

    @classmethod
    def of(cls, summaries: Sequence[RowSummary]) -> HandoffReading:
        overlaps = overlap_summaries(summaries)
        lines: dict[str, list[RowSummary]] = {}
        for summary in overlaps:
            lines.setdefault(rows.describe_combining(summary.row.handoff), []).append(summary)
        lines = {how: sorted(line, key=lambda s: s.row.handoff.overlap) for how, line in lines.items()}
        return cls(summaries, hard_switches(summaries)[1], overlaps, lines,
                   sorted({s.row.handoff.overlap for s in overlaps}))

    def cost(self, summary: RowSummary) -> list[float]:
        """Realism minus the hard switch's, per ecosystem."""
        return [x - y for x, y in zip(summary.metrics["realism"].per_ecosystem,
                                      self.switch.metrics["realism"].per_ecosystem)]

    def at(self, how: str, width: float) -> RowSummary | None:
        return next((s for s in self.lines[how] if s.row.handoff.overlap == width), None)

    def switch_realism(self) -> str:
        realism = self.switch.metrics["realism"]
        return f"{realism.mean:.3f}, per ecosystem {' / '.join(f'{value:.3f}' for value in realism.per_ecosystem)}"


def _ceiling_paragraph(reading: HandoffReading, ecosystems: str) -> str:
    if not all(_at_ceiling(s) for s in (reading.switch, *reading.overlaps)):
        return (f"**Joint accuracy is below its ceiling (1.00) for some handoff rows** in ecosystems {ecosystems}: "
                f"the list above gives each overlap's difference from the hard switch per ecosystem, and realism "
                f"alone does not settle the answer.")
    below = [f"row {number}, {s.row.name}" for number, s in enumerate(reading.summaries, start=1)
             if not _at_ceiling(s)]
    rows_at_ceiling = f"every row but {'; '.join(below)}" if below else "every row"
    return (f"**Joint accuracy is at its ceiling (1.00) for {rows_at_ceiling}:** in "
            f"ecosystems {ecosystems} the hard switch and every overlap alike sampled every request right (joint "
            f"1.00 in each ecosystem), so no overlap could raise the accuracy and none lowered it. The answer rests "
            f"on realism (RMS distance to the nearest clean render, lower is better).")


def _overlap_table(reading: HandoffReading) -> str:
    header = ["overlap (steps both experts run)", "evaluations per image", *reading.lines]
    table = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for width in reading.widths:
        cells = [reading.at(how, width) for how in reading.lines]
        evaluations = sorted({f"{s.evaluations_per_image:.0f} ({_extra_evaluations(s, reading.switch)})"
                              for s in cells if s is not None})
        table.append(f"| {width:g} ({len(rows.overlap_steps(width))} steps) | {' or '.join(evaluations)} | "
                     + " | ".join("not run" if s is None else _span(reading.cost(s)) for s in cells) + " |")
    return "\n".join(table)


def _not_measured(summaries: Sequence[RowSummary]) -> str:
    """The handoff rows `--full` adds that the results lack, by how they combine."""
    measured = {s.row.name for s in summaries}
    missing: dict[str, list[str]] = {}
    for row in rows.handoff_rows(rows.HANDOFF_PRESET, full=True):
        if row.handoff is not None and row.name not in measured:
            missing.setdefault(rows.describe_combining(row.handoff), []).append(f"{row.handoff.overlap:g}")
    if not missing:
        return ""
    return (" Not measured here (`--full` runs them): "
            + "; ".join(f"{how} (overlap{'s' if len(widths) > 1 else ''} {_listing(widths)})"
                        for how, widths in missing.items()) + ".")


def handoff_reading(summaries: Sequence[RowSummary], result: dict, config: study.StudyConfig) -> list[str]:
    """The plain answers (when an overlap helps, how wide, what it costs, what the evidence
    cannot show) as paragraphs, every number read off the results."""
    reading = HandoffReading.of(summaries)
    switch, overlaps = reading.switch, reading.overlaps
    ecosystems = _listing([str(seed) for seed in result["ecosystem_seeds"]])
    helped = [s for s in overlaps if _in_every_ecosystem(operator.ge, s, switch, "joint")
              and (_in_every_ecosystem(operator.gt, s, switch, "joint")
                   or _in_every_ecosystem(operator.lt, s, switch, "realism"))]
    worse = [s for s in overlaps if _in_every_ecosystem(operator.gt, s, switch, "realism")]
    growing = any(len(line) > 1 for line in reading.lines.values()) and all(
        _in_every_ecosystem(operator.gt, wider, narrower, "realism")
        for line in reading.lines.values() for narrower, wider in zip(line, line[1:]))
    widths = _listing([f"{width:g}" for width in reading.widths])

    if helped:
        when = (f"**When an overlap helps:** in ecosystems {ecosystems}: {'; '.join(s.row.name for s in helped)} "
                f"(not below the hard switch's joint accuracy in any ecosystem, and above it or closer to the clean "
                f"renders in every one; the list above gives each difference).")
        wide = "**How wide:** the table below gives each width's realism cost against the hard switch."
    else:
        when = "**When an overlap helps:** in this study, never: " + (
            f"every overlap row, at every width ({widths}) and every way of combining in the table, was further "
            f"from the clean renders than the hard switch (realism {reading.switch_realism()}) in every ecosystem"
            + (", the more so the wider the overlap." if growing else ".")
            if len(worse) == len(overlaps) else
            "no overlap row was as accurate as the hard switch and better on either measure in every ecosystem.")
        least = min(overlaps, key=lambda s: (max(reading.cost(s)), s.evaluations_per_image))
        wide = ("**How wide:** no width paid for itself" + ("; the harm grows with the width" if growing else "")
                + f". If you want a soft handoff anyway, the least harm was {least.row.name}: realism "
                f"{_span(reading.cost(least))} over the hard switch, for {_extra_evaluations(least, switch)} "
                f"evaluations, and it bought nothing.")
    when += (f" The rule in study.choose_handoff, applied by `--full` to ecosystem(s) "
             f"{', '.join(map(str, result['selection_ecosystem_seeds']))}, chose: {result['handoff']['preset']}.")
    pairs = [(full, averaged) for full in overlaps for averaged in overlaps
             if full.row.handoff.combine == "ranges" and full.row.handoff.guidance == "full"
             and averaged.row.handoff == replace(full.row.handoff, guidance="averaged")]
    full_costs = [(x, y) for full, averaged in pairs for x, y in zip(reading.cost(full), reading.cost(averaged))]
    if full_costs and all(x > y for x, y in full_costs):
        wide += (" `full` guidance sums the two experts' guidance on the overlap (`averaged` averages it), and "
                 "that cost more realism than `averaged` at every width in every ecosystem")
        if all(y > 0 for _, y in full_costs):
            ratios = [x / y for x, y in full_costs]
            wide += f" ({min(ratios):.0f} to {max(ratios):.0f} times as much)"
        wide += "."
    table_note = (f"(Each cell: realism minus the hard switch's, the lowest to the highest over the ecosystems; "
                  f"the hard switch: {switch.evaluations_per_image:.0f} evaluations per image, realism "
                  f"{reading.switch_realism()}.)")

    per_step = sorted({(s.evaluations_per_image - switch.evaluations_per_image)
                       / len(rows.overlap_steps(s.row.handoff.overlap)) for s in overlaps})
    shares = _listing([" or ".join(sorted({_extra_evaluations(s, switch) for s in overlaps
                                           if s.row.handoff.overlap == width})) for width in reading.widths])
    costs = (f"**What it costs:** {' or '.join(f'{value:g}' for value in per_step)} evaluations per image for every "
             f"step both experts run" + (" (the second expert's cond and uncond)" if per_step == [2.0] else "")
             + f": {shares} evaluations at overlaps {widths} of {result['sampling']['steps']} steps. On a real "
             f"video model that is the cost of those steps run twice, and both experts resident in memory during "
             f"the overlap.")

    limits = ("Limits of this evidence: the toy's experts hand over cleanly (each trained on its side of the "
              "boundary only")
    low = next((s for s in summaries if s.row.members == (models.LOW_NOISE,)), None)
    if low is not None and _at_ceiling(low) and _in_every_ecosystem(operator.lt, low, switch, "realism"):
        limits += (f", and the {low.row.name} already samples every request right and closer to the clean renders "
                   f"than the hard switch in every ecosystem: realism {low.metrics['realism'].mean:.3f}, row "
                   f"{list(summaries).index(low) + 1}")
    handoff_images = result["handoff"]["images_per_ecosystem"]
    limits += ("), so the study cannot show an overlap rescuing a handoff where the experts disagree at the "
               "boundary, for instance a boundary far from where the experts were trained to meet. Each handoff "
               f"row samples {handoff_images} images per ecosystem ({config.requests} requests x "
               f"{handoff_images // config.requests} seed(s); `--handoff-seeds` sets more; the member tables sample "
               f"{result['images_per_ecosystem']}), which keeps the main job within its time."
               + _not_measured(summaries)
               + " The handoff preset's candidates on the selection ecosystem(s) are written by `--full` to "
               "benchmarks/results/toy_ecosystem_full.md, which is not among the committed results. "
               "tests/test_toy_ecosystem.py checks on a short run that shared noise gives the latents of "
               "independent noise on an overlap: only the high-noise expert starts from noise; the low-noise "
               "expert joins from its latent.")
    return [_ceiling_paragraph(reading, ecosystems), when, wide, _overlap_table(reading), table_note, costs, limits]


def handoff_text(result: dict, config: study.StudyConfig, heading: str) -> str:
    """The handoff set-up, its table, conclusions and reading, sections at ``heading``,
    written from ``result`` (the results JSON, as loaded) alone."""
    summaries = handoff_summaries(result["handoff"])
    return "\n\n".join([handoff_setup_text(result, config),
                         f"{heading} High-noise expert to low-noise expert", report.markdown_table(summaries, 1),
                         f"{heading} What the handoff numbers say",
                         "\n".join(handoff_conclusions(summaries, result["handoff"])),
                         f"{heading} What this means", *handoff_reading(summaries, result, config)])


def write_handoff_page(results_json: Path, config: study.StudyConfig) -> Path:
    """Rewrite docs/handoff.md's results from the results JSON (the main job does it after
    writing the JSON; --handoff-page alone does only this)."""
    result = json.loads(results_json.read_text())
    return replace_between(HANDOFF_PAGE, HANDOFF_BEGIN, HANDOFF_END, handoff_text(result, config, "###"))


def replace_between(path: Path, begin: str, end: str, text: str) -> Path:
    """Replace the text between the lines ``begin`` and ``end`` of a page (the main job's
    copy of its results)."""
    old = path.read_text(encoding="utf-8")
    start, stop = old.index(begin) + len(begin), old.index(end)
    path.write_text(f"{old[:start]}\n{text}\n{old[stop:]}", encoding="utf-8")
    return path


def write_outputs(outcome: Outcome, config: study.StudyConfig, results_dir: Path = RESULTS_DIR,
                  images_dir: Path = IMAGES_DIR) -> dict[str, Path]:
    three, two = outcome.three_members, outcome.two_members
    first_pair = len(three) + 1
    paths = {"markdown": results_dir / "toy_ecosystem.md", "json": results_dir / "toy_ecosystem.json",
             "frontier": images_dir / "toy_frontier.png", "grid": images_dir / "toy_ecosystem_samples.png",
             "handoff": images_dir / "toy_handoff.png"}
    reference = study.score_sum(three)
    report.write_json(paths["json"], {
        "ecosystem_seeds": list(outcome.report_seeds),
        "selection_ecosystem_seeds": list(DEVELOPMENT_SEEDS),
        "images_per_ecosystem": config.images,
        "sampling": {"sampler": rows.SETTINGS.sampler_name, "scheduler": rows.SETTINGS.scheduler,
                     "steps": rows.SETTINGS.steps, "cfg": rows.SETTINGS.cfg},
        "uncertainty": "standard_error: standard deviation over the ecosystems / sqrt(number of ecosystems)",
        "presets": {"budget": describe(outcome.presets.budget),
                    "match": None if outcome.presets.match is None else describe(outcome.presets.match)},
        "goal": {"reference": reference.row.name, "budget_share": study.BUDGET_SHARE, "margin": study.MATCH_MARGIN,
                 "met_by": [s.row.name for s in three if s.row.amdm is not None
                            and study.matches_in_every_ecosystem(s, reference)],
                 "met_at_equal_steps_by": [s.row.name for s in meeting_at_equal_steps(three)]},
        "rows": report.rows_json(three, 1),
        "two_member_rows": report.rows_json(two, first_pair),
        "handoff": handoff_json(outcome, config)})
    # The handoff section is written from the JSON as written (rounded), as docs/handoff.md is.
    handoff = handoff_text(json.loads(paths["json"].read_text()), config, "###")
    paths["markdown"].write_text(f"# AMDM toy ecosystem study\n\n{results_text(outcome, config, '##')}\n\n"
                                 f"## Handoff between noise-level experts\n\n{handoff}\n")
    report.frontier_plot(three, paths["frontier"],
                         f"Toy ecosystems {', '.join(map(str, outcome.report_seeds))}: three members "
                         f"({rows.SETTINGS.steps} steps unless the row names its own)",
                         lines=[[s for s in three if rows.sweep(outcome.presets.budget, s.row.amdm)]])
    handoff_plot(outcome, paths["handoff"])
    shown = {s.row.name for s in three}
    grid = [("requested (clean render)", task.render_all(task.benchmark_requests(GRID_COLUMNS)))]
    grid += [(f"{number}. {s.row.name}", s.measurements[0].latents[:GRID_COLUMNS])
             for number, s in enumerate(three + two, start=1) if number <= len(three) or s.row.name not in shown]
    report.sample_grid(grid, paths["grid"])
    if outcome.selection is not None:
        paths["full"] = results_dir / "toy_ecosystem_full.md"
        sections = [f"# Choosing the presets on ecosystem(s) {', '.join(map(str, DEVELOPMENT_SEEDS))}",
                    report.markdown_table(outcome.selection, 1),
                    f"Chosen: budget {describe(outcome.presets.budget)}; match {describe(outcome.presets.match)}."]
        if outcome.handoff_selection is not None:
            sections += [f"# Choosing the handoff on ecosystem(s) {', '.join(map(str, DEVELOPMENT_SEEDS))}",
                         report.markdown_table(outcome.handoff_selection, 1),
                         f"Chosen: {rows.describe_handoff(outcome.handoff_preset)}."]
        if outcome.ideas:
            sections += [f"# Ideas, on ecosystems {', '.join(map(str, outcome.report_seeds))}",
                         report.markdown_table(outcome.ideas, 1)]
        paths["full"].write_text("\n\n".join(sections) + "\n")
    return paths


def handoff_json(outcome: Outcome, config: study.StudyConfig) -> dict:
    """The section ``handoff``; ``shared_noise`` only where the table has rows with shared and
    with independent noise (see shared_noise_json)."""
    experts = models.ExpertPlan()
    shared = shared_noise_json(outcome.handoff)
    return {"images_per_ecosystem": config.handoff_images,
            "boundary_percent": experts.boundary_percent, "boundary_step": rows.boundary_step(),
            "overlaps_percent": list(rows.OVERLAPS), "expert_training_steps": dict(experts.steps),
            "preset": rows.describe_handoff(outcome.handoff_preset), "hard_switch_equals_chain": True,
            **({} if shared is None else {"shared_noise": shared}),
            "rows": report.rows_json(outcome.handoff, 1)}


def handoff_plot(outcome: Outcome, path: Path) -> None:
    """Joint accuracy and realism against evaluations, side by side; each way of combining
    joined by a line from the hard switch through its overlaps."""
    _, switch = hard_switches(outcome.handoff)
    overlaps = overlap_summaries(outcome.handoff)
    kinds = sorted({replace(s.row.handoff, overlap=0.0) for s in overlaps}, key=str)
    lines = [[switch, *(s for s in overlaps if replace(s.row.handoff, overlap=0.0) == kind)] for kind in kinds]
    title = f"Toy ecosystems {', '.join(map(str, outcome.report_seeds))}: high-noise to low-noise expert"
    note = ("numbers: rows of the handoff table (docs/handoff.md); bars: one standard error over the ecosystems; "
            f"lines: each way of combining, from the hard switch through overlaps "
            f"{', '.join(f'{overlap:g}' for overlap in rows.OVERLAPS)}")
    charts = [report.frontier_chart(outcome.handoff, title, lines, size=(760, 560), families=report.HANDOFF_FAMILIES,
                                    note=note, preset_group="handoff preset", metric=metric, x_from=30)
              for metric in (("joint", "joint accuracy"), ("realism", "realism: RMS distance to the nearest clean "
                                                                     "render (lower is better)"))]
    report.save_side_by_side(charts, path)
