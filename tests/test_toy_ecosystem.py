"""The toy ecosystem study: its detectors against exact ground truth, the rule that chooses
AMDM's presets, the shipped and retrained weights (members and noise-level experts), and a
short run of the study itself through ComfyUI's and the pack's nodes on two shipped
ecosystems.

The short run checks what must hold whatever the exact numbers: members beat chance on
their own aspect, the budget preset brings the aspects together far beyond any member
alone, evaluation counts match ComfyUI's actual UNet calls, AMDM latents are finite, the
experts' hard switch through the pack's member ranges is the KSamplerAdvanced chain bit for
bit, the outputs are written in the documented schema.
"""

from __future__ import annotations

import sys
import json
from pathlib import Path

import pytest
import torch

from support import comfy_env

# The benchmark package lives at the repository root; appended (not prepended) so that
# ComfyUI's top-level `nodes` keeps precedence over the repository's `nodes/`.
if str(comfy_env.REPO_ROOT) not in sys.path:
    sys.path.append(str(comfy_env.REPO_ROOT))

from benchmarks.toy_ecosystem import task  # noqa: E402

REQUESTS = 12
ECOSYSTEMS = (2, 3)
CHANCE = {"position": 0.25, "colour": 0.25, "shape": 1 / 3}


def labels_of(requests: list[task.Request], aspect: str) -> torch.Tensor:
    return torch.tensor([request.label(aspect) for request in requests])


def test_detectors_read_every_clean_render_exactly() -> None:
    requests = task.all_requests()
    renders = task.render_all(requests)
    assert len(requests) == 48
    for aspect, detector in task.DETECTORS.items():
        assert torch.equal(detector(renders), labels_of(requests, aspect)), aspect
    assert torch.equal(task.realism_distance(renders), torch.zeros(48))


def test_detectors_survive_small_noise_and_scale() -> None:
    """Sampled latents are never exact: a render at 70 % amplitude under noise of 0.15
    must still read as itself, and be scored as off the manifold by about that much."""
    requests = task.all_requests()
    generator = torch.Generator().manual_seed(0)
    noisy = 0.7 * task.render_all(requests) + 0.15 * torch.randn(48, task.CHANNELS, task.GRID, task.GRID,
                                                                   generator=generator)
    for aspect, detector in task.DETECTORS.items():
        assert (detector(noisy) == labels_of(requests, aspect)).float().mean() >= 0.95, aspect
    distance = task.realism_distance(noisy)
    assert 0.1 < distance.mean() < 0.3


def test_realism_scale_of_reference_latents() -> None:
    empty = torch.zeros(1, task.CHANNELS, task.GRID, task.GRID)
    assert task.realism_distance(empty).item() == pytest.approx(0.2795, abs=1e-3)
    noise = torch.randn(4, task.CHANNELS, task.GRID, task.GRID, generator=torch.Generator().manual_seed(1))
    assert (task.realism_distance(noise) > 0.9).all()


def test_benchmark_requests_are_balanced_and_distinct() -> None:
    requests = task.benchmark_requests(REQUESTS)
    assert len(set(requests)) == REQUESTS
    for aspect, count in task.LABEL_COUNTS.items():
        assert torch.bincount(labels_of(requests, aspect), minlength=count).tolist() == [REQUESTS // count] * count
    assert len(set(task.benchmark_requests(48))) == 48


def test_request_context_carries_every_label() -> None:
    requests = task.all_requests()
    context = task.encode_requests(requests)
    assert context.shape == (48, task.CONTEXT_TOKENS, task.CONTEXT_DIM)
    for token, aspect in enumerate(task.ASPECTS):
        decoded = context[:, token].argmax(dim=1) - task.CONTEXT_OFFSETS[aspect]
        assert torch.equal(decoded, labels_of(requests, aspect))
    assert not task.empty_context().any()


def fake_summary(name: str, evaluations: float, joint: tuple[float, ...], amdm=None):
    """A RowSummary with given numbers, for the selection rule."""
    from benchmarks.toy_ecosystem import study
    from benchmarks.toy_ecosystem.rows import Row

    metrics = {metric: study.statistic([0.0] * len(joint)) for metric in study.METRICS}
    metrics["joint"] = study.statistic(joint)
    return study.RowSummary(Row("test", name, (), lambda ecosystem, counter: None, amdm), task.ASPECTS,
                            evaluations, metrics, ())


def test_presets_rule_takes_the_cheapest_of_the_tied_best_within_budget(pack) -> None:
    from benchmarks.toy_ecosystem import study
    from benchmarks.toy_ecosystem.methods import AMDMSettings

    settings = [AMDMSettings(end_percent=end) for end in (0.2, 0.4, 0.6, 0.8)]
    reference = fake_summary("score sum", 120, (0.80, 0.78))
    candidates = [fake_summary("a", 56, (0.50, 0.52), settings[0]), fake_summary("b", 72, (0.70, 0.66), settings[1]),
                  fake_summary("c", 64, (0.69, 0.66), settings[2]), fake_summary("d", 104, (0.78, 0.80), settings[3])]
    presets = study.choose_presets(candidates, reference)
    assert presets.budget == settings[2]  # within TIE of the best under 72 evaluations, and cheaper
    assert presets.match == settings[3]
    assert study.choose_presets(candidates[:3], reference).match is None
    assert not study.matches_in_every_ecosystem(candidates[3], reference)  # over budget
    close = fake_summary("e", 72, (0.79, 0.77))
    assert study.matches_in_every_ecosystem(close, reference)
    assert not study.matches_in_every_ecosystem(fake_summary("f", 72, (0.85, 0.75)), reference)
    assert reference.joint.mean == pytest.approx(0.79)
    assert reference.joint.standard_error == pytest.approx(0.01)


def model_weights(ecosystem) -> dict:
    return {name: model.model.diffusion_model.state_dict()
            for name, model in {"base": ecosystem.base, **ecosystem.members, **ecosystem.experts}.items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, state in a.items():
        for key, value in state.items():
            assert torch.equal(value, b[name][key]), (name, key)


def test_retraining_is_deterministic_and_ships_what_it_trained(pack, tmp_path, monkeypatch) -> None:
    """A few training steps (the mechanics, not the quality): retraining from scratch gives
    the same weights, members and noise-level experts alike, the shipped copy loads to the
    same models, and weights of another plan are refused with a way out."""
    from benchmarks.toy_ecosystem import models

    plan = models.TrainingPlan(base_steps=2, member_steps=(("position", 1), ("colour", 1), ("shape", 2)), batch_size=4)
    experts = models.ExpertPlan(steps=((models.HIGH_NOISE, 2), (models.LOW_NOISE, 1)))
    monkeypatch.setenv("COMFYUI_AMDM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "shipped")

    first = model_weights(models.load_ecosystem(7, retrain=True, plan=plan, experts=experts))
    cached = models.cache_root()
    for path in cached.rglob("*.safetensors"):
        path.unlink()
    retrained = models.load_ecosystem(7, retrain=True, plan=plan, experts=experts)
    shipped_to = models.ship_weights(retrained)
    assert_same_weights(model_weights(retrained), first)
    assert_same_weights(model_weights(models.load_ecosystem(7, plan=plan, experts=experts)), first)
    for name in ("shape", *models.EXPERTS):
        assert any(not torch.equal(value, first["base"][key]) for key, value in first[name].items()), name
    with pytest.raises(RuntimeError, match="another training plan.*--retrain"):
        models.load_ecosystem(7)
    with pytest.raises(RuntimeError, match="no shipped weights for toy ecosystem 8"):
        models.load_ecosystem(8)
    assert sorted(path.name for path in shipped_to.iterdir()) == sorted(
        f"{name}.safetensors" for name in models.MODEL_NAMES)


def test_expert_training_is_deterministic_from_the_shipped_base(pack, tmp_path, monkeypatch) -> None:
    """--retrain-experts: two trainings of a few steps from one shipped base give identical
    experts, which start from that base (the shipped float16 weights) and leave the
    shipped base and members as they are."""
    from benchmarks.toy_ecosystem import models

    experts = models.ExpertPlan(steps=((models.HIGH_NOISE, 3), (models.LOW_NOISE, 2)))
    monkeypatch.setenv("COMFYUI_AMDM_CACHE", str(tmp_path / "cache"))
    trained = [model_weights(models.load_ecosystem(2, experts=experts, retrain_experts=True))]
    for path in models.cache_root().rglob("*.safetensors"):
        path.unlink()
    trained.append(model_weights(models.load_ecosystem(2, experts=experts, retrain_experts=True)))
    assert_same_weights(*trained)
    shipped = model_weights(models.load_ecosystem(2))
    for name in ("base", *models.MEMBER_ASPECTS):
        assert_same_weights({name: trained[0][name]}, {name: shipped[name]})
    for name in models.EXPERTS:
        assert any(not torch.equal(value, shipped[name][key]) for key, value in trained[0][name].items()), name
        # a few steps at a small learning rate stay near their start: the shipped base
        change = max((value - shipped["base"][key]).abs().max().item() for key, value in trained[0][name].items())
        assert 0 < change < 0.05, name


def test_experts_split_the_noise_levels_where_wan_splits_them(pack) -> None:
    """The boundary: noise 7 times the signal (Wan 2.2's sigma 0.875 on unit-variance
    latents) for the toy's clean latents; the experts' training timesteps split there; at
    20 normal steps the pack's member ranges give the high-noise expert steps 0 to 7."""
    from benchmarks.toy_ecosystem import methods, models, rows

    model_sampling = models.toy_model_sampling()
    experts = models.ExpertPlan()
    data_rms = task.render_all(task.all_requests()).square().mean().sqrt().item()
    boundary_sigma = model_sampling.percent_to_sigma(experts.boundary_percent)
    assert boundary_sigma == pytest.approx(0.875 / 0.125 * data_rms, rel=0.01)
    timesteps = models.expert_timesteps(model_sampling, experts)
    high, low = timesteps[models.HIGH_NOISE], timesteps[models.LOW_NOISE]
    assert low.start == 0 and low.stop == high.start and high.stop == len(model_sampling.sigmas)
    assert model_sampling.sigmas[high.start] > boundary_sigma >= model_sampling.sigmas[low.stop - 1]
    assert rows.expert_steps(0.0) == (range(0, 8), range(8, 20))
    assert rows.expert_steps(0.2) == (range(0, 10), range(6, 20))
    assert rows.boundary_step(methods.SamplingSettings(steps=12)) == 5


def test_the_shipped_ecosystems_are_a_few_megabytes_each(pack) -> None:
    from benchmarks import toy_ecosystem
    from benchmarks.toy_ecosystem import models

    for seed in (*toy_ecosystem.DEVELOPMENT_SEEDS, *toy_ecosystem.REPORT_SEEDS):
        files = list(models.shipped_dir(seed).glob("*.safetensors"))
        assert len(files) == len(models.MODEL_NAMES), seed
        assert sum(path.stat().st_size for path in files) < 6e6, seed


@pytest.fixture(scope="module")
def short_study(pack):
    """A few rows of both tables on two shipped ecosystems, 12 images each."""
    import comfy.utils

    from benchmarks.toy_ecosystem import models, rows, run, study
    from dataclasses import replace

    threads = torch.get_num_threads()
    progress_bar = comfy.utils.PROGRESS_BAR_ENABLED
    torch.set_num_threads(1)
    comfy.utils.set_progress_bar_enabled(False)
    full = replace(rows.default_amdm(), guidance="full")
    three = [rows.alone_row(name) for name in rows.MEMBERS]
    three += [rows.score_sum_row(rows.MEMBERS, rows.TARGET), rows.merge_row(),
              rows.amdm_row("AMDM modes", replace(full, guidance="averaged")),
              rows.amdm_row("AMDM window", replace(full, end_percent=0.6)),
              rows.amdm_row("AMDM preset", rows.BUDGET_PRESET)]
    two = [rows.alone_row("colour"), *rows.two_member_rows(rows.BUDGET_PRESET)[4:5]]
    overlap = rows.Handoff(0.2, "ranges", "slerp", "independent")
    handoff = [rows.expert_handoff_row("baseline", rows.Handoff(0.0, "chain")),
               rows.expert_handoff_row("handoff", rows.Handoff(0.0, "ranges")),
               rows.expert_handoff_row("handoff", overlap),
               rows.expert_handoff_row("handoff", replace(overlap, noise_mode="shared"))]
    config = study.StudyConfig(requests=REQUESTS, seeds=1)
    try:
        ecosystems = [models.load_ecosystem(seed) for seed in ECOSYSTEMS]
        tables = study.run_tables({"three": study.Table(three, ecosystems, task.ASPECTS),
                                   "two": study.Table(two, ecosystems, rows.PAIR),
                                   "handoff": study.Table(handoff, ecosystems, task.ASPECTS)}, config)
    finally:
        torch.set_num_threads(threads)
        comfy.utils.set_progress_bar_enabled(progress_bar)
    outcome = run.Outcome(tables["three"], tables["two"], study.Presets(rows.BUDGET_PRESET, None), ECOSYSTEMS,
                          tables["handoff"], overlap)
    return ecosystems, config, outcome


def test_each_member_alone_beats_chance_on_its_own_aspect(short_study) -> None:
    _, _, outcome = short_study
    for summary in outcome.three_members[:3]:
        (member,) = summary.row.members
        accuracy = summary.metrics[member]
        assert min(accuracy.per_ecosystem) > CHANCE[member] + 0.3, (member, accuracy)


def test_aggregation_brings_the_members_aspects_together(short_study) -> None:
    """What AMDM is for: each member alone is right on its own aspect only, so its joint
    accuracy is low; the budget preset's is far above every member's, in each ecosystem."""
    _, _, outcome = short_study
    preset = next(summary for summary in outcome.three_members if summary.row.group == "AMDM preset")
    for alone in outcome.three_members[:3]:
        for together, single in zip(preset.joint.per_ecosystem, alone.joint.per_ecosystem):
            assert together > single + 0.3, (alone.row.name, preset.joint, alone.joint)


def window_length(model, steps: int, start_percent: float, end_percent: float) -> int:
    """Steps k with sigma_end < sigmas[k] <= sigma_start: the spec's window, from ComfyUI's
    own sigmas and percent_to_sigma."""
    import comfy.samplers

    sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler="euler", scheduler="normal").sigmas
    model_sampling = model.get_model_object("model_sampling")
    sigma_start = model_sampling.percent_to_sigma(start_percent)
    sigma_end = model_sampling.percent_to_sigma(end_percent)
    return sum(1 for sigma in sigmas[:-1].tolist() if sigma_end < sigma <= sigma_start)


def test_model_evaluations_are_counted_per_row(short_study) -> None:
    """The counting wrapper sees what the sampler really evaluates: 2 rows (cond, uncond)
    per model per step; AMDM adds the other members' steps inside the window only, at
    its own step count."""
    from benchmarks.toy_ecosystem import rows

    ecosystems, _, outcome = short_study
    alone = 2 * rows.SETTINGS.steps
    by_name = {summary.row.name: summary for summary in outcome.three_members + outcome.two_members}
    assert by_name["position member"].evaluations_per_image == alone
    assert by_name["weight merge (ModelMergeSimple, equal thirds)"].evaluations_per_image == alone
    assert by_name[rows.SCORE_SUM].evaluations_per_image == 3 * alone
    for summary in by_name.values():
        if summary.row.amdm is None:
            continue
        amdm = summary.row.amdm
        window = window_length(ecosystems[0].members["shape"], amdm.steps, amdm.start_percent, amdm.end_percent)
        assert 0 < window < amdm.steps, summary.row.name
        others = len(summary.row.members) - 1
        assert summary.evaluations_per_image == 2 * amdm.steps + 2 * others * window, summary.row.name
        for measurement in summary.measurements:
            assert torch.isfinite(measurement.latents).all(), summary.row.name


def test_expert_hard_switch_through_member_ranges_is_the_ksampleradvanced_chain(short_study) -> None:
    """Two ModelStack members with ranges touching at the boundary (AMDMExpertBoundary,
    overlap 0) give the latents of the two-stage KSamplerAdvanced chain bit for bit, at its
    evaluations; an overlap of 0.2 runs both experts at its 4 steps, and adds their 4 x 2
    evaluations, and moves the latents."""
    from benchmarks.toy_ecosystem import run

    _, _, outcome = short_study
    summaries = outcome.handoff
    chain, switch = run.hard_switches(summaries)
    assert chain.row.name != switch.row.name
    assert switch.evaluations_per_image == chain.evaluations_per_image == 2 * 20
    for a, b in zip(chain.measurements, switch.measurements):
        assert torch.equal(a.latents, b.latents)
    run.check_hard_switch(summaries, ECOSYSTEMS)
    independent, shared = summaries[2:]
    assert independent.evaluations_per_image == shared.evaluations_per_image == 2 * (20 + 4)
    for a, b, c in zip(switch.measurements, independent.measurements, shared.measurements):
        assert not torch.allclose(a.latents, b.latents, atol=1e-3)
        # only the high-noise expert starts from noise: the noise mode changes nothing
        assert torch.equal(b.latents, c.latents)


def test_counter_agrees_with_unet_forward_calls(short_study) -> None:
    """Cross-check of the wrapper count against a forward hook on the UNet itself."""
    from benchmarks.toy_ecosystem.methods import (AMDMSettings, Batch, EvaluationCounter, SamplingSettings,
                                                  sample_amdm)

    ecosystems, _, _ = short_study
    counter = EvaluationCounter()
    forward_rows = []
    members = ecosystems[0].members.values()
    hooks = [model.model.diffusion_model.register_forward_pre_hook(lambda module, args: forward_rows.append(args[0].shape[0]))
             for model in members]
    try:
        models = [counter.counted(model) for model in members]
        batch = Batch(task.benchmark_requests(4), seed=7)
        latents = sample_amdm(models, AMDMSettings(end_percent=0.5, target_member=3, steps=6), batch,
                              SamplingSettings())
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(latents).all()
    assert counter.rows == sum(forward_rows) == 4 * 2 * (6 + 2 * 3)


def test_outputs_are_written_in_the_documented_schema(short_study, tmp_path: Path) -> None:
    from PIL import Image

    from benchmarks.toy_ecosystem import run

    _, config, outcome = short_study
    paths = run.write_outputs(outcome, config, tmp_path, tmp_path)
    text = paths["markdown"].read_text()
    assert "| AMDM modes | AMDM " in text and "## What the numbers say" in text
    assert "## Handoff between noise-level experts" in text
    result = json.loads(paths["json"].read_text())
    assert result["ecosystem_seeds"] == list(ECOSYSTEMS)
    rows = result["rows"] + result["two_member_rows"]
    assert len(rows) == len(outcome.three_members) + len(outcome.two_members)
    assert sum("score sum" in row["method"] for row in result["rows"]) == 1
    for row in rows:
        assert isinstance(row["evals_per_image"], float)
        for metric in (*task.ASPECTS, "joint", "realism"):
            assert set(row[metric]) >= {"mean", "per_ecosystem"}, metric
            assert len(row[metric]["per_ecosystem"]) == len(ECOSYSTEMS)
    assert all(row["method"].startswith("AMDM") for row in rows if row["group"].startswith("AMDM"))
    for name in ("frontier", "grid"):
        with Image.open(paths[name]) as image:
            assert image.width > 600 and image.height > 300, name
    page = tmp_path / "toy_ecosystem.md"
    page.write_text(f"before\n{run.RESULTS_BEGIN}\nold table\n{run.RESULTS_END}\nafter\n")
    run.replace_between(page, run.RESULTS_BEGIN, run.RESULTS_END, run.results_text(outcome, config, "###"))
    updated = page.read_text()
    assert "old table" not in updated and updated.startswith("before\n") and updated.endswith("after\n")
    assert "### What the numbers say" in updated and "| AMDM modes | AMDM " in updated
    handoff_rows = result["handoff"]["rows"]
    assert result["handoff"]["boundary_step"] == 8 and result["handoff"]["hard_switch_equals_chain"]
    assert result["handoff"]["images_per_ecosystem"] == REQUESTS * config.handoff_seeds
    assert [row["evals_per_image"] for row in handoff_rows] == [40.0, 40.0, 48.0, 48.0]
    assert all(len(row["joint"]["per_ecosystem"]) == len(ECOSYSTEMS) for row in handoff_rows)
    shared = [s.row.name for s in outcome.handoff if s.row.handoff and s.row.handoff.noise_mode == "shared"]
    assert result["handoff"]["shared_noise"] == {"pairs": 1, "identical_latents": shared}
    handoff = run.handoff_text(result, config, "###")
    assert "bit for bit" in handoff and "identical latents" in handoff and "### What this means" in handoff
    assert handoff in text
    with Image.open(paths["handoff"]) as image:
        assert image.width > 600 and image.height > 300


def test_the_results_page_shows_the_committed_results(pack) -> None:
    """docs/toy_ecosystem.md's tables are the main job's: every row of the committed JSON
    appears there with its evaluations, joint accuracy and per-ecosystem values."""
    from benchmarks.toy_ecosystem import run

    page = run.RESULTS_PAGE.read_text(encoding="utf-8")
    block = page[page.index(run.RESULTS_BEGIN):page.index(run.RESULTS_END)]
    result = json.loads((comfy_env.REPO_ROOT / "benchmarks" / "results" / "toy_ecosystem.json").read_text())
    rows = result["rows"] + result["two_member_rows"]
    lines = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        joint = row["joint"]
        assert line.startswith(f"| {row['number']} | {row['group']} | {row['method']} | "
                               f"{row['evals_per_image']:.0f} |"), line
        assert f"**{joint['mean']:.2f}**" in line, line
        assert " / ".join(f"{value:.2f}" for value in joint["per_ecosystem"]) in line, line


def test_the_handoff_page_is_written_from_the_committed_results(pack, tmp_path: Path) -> None:
    """docs/handoff.md's results, its reading included, are what the main job writes from
    the committed JSON: rewriting them from it changes no byte; every handoff row appears with
    its evaluations, joint accuracy and realism, and the reading states the JSON's realism."""
    from benchmarks.toy_ecosystem import run, study

    committed = run.HANDOFF_PAGE.read_text(encoding="utf-8")
    result = json.loads((comfy_env.REPO_ROOT / "benchmarks" / "results" / "toy_ecosystem.json").read_text())
    page = tmp_path / "handoff.md"
    page.write_text(committed[:committed.index(run.HANDOFF_BEGIN)] + f"{run.HANDOFF_BEGIN}\nold results\n"
                    + committed[committed.index(run.HANDOFF_END):], encoding="utf-8")
    run.replace_between(page, run.HANDOFF_BEGIN, run.HANDOFF_END, run.handoff_text(result, study.StudyConfig(), "###"))
    assert page.read_text(encoding="utf-8") == committed

    block = committed[committed.index(run.HANDOFF_BEGIN):committed.index(run.HANDOFF_END)]
    table, reading = block.split("### What this means")
    rows = result["handoff"]["rows"]
    lines = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        assert line.startswith(f"| {row['number']} | {row['group']} | {row['method']} | "
                               f"{row['evals_per_image']:.0f} |"), line
        assert f"**{row['joint']['mean']:.2f}**" in line, line
        assert " / ".join(f"{value:.2f}" for value in row["joint"]["per_ecosystem"]) in line, line
        assert line.endswith(f" | {row['realism']['mean']:.3f} |"), line
    # Every row but the base is at the ceiling in every ecosystem, so the reading rests on realism.
    below = [row["method"] for row in rows if any(value < 1.0 for value in row["joint"]["per_ecosystem"])]
    assert below == ["base (unconditional)"]
    assert "at its ceiling (1.00) for every row but row 1, base (unconditional)" in reading
    switch = next(row for row in rows if row["group"] == "handoff preset")
    assert switch["method"].startswith("hard switch")
    assert f"realism {switch['realism']['mean']:.3f}, per ecosystem " + " / ".join(
        f"{value:.3f}" for value in switch["realism"]["per_ecosystem"]) in reading
    overlaps = [row for row in rows if row["method"].startswith("overlap")]
    assert all(x > y for row in overlaps for x, y in zip(row["realism"]["per_ecosystem"],
                                                         switch["realism"]["per_ecosystem"]))
    assert "**When an overlap helps:** in this study, never" in reading
    for row in overlaps:
        costs = [round(x - y, 3) + 0.0 for x, y in zip(row["realism"]["per_ecosystem"],
                                                       switch["realism"]["per_ecosystem"])]
        low, high = f"{min(costs):+.3f}", f"{max(costs):+.3f}"
        assert (low if low == high else f"{low} to {high}") in reading, row["method"]
    assert "19 candidates" not in committed and "not among the committed results" in reading
