"""The whole job: load (or train) the ecosystems, choose the presets (with --full), run
both tables, and write the markdown, the JSON, the frontier plot and the grid."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

from . import DEVELOPMENT_SEEDS, REPORT_SEEDS, models, report, rows, study, task
from .methods import AMDMSettings, Schedule
from .study import RowSummary

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
IMAGES_DIR = REPO_ROOT / "docs" / "images"
README = REPO_ROOT / "README.md"
# The README's copy of the tables lies between these lines; the main job rewrites it.
README_BEGIN = "<!-- toy ecosystem results: written by python3 -m benchmarks.toy_ecosystem -->"
README_END = "<!-- end of toy ecosystem results -->"
GRID_COLUMNS = 12


@dataclass(frozen=True)
class Outcome:
    three_members: list[RowSummary]
    two_members: list[RowSummary]
    presets: study.Presets
    report_seeds: tuple[int, ...]
    selection: list[RowSummary] | None = None  # the candidates on the development ecosystems (--full)
    ideas: list[RowSummary] | None = None  # idea rows on the report ecosystems (--full)


def load(seeds: Sequence[int], retrain: bool, ship: bool) -> list[models.Ecosystem]:
    ecosystems = [models.load_ecosystem(seed, retrain=retrain) for seed in seeds]
    if ship:
        for ecosystem in ecosystems:
            logger.info("shipped ecosystem %d to %s", ecosystem.seed, models.ship_weights(ecosystem))
    return ecosystems


def select(development: Sequence[models.Ecosystem], config: study.StudyConfig) -> tuple[study.Presets, list[RowSummary]]:
    """Run the candidate grid on the development ecosystems and apply the rule."""
    candidates = [rows.score_sum_row(rows.MEMBERS, rows.TARGET)]
    candidates += [rows.amdm_row("AMDM candidate", settings) for settings in rows.candidate_settings()]
    (summaries,) = study.run_tables({"selection": study.Table(candidates, development, task.ASPECTS)}, config).values()
    presets = study.choose_presets(summaries[1:], summaries[0])
    if (presets.budget, presets.match) != (rows.BUDGET_PRESET, rows.MATCH_PRESET):
        logger.warning("the rule chose other presets than rows.py records (budget: %s; match: %s): "
                       "this run reports the chosen ones", describe(presets.budget), describe(presets.match))
    return presets, summaries


def describe(settings: AMDMSettings | None) -> str:
    return "none" if settings is None else rows.describe_amdm(settings, rows.MEMBERS)


def run_study(config: study.StudyConfig, report_seeds: Sequence[int] = REPORT_SEEDS, full: bool = False,
              retrain: bool = False, ship: bool = False) -> Outcome:
    """The main job; with ``full`` the presets are chosen first and the idea rows run too."""
    selection = None
    presets = study.Presets(rows.BUDGET_PRESET, rows.MATCH_PRESET)
    if full:
        presets, selection = select(load(DEVELOPMENT_SEEDS, retrain, ship), config)
    ecosystems = load(report_seeds, retrain, ship)
    tables = {"three": study.Table(rows.three_member_rows(presets.budget, presets.match), ecosystems, task.ASPECTS),
              "two": study.Table(rows.two_member_rows(presets.budget), ecosystems, rows.PAIR)}
    if full:
        tables["ideas"] = study.Table(rows.idea_rows(), ecosystems, task.ASPECTS)
    results = study.run_tables(tables, config)
    return Outcome(results["three"], results["two"], presets, tuple(report_seeds), selection, results.get("ideas"))


def _find(summaries: Sequence[RowSummary], amdm: AMDMSettings) -> RowSummary | None:
    return next((s for s in summaries if s.row.amdm == amdm), None)


def _differences(a: RowSummary, b: RowSummary, metric: str = "joint") -> str:
    # round() then + 0.0: a difference that rounds to zero reads +0.00, never -0.00.
    return ", ".join(f"{round(x - y, 2) + 0.0:+.2f}"
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


def update_readme(text: str, readme: Path = README) -> Path:
    """Replace the README's copy of the results (between README_BEGIN and README_END)."""
    old = readme.read_text(encoding="utf-8")
    start, end = old.index(README_BEGIN) + len(README_BEGIN), old.index(README_END)
    readme.write_text(f"{old[:start]}\n{text}\n{old[end:]}", encoding="utf-8")
    return readme


def write_outputs(outcome: Outcome, config: study.StudyConfig, results_dir: Path = RESULTS_DIR,
                  images_dir: Path = IMAGES_DIR) -> dict[str, Path]:
    three, two = outcome.three_members, outcome.two_members
    first_pair = len(three) + 1
    text = f"# AMDM toy ecosystem study\n\n{results_text(outcome, config, '##')}\n"
    paths = {"markdown": results_dir / "toy_ecosystem.md", "json": results_dir / "toy_ecosystem.json",
             "frontier": images_dir / "toy_frontier.png", "grid": images_dir / "toy_ecosystem_samples.png"}
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(text)
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
        "two_member_rows": report.rows_json(two, first_pair)})
    report.frontier_plot(three, paths["frontier"],
                         f"Toy ecosystems {', '.join(map(str, outcome.report_seeds))}: three members "
                         f"({rows.SETTINGS.steps} steps unless the row names its own)",
                         sweep=[s for s in three if rows.sweep(outcome.presets.budget, s.row.amdm)])
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
        if outcome.ideas:
            sections += [f"# Ideas, on ecosystems {', '.join(map(str, outcome.report_seeds))}",
                         report.markdown_table(outcome.ideas, 1)]
        paths["full"].write_text("\n\n".join(sections) + "\n")
    return paths
