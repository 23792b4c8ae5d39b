"""The study: rows run on several independently trained ecosystems, summarised with an
uncertainty that includes the training, and the rule that chooses AMDM's settings.

Settings are chosen on the development ecosystems and reported on the others, so no
reported number was used to choose what it reports.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import HANDOFF_SEEDS_PER_REQUEST, SEEDS_PER_REQUEST, task
from .methods import AMDMSettings, Batch, EvaluationCounter
from .models import Ecosystem
from .rows import MEMBERS, SETTINGS, Handoff, Row, score_sum_name

logger = logging.getLogger(__name__)

# The score sum's evaluations an AMDM preset may use, and how close it must come to it.
BUDGET_SHARE = 0.6
MATCH_MARGIN = 0.02
# Settings whose joint accuracy is this close to the best count as tied: the cheapest wins.
TIE = 0.01

# A sample counts as clean (on the data manifold) when it is closer to a render than
# half the smallest distance between two different renders (0.25).
CLEAN_DISTANCE = 0.125


@dataclass(frozen=True)
class StudyConfig:
    # Every request (all 48 label combinations) from each of `seeds` ComfyUI seeds.
    requests: int = len(task.all_requests())
    seeds: int = SEEDS_PER_REQUEST
    first_seed: int = 1000
    handoff_seeds: int = HANDOFF_SEEDS_PER_REQUEST  # the handoff table's seeds per request

    @property
    def images(self) -> int:
        return self.requests * self.seeds

    @property
    def handoff_images(self) -> int:
        return self.requests * self.handoff_seeds


def batches(config: StudyConfig) -> list[Batch]:
    requests = task.benchmark_requests(config.requests)
    return [Batch(requests, config.first_seed + index) for index in range(config.seeds)]


@dataclass(frozen=True)
class Measurement:
    """One row on one ecosystem: per image, whether each aspect is as requested, and its
    distance to the nearest clean render."""

    correct: dict[str, torch.Tensor]
    distance: torch.Tensor
    evaluations_per_image: float
    latents: torch.Tensor

    def joint(self, aspects: Sequence[str]) -> float:
        return torch.stack([self.correct[aspect] for aspect in aspects]).all(dim=0).float().mean().item()

    def metrics(self, aspects: Sequence[str]) -> dict[str, float]:
        values = {aspect: hits.float().mean().item() for aspect, hits in self.correct.items()}
        values["joint"] = self.joint(aspects)
        values["realism"] = self.distance.mean().item()
        values["clean"] = (self.distance < CLEAN_DISTANCE).float().mean().item()
        return values


def measure(latents: torch.Tensor, requests: list[task.Request], evaluations_per_image: float) -> Measurement:
    wanted = task.request_labels(requests)
    correct = {aspect: task.DETECTORS[aspect](latents) == wanted[aspect] for aspect in task.ASPECTS}
    return Measurement(correct, task.realism_distance(latents), evaluations_per_image, latents)


@dataclass(frozen=True)
class Statistic:
    """A metric over ecosystems: the mean, one standard error of it (the spread between
    ecosystems, so training and sampling variation both count) and each ecosystem's value."""

    mean: float
    standard_error: float
    per_ecosystem: tuple[float, ...]


def statistic(values: Sequence[float]) -> Statistic:
    spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return Statistic(statistics.fmean(values), spread, tuple(values))


METRICS = (*task.ASPECTS, "joint", "realism", "clean")


@dataclass(frozen=True)
class RowSummary:
    row: Row
    aspects: tuple[str, ...]  # the aspects its joint accuracy requires
    evaluations_per_image: float
    metrics: dict[str, Statistic]
    measurements: tuple[Measurement, ...]  # per ecosystem, in the order of the seeds

    @property
    def joint(self) -> Statistic:
        return self.metrics["joint"]


def summarise(row: Row, measurements: Sequence[Measurement], aspects: Sequence[str]) -> RowSummary:
    per_ecosystem = [m.metrics(aspects) for m in measurements]
    evaluations = {m.evaluations_per_image for m in measurements}
    if len(evaluations) != 1:
        raise RuntimeError(f"{row.name}: evaluations per image differ between ecosystems: {evaluations}")
    return RowSummary(row, tuple(aspects), evaluations.pop(),
                      {name: statistic([values[name] for values in per_ecosystem]) for name in METRICS},
                      tuple(measurements))


@dataclass
class Runner:
    """Runs rows on ecosystems with one progress bar; a row already measured on an
    ecosystem with the same images (a member alone, used by two tables) is not run again."""

    config: StudyConfig
    progress: tqdm
    measured: dict[tuple[str, int, StudyConfig], Measurement]

    def measure(self, row: Row, ecosystem: Ecosystem, config: StudyConfig) -> Measurement:
        key = (row.name, ecosystem.seed, config)
        if key not in self.measured:
            self.progress.set_postfix_str(f"ecosystem {ecosystem.seed}: {row.name[:50]}")
            counter = EvaluationCounter()
            sampler = row.build(ecosystem, counter)
            started = time.monotonic()
            all_batches = batches(config)
            latents = torch.cat([sampler(batch) for batch in all_batches])
            if not torch.isfinite(latents).all():
                raise RuntimeError(f"{row.name}, ecosystem {ecosystem.seed}: non-finite latents")
            requests = [request for batch in all_batches for request in batch.requests]
            self.measured[key] = measure(latents, requests, counter.rows / len(requests))
            logger.debug("%s, ecosystem %d: %.1f s", row.name, ecosystem.seed, time.monotonic() - started)
        self.progress.update(1)
        return self.measured[key]

    def table(self, table: Table) -> list[RowSummary]:
        config = self.config if table.seeds is None else replace(self.config, seeds=table.seeds)
        return [summarise(row, [self.measure(row, ecosystem, config) for ecosystem in table.ecosystems],
                          table.aspects)
                for row in table.rows]


@dataclass(frozen=True)
class Table:
    rows: list[Row]
    ecosystems: Sequence[Ecosystem]
    aspects: tuple[str, ...]  # what joint accuracy requires
    seeds: int | None = None  # ComfyUI seeds per request, where not the study's

    @property
    def size(self) -> int:
        return len(self.rows) * len(self.ecosystems)


def run_tables(tables: dict[str, Table], config: StudyConfig) -> dict[str, list[RowSummary]]:
    """Every table's rows on its ecosystems, with one progress bar over all of them."""
    total = sum(table.size for table in tables.values())
    with logging_redirect_tqdm(), tqdm(total=total, desc="toy ecosystem study", unit="row") as progress:
        runner = Runner(config, progress, {})
        return {name: runner.table(table) for name, table in tables.items()}


def score_sum(summaries: Sequence[RowSummary], steps: int = SETTINGS.steps) -> RowSummary | None:
    """The three members' score sum at ``steps`` sampler steps (the study's own by
    default), None when the table has no such row."""
    name = score_sum_name(MEMBERS, steps)
    return next((summary for summary in summaries if summary.row.name == name), None)


def best_within(candidates: Sequence[RowSummary]) -> RowSummary:
    """Highest mean joint accuracy; within TIE of it, the fewest evaluations, then the
    higher accuracy, then the more realistic."""
    best = max(summary.joint.mean for summary in candidates)
    tied = [summary for summary in candidates if summary.joint.mean >= best - TIE]
    return min(tied, key=lambda s: (s.evaluations_per_image, -s.joint.mean, s.metrics["realism"].mean))


@dataclass(frozen=True)
class Presets:
    """budget: the best AMDM setting within BUDGET_SHARE of the score sum's evaluations;
    match: the cheapest within MATCH_MARGIN of the score sum's joint accuracy (None when
    no candidate comes that close)."""

    budget: AMDMSettings
    match: AMDMSettings | None


def choose_presets(candidates: Sequence[RowSummary], reference: RowSummary) -> Presets:
    """The rule that chooses AMDM's settings, on the means over the ecosystems given."""
    budget = [s for s in candidates if s.evaluations_per_image <= BUDGET_SHARE * reference.evaluations_per_image]
    if not budget:
        raise RuntimeError("no candidate setting fits the evaluation budget")
    matching = [s for s in candidates if s.joint.mean >= reference.joint.mean - MATCH_MARGIN]
    match = min(matching, key=lambda s: (s.evaluations_per_image, -s.joint.mean)) if matching else None
    return Presets(best_within(budget).row.amdm, None if match is None else match.row.amdm)


def choose_handoff(candidates: Sequence[RowSummary]) -> Handoff:
    """The rule that chooses how the noise-level experts hand over, on the means over the
    ecosystems given: among the hard switch and the overlaps, the highest joint accuracy;
    within TIE of it, the fewest evaluations (so an overlap must beat the hard switch by
    more than TIE to be chosen)."""
    return best_within(candidates).row.handoff


def matches_in_every_ecosystem(summary: RowSummary, reference: RowSummary) -> bool:
    """The goal: within MATCH_MARGIN of the score sum's joint accuracy on every ecosystem,
    at no more than BUDGET_SHARE of its evaluations."""
    close = all(value >= ref - MATCH_MARGIN for value, ref in zip(summary.joint.per_ecosystem,
                                                                   reference.joint.per_ecosystem))
    return close and summary.evaluations_per_image <= BUDGET_SHARE * reference.evaluations_per_image
