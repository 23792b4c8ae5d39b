"""The benchmark: which rows run, in which order, and the conclusions drawn from them.

Rows run in phases; later phases use the best AMDM setting measured so far, so the
window and deviation sweeps explore around what actually works on this task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import report, task
from .methods import (AMDMSettings, Batch, EvaluationCounter, SamplingSettings, ScoreSum,
                      merged_model, model_list, sample_alone, sample_amdm, sample_handoff)
from .models import MEMBER_ASPECTS, Ecosystem

logger = logging.getLogger(__name__)

Sampler = Callable[[Batch], torch.Tensor]


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    # Builds the row's (counted) models once and returns the per-batch sampler.
    build: Callable[[EvaluationCounter], Sampler]


@dataclass(frozen=True)
class BenchmarkConfig:
    requests: int = 24
    seeds: int = 4
    sampling: SamplingSettings = SamplingSettings()
    # The member that finishes alone (AMDM target, last model of the handoff).
    target: str = "shape"
    quick: bool = False
    first_seed: int = 1000


def batches(config: BenchmarkConfig) -> list[Batch]:
    requests = task.benchmark_requests(config.requests)
    return [Batch(requests, config.first_seed + index) for index in range(config.seeds)]


def member_names() -> list[str]:
    return list(MEMBER_ASPECTS)


def alone_row(ecosystem: Ecosystem, name: str, settings: SamplingSettings) -> Row:
    model = ecosystem.base if name == "base" else ecosystem.members[name]
    group = "reference" if name == "base" else "member alone"
    label = "base (unconditional)" if name == "base" else f"{name} member"
    return Row(group, label, lambda counter: lambda batch: sample_alone(counter.counted(model), batch, settings))


def handoff_row(ecosystem: Ecosystem, target: str, steps_each: int, settings: SamplingSettings) -> Row:
    """Each other member runs steps_each steps in stack order, then the target finishes."""
    order = [name for name in member_names() if name != target] + [target]

    def build(counter: EvaluationCounter) -> Sampler:
        models = model_list(ecosystem, order, counter)
        segments = [(model, steps_each * (index + 1)) for index, model in enumerate(models)]
        return lambda batch: sample_handoff(segments, batch, settings)
    label = " -> ".join(f"{name}({steps_each})" for name in order[:-1]) + f" -> {target}"
    return Row("baseline", f"step handoff {label}", build)


def merge_row(ecosystem: Ecosystem, settings: SamplingSettings) -> Row:
    def build(counter: EvaluationCounter) -> Sampler:
        model = counter.counted(merged_model([ecosystem.members[name] for name in member_names()]))
        return lambda batch: sample_alone(model, batch, settings)
    return Row("baseline", "weight merge (ModelMergeSimple, equal thirds)", build)


def score_sum_row(ecosystem: Ecosystem, target: str, settings: SamplingSettings) -> Row:
    def build(counter: EvaluationCounter) -> Sampler:
        others = [name for name in member_names() if name != target]
        model = ScoreSum(counter.counted(ecosystem.members[target]), model_list(ecosystem, others, counter)).model()
        return lambda batch: sample_alone(model, batch, settings)
    return Row("baseline", "score sum (every member every step)", build)


def describe_amdm(amdm: AMDMSettings) -> str:
    deviation = "no deviation" if amdm.deviation_mode == "none" else \
        f"{amdm.deviation_mode} {amdm.deviation_strength:g}"
    extras = [part for part, default in ((amdm.weight_curve, "constant"), (amdm.noise_mode, "independent"))
              if part != default]
    target = member_names()[amdm.target_member - 1]
    return (f"AMDM {amdm.aggregation}, window {amdm.start_percent:g}-{amdm.end_percent:g}, "
            f"{deviation}, others' cfg x{amdm.others_cfg_factor:g}, target {target}"
            + "".join(f", {extra}" for extra in extras))


def amdm_row(ecosystem: Ecosystem, group: str, amdm: AMDMSettings, settings: SamplingSettings) -> Row:
    def build(counter: EvaluationCounter) -> Sampler:
        models = model_list(ecosystem, member_names(), counter)
        return lambda batch: sample_amdm(models, amdm, batch, settings)
    return Row(group, describe_amdm(amdm), build)


@dataclass
class Run:
    """Executes rows, keeping their results and the progress bar."""

    ecosystem: Ecosystem
    config: BenchmarkConfig
    progress: tqdm
    results: list[report.RowResult]

    def execute(self, row: Row, amdm: AMDMSettings | None = None) -> report.RowResult:
        self.progress.set_postfix_str(row.name[:60])
        counter = EvaluationCounter()
        sampler = row.build(counter)
        started = time.monotonic()
        all_batches = batches(self.config)
        latents = torch.cat([sampler(batch) for batch in all_batches])
        requests = [request for batch in all_batches for request in batch.requests]
        if not torch.isfinite(latents).all():
            raise RuntimeError(f"{row.name}: non-finite latents")
        result = report.RowResult(row.group, row.name, report.score(latents, requests),
                                  counter.rows / len(requests), time.monotonic() - started, latents, amdm)
        logger.info("%s: joint %.2f, realism %.3f, %.0f evals/image", row.name, result.scores.joint,
                    result.scores.realism, result.evaluations_per_image)
        self.results.append(result)
        self.progress.update(1)
        return result

    def amdm(self, group: str, amdm: AMDMSettings) -> report.RowResult:
        return self.execute(amdm_row(self.ecosystem, group, amdm, self.config.sampling), amdm)


def best_amdm(results: list[report.RowResult]) -> report.RowResult:
    """Highest joint accuracy; ties (to two decimals) go to the more realistic, then cheaper."""
    candidates = [result for result in results if result.amdm is not None]
    return max(candidates, key=lambda r: (round(r.scores.joint, 2), -round(r.scores.realism, 3),
                                          -r.evaluations_per_image))


@dataclass(frozen=True)
class Plan:
    """The AMDM settings the phases sweep; each later phase starts from the best so far."""

    modes: tuple[str, ...] = ("linear", "slerp", "paper")
    default_window: tuple[float, float] = (0.0, 0.4)
    # Phase 1: every mode without deviation at these factors of the others' CFG (1 and
    # N = the member count), then with each deviation form at the larger factor.
    cfg_factors: tuple[float, ...] = (1.0, float(len(MEMBER_ASPECTS)))
    deviations: tuple[tuple[str, float], ...] = (("relative", 0.25), ("absolute", 1.0))
    # Phase 2: window length (from the start) and position (fixed length).
    windows: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.0, 0.2), (0.0, 0.3), (0.0, 0.6),
                                                (0.0, 0.8), (0.0, 1.0), (0.1, 0.5), (0.2, 0.6))
    # Phase 3: deviation strengths around the phase 1 values.
    strengths: tuple[tuple[str, float], ...] = (("relative", 0.1), ("relative", 0.5),
                                                ("absolute", 0.25), ("absolute", 4.0))
    handoff_steps: tuple[int, ...] = (2, 4)
    # Phase 4: weight curves, shared noise, the other targets, an intermediate CFG factor.
    extras: bool = True


QUICK_PLAN = Plan(cfg_factors=(float(len(MEMBER_ASPECTS)),), deviations=(("relative", 0.25),), windows=((0.0, 0.2),),
                  strengths=(("absolute", 1.0),), handoff_steps=(3,), extras=False)


def row_count(plan: Plan) -> int:
    references = 1 + len(MEMBER_ASPECTS) + len(plan.handoff_steps) + 2
    phase1 = len(plan.modes) * (len(plan.cfg_factors) + len(plan.deviations))
    extras = (2 + 1 + len(MEMBER_ASPECTS) - 1 + 1) if plan.extras else 0
    return references + phase1 + len(plan.windows) + len(plan.strengths) + extras


def run_benchmark(ecosystem: Ecosystem, config: BenchmarkConfig) -> list[report.RowResult]:
    plan = QUICK_PLAN if config.quick else Plan()
    settings = config.sampling
    target_member = member_names().index(config.target) + 1
    with logging_redirect_tqdm(), tqdm(total=row_count(plan), desc="toy benchmark", unit="row") as progress:
        run = Run(ecosystem, config, progress, [])
        for name in ["base", *member_names()]:
            run.execute(alone_row(ecosystem, name, settings))
        for steps_each in plan.handoff_steps:
            run.execute(handoff_row(ecosystem, config.target, steps_each, settings))
        run.execute(merge_row(ecosystem, settings))
        run.execute(score_sum_row(ecosystem, config.target, settings))

        start, end = plan.default_window
        default = AMDMSettings(start, end, target_member=target_member)
        for mode in plan.modes:
            for factor in plan.cfg_factors:
                run.amdm("AMDM modes", replace(default, aggregation=mode, others_cfg_factor=factor))
            for deviation_mode, strength in plan.deviations:
                run.amdm("AMDM modes", replace(default, aggregation=mode, others_cfg_factor=plan.cfg_factors[-1],
                                               deviation_mode=deviation_mode, deviation_strength=strength))
        best = best_amdm(run.results).amdm
        for start, end in plan.windows:
            run.amdm("AMDM window", replace(best, start_percent=start, end_percent=end))
        best = best_amdm(run.results).amdm
        for deviation_mode, strength in plan.strengths:
            run.amdm("AMDM deviation", replace(best, deviation_mode=deviation_mode, deviation_strength=strength))
        if plan.extras:
            best = best_amdm(run.results).amdm
            for curve in ("linear_decay", "cosine_decay"):
                run.amdm("AMDM options", replace(best, weight_curve=curve))
            run.amdm("AMDM options", replace(best, noise_mode="shared"))
            run.amdm("AMDM options", replace(best, others_cfg_factor=(1.0 + plan.cfg_factors[-1]) / 2))
            for other in (index + 1 for index in range(len(MEMBER_ASPECTS)) if index + 1 != target_member):
                run.amdm("AMDM options", replace(best, target_member=other))
    return run.results


def standard_error(share: float, images: int) -> float:
    """One binomial standard error of an accuracy measured on `images` images."""
    return (share * (1.0 - share) / images) ** 0.5


def conclusions(results: list[report.RowResult], images: int) -> str:
    """What the numbers say, stated from the numbers."""
    best = best_amdm(results)
    error = standard_error(best.scores.joint, images)
    amdm_rows = [r for r in results if r.amdm is not None]
    baselines = [r for r in results if r.amdm is None and r.group != "reference"]
    best_baseline = max(baselines, key=lambda r: (round(r.scores.joint, 2), -r.scores.realism))
    near_best = [r for r in amdm_rows if r.scores.joint >= best.scores.joint - error]
    cheapest = min(near_best, key=lambda r: (r.evaluations_per_image, -r.scores.joint))
    lines = [f"- Accuracies are over {images} images: one standard error is up to "
             f"{standard_error(0.5, images):.2f}, so rows closer than that are not told apart.",
             f"- Best AMDM setting: **{best.name}**: joint {best.scores.joint:.2f}, realism "
             f"{best.scores.realism:.3f}, {best.evaluations_per_image:.0f} evaluations/image.",
             f"- Cheapest AMDM setting within one standard error ({error:.2f}) of it: **{cheapest.name}**: "
             f"joint {cheapest.scores.joint:.2f}, realism {cheapest.scores.realism:.3f}, "
             f"{cheapest.evaluations_per_image:.0f} evaluations/image.",
             f"- Best non-AMDM row: **{best_baseline.name}**: joint {best_baseline.scores.joint:.2f}, "
             f"realism {best_baseline.scores.realism:.3f}, {best_baseline.evaluations_per_image:.0f} "
             f"evaluations/image."]
    for mode in ("linear", "slerp", "paper"):
        rows = [r for r in amdm_rows if r.amdm.aggregation == mode]
        if rows:
            top = best_amdm(rows)
            lines.append(f"- Best with aggregation `{mode}`: {top.name}: joint {top.scores.joint:.2f}, "
                         f"realism {top.scores.realism:.3f}.")
    for winner in (r for r in baselines if r.scores.joint >= best.scores.joint):
        lines.append(f"- A baseline matches or beats AMDM on joint accuracy: {winner.name} "
                     f"({winner.scores.joint:.2f} at {winner.evaluations_per_image:.0f} evaluations/image).")
    cleaner = [r for r in baselines if r.scores.realism < best.scores.realism]
    if cleaner:
        names = ", ".join(f"{r.name} ({r.scores.realism:.3f})" for r in cleaner)
        lines.append(f"- More realistic than the best AMDM setting: {names}.")
    return "\n".join(lines)


def write_outputs(results: list[report.RowResult], config: BenchmarkConfig, ecosystem: Ecosystem,
                  out_dir: Path, elapsed: dict[str, float]) -> tuple[str, Path, Path]:
    """Write the markdown (table + setup + conclusions) and the sample grid; return the
    markdown text and both paths."""
    settings = config.sampling
    images = min(config.requests, len(task.all_requests())) * config.seeds
    labels = "; ".join(f"{aspect}: {', '.join(names)}" for aspect, names in task.LABEL_NAMES.items())
    setup = (f"Toy ecosystem: {task.CHANNELS}x{task.GRID}x{task.GRID} latents holding one object ({labels}); members {', '.join(member_names())} fine-tuned from one "
             f"base; target `{config.target}`. {images // config.seeds} requests x {config.seeds} "
             f"seeds = {images} images per row; {settings.sampler_name}/{settings.scheduler}, "
             f"{settings.steps} steps, cfg {settings.cfg:g}. Chance: position 0.25, colour 0.25, "
             f"shape 0.33, joint 0.02. Realism: RMS distance to the nearest clean render (an empty "
             f"latent scores 0.28); clean: share within {report.CLEAN_DISTANCE}. Weights: "
             f"{ecosystem.cache_dir}. Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items()) + ".")
    text = (f"# AMDM toy ecosystem benchmark\n\n{setup}\n\n{report.markdown_table(results)}\n\n"
            f"## What the numbers say\n\n{conclusions(results, images)}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "toy_ecosystem.md"
    table_path.write_text(text)
    columns = min(12, config.requests)
    grid_rows = [("requested (clean render)", task.render_all(task.benchmark_requests(columns)))]
    # PIL's built-in font is about 6 px per character: 64 characters fit the label column.
    grid_rows += [(f"{number}. {r.name}"[:64], r.latents[:columns]) for number, r in enumerate(results, start=1)]
    grid_path = out_dir / "toy_ecosystem_samples.png"
    report.sample_grid(grid_rows, grid_path)
    return text, table_path, grid_path
