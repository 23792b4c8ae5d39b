"""The toy ecosystem benchmark: its detectors against exact ground truth, and a short run
of the benchmark itself through ComfyUI's and the pack's nodes.

The short run uses the quick training plan (weights cached under
${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/toy_ecosystem/, trained on first use in about
a minute) and checks what must hold whatever the exact numbers: members beat chance on
their own aspect, evaluation counts match ComfyUI's actual UNet calls, AMDM latents are
finite and realistic within bounds, the outputs are written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from support import comfy_env

# The benchmark package lives at the repository root; appended (not prepended) so that
# ComfyUI's top-level `nodes` keeps precedence over the repository's `nodes/`.
if str(comfy_env.REPO_ROOT) not in sys.path:
    sys.path.append(str(comfy_env.REPO_ROOT))

from benchmarks.toy_ecosystem import task  # noqa: E402

STEPS = 10
REQUESTS = 12
SEEDS = 2
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


@pytest.fixture(scope="module")
def quick_run(pack):
    """The quick plan's ecosystem and a short benchmark run over it."""
    import comfy.utils

    from benchmarks.toy_ecosystem import benchmark, models
    from benchmarks.toy_ecosystem.methods import SamplingSettings

    threads = torch.get_num_threads()
    progress_bar = comfy.utils.PROGRESS_BAR_ENABLED
    torch.set_num_threads(1)
    comfy.utils.set_progress_bar_enabled(False)
    try:
        ecosystem = models.load_ecosystem(models.QUICK_TRAINING)
        config = benchmark.BenchmarkConfig(requests=REQUESTS, seeds=SEEDS, sampling=SamplingSettings(steps=STEPS),
                                           quick=True)
        results = benchmark.run_benchmark(ecosystem, config)
    finally:
        torch.set_num_threads(threads)
        comfy.utils.set_progress_bar_enabled(progress_bar)
    return ecosystem, config, {result.name: result for result in results}


def test_each_member_alone_beats_chance_on_its_own_aspect(quick_run) -> None:
    _, _, results = quick_run
    for member in ("position", "colour", "shape"):
        accuracy = results[f"{member} member"].scores.accuracy[member]
        assert accuracy > CHANCE[member] + 0.2, (member, accuracy)


def window_length(model, settings, start_percent: float, end_percent: float) -> int:
    """Steps k with sigma_end < sigmas[k] <= sigma_start: the spec's window, from ComfyUI's
    own sigmas and percent_to_sigma."""
    import comfy.samplers

    sigmas = comfy.samplers.KSampler(model, steps=settings.steps, device="cpu", sampler=settings.sampler_name,
                                     scheduler=settings.scheduler).sigmas
    model_sampling = model.get_model_object("model_sampling")
    sigma_start = model_sampling.percent_to_sigma(start_percent)
    sigma_end = model_sampling.percent_to_sigma(end_percent)
    return sum(1 for sigma in sigmas[:-1].tolist() if sigma_end < sigma <= sigma_start)


def test_model_evaluations_are_counted_per_row(quick_run) -> None:
    """The counting wrapper sees what the sampler really evaluates: 2 rows (cond, uncond)
    per model per step; AMDM adds the other members' steps inside the window only."""
    ecosystem, config, results = quick_run
    alone = 2 * STEPS
    assert results["position member"].evaluations_per_image == alone
    assert results["weight merge (ModelMergeSimple, equal thirds)"].evaluations_per_image == alone
    assert results["score sum (every member every step)"].evaluations_per_image == 3 * alone
    for name, result in results.items():
        if result.amdm is None:
            continue
        window = window_length(ecosystem.members["shape"], config.sampling, result.amdm.start_percent,
                               result.amdm.end_percent)
        assert 0 < window < STEPS, name
        assert result.evaluations_per_image == alone + 2 * 2 * window, name


def test_amdm_rows_are_finite_and_within_realism_bounds(quick_run) -> None:
    _, config, results = quick_run
    amdm_rows = [result for result in results.values() if result.amdm is not None]
    assert {result.amdm.aggregation for result in amdm_rows} == {"linear", "slerp", "paper"}
    for result in amdm_rows:
        assert torch.isfinite(result.latents).all(), result.name
        assert result.latents.shape == (REQUESTS * SEEDS, task.CHANNELS, task.GRID, task.GRID)
        if result.amdm.aggregation != "paper":  # paper weights may inflate the latent: reported, not bounded
            assert result.scores.realism < 0.6, (result.name, result.scores.realism)


def test_counter_agrees_with_unet_forward_calls(quick_run) -> None:
    """Cross-check of the wrapper count against a forward hook on the UNet itself."""
    from benchmarks.toy_ecosystem.methods import AMDMSettings, Batch, EvaluationCounter, SamplingSettings, sample_amdm

    ecosystem, _, _ = quick_run
    counter = EvaluationCounter()
    forward_rows = []
    hooks = [model.model.diffusion_model.register_forward_pre_hook(lambda module, args: forward_rows.append(args[0].shape[0]))
             for model in ecosystem.members.values()]
    try:
        models = [counter.counted(model) for model in ecosystem.members.values()]
        batch = Batch(task.benchmark_requests(4), seed=7)
        latents = sample_amdm(models, AMDMSettings(end_percent=0.5, target_member=3), batch, SamplingSettings(steps=6))
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(latents).all()
    assert counter.rows == sum(forward_rows) == 4 * 2 * (6 + 2 * 3)


def test_outputs_are_written(quick_run, tmp_path: Path) -> None:
    from benchmarks.toy_ecosystem import benchmark

    ecosystem, config, results = quick_run
    text, table_path, grid_path = benchmark.write_outputs(list(results.values()), config, ecosystem, tmp_path,
                                                          {"sampling": 1.0})
    assert table_path.read_text() == text
    assert "| AMDM modes | AMDM linear" in text and "## What the numbers say" in text
    from PIL import Image

    with Image.open(grid_path) as grid:
        assert grid.height == (len(results) + 1) * (task.GRID * 6 + 2)
