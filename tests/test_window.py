"""The window rule holds exactly as documented, for every family, scheduler and denoise.

Rule (amdm_core.schedule): step k is in the window when start <= progress(k) < end and
start_step <= k < end_step, where progress(k) is the percent whose sigma is sigma_k in the
model's own percent_to_sigma; progress within PROGRESS_TIE of a boundary is on it (a step
on the start is in, a step on the end is out); end 1 reaches the last step.

Here progress is computed independently, in double precision, by bisection on the real
model_sampling of each family (ComfyUI's ModelSampling nodes on a fixture model), and the
window the pack computes must equal the rule's on every case.
"""
from __future__ import annotations

import itertools
import logging
import math

import comfy.samplers
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import amdm, amdm_sampler, ksampler, model_a, model_b, prompts  # noqa: F401

SCHEDULERS = comfy.samplers.KSampler.SCHEDULERS
STEP_COUNTS = (1, 2, 3, 6, 10, 25)
DENOISES = (1.0, 0.75, 0.5, 0.3)
# Boundaries on step grids (exact ties) and off them.
PERCENTS = (0.0, 0.1, 0.25, 1 / 3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)


def _families(model) -> dict:
    """Real model_sampling objects of the families AMDM supports, through ComfyUI's nodes."""
    def patched(node, **inputs):
        return run_node(node, model=model, **inputs)[0].get_model_object("model_sampling")

    return {
        "SD1.x/SDXL eps": model.get_model_object("model_sampling"),
        "SDXL v-prediction zsnr": patched("ModelSamplingDiscrete", sampling="v_prediction",
                                          zsnr=True),
        "SD3 (shift 3)": patched("ModelSamplingSD3", shift=3.0),
        "Wan 2.1 (shift 8)": patched("ModelSamplingSD3", shift=8.0),
        "Flux dev": patched("ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=1024,
                            height=1024),
        "EDM (Playground)": patched("ModelSamplingContinuousEDM", sampling="edm",
                                    sigma_max=80.0, sigma_min=0.002),
    }


@pytest.fixture(scope="module")
def families(model_a):
    return _families(model_a)


def _progress(sigma: float, percent_to_sigma) -> float:
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        if percent_to_sigma(middle) > sigma:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _rule(progress: list[float], start: float, end: float, start_step: int, end_step: int,
          tie: float) -> range:
    n = len(progress)
    last = n if end_step == 0 else min(end_step, n)
    inside = [start - tie <= p and (end >= 1.0 or p < end - tie) and start_step <= k < last
              for k, p in enumerate(progress)]
    if True not in inside:
        return range(n, n)
    first = inside.index(True)
    stop = first
    while stop < n and inside[stop]:
        stop += 1
    return range(first, stop)


def _sigmas(model, model_sampling, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    if denoise >= 1.0:
        return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
    total = int(steps / denoise)
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()[-(steps + 1):]


def test_the_window_is_the_documented_rule_for_every_family_and_scheduler(pack, families,
                                                                          model_a):
    from comfyui_amdm.amdm_core import Schedule, steps_in
    from comfyui_amdm.amdm_core.schedule import PROGRESS_TIE
    checked, mismatches, unrunnable = 0, [], 0
    for (family, model_sampling), scheduler, steps, denoise in itertools.product(
            families.items(), SCHEDULERS, STEP_COUNTS, DENOISES):
        sigmas = _sigmas(model_a, model_sampling, scheduler, steps, denoise).tolist()
        if not all(math.isfinite(sigma) for sigma in sigmas):
            unrunnable += 1  # kl_optimal with 1 step: ComfyUI's own sigmas are NaN
            continue
        progress = [_progress(s, model_sampling.percent_to_sigma) for s in sigmas[:-1]]
        windows = [(a, b, 0, 0) for a, b in itertools.combinations(PERCENTS, 2)]
        windows += [(0.0, 1.0, 1, 0), (0.0, 0.5, 0, 2), (0.2, 1.0, 2, steps + 2)]
        for start, end, start_step, end_step in windows:
            schedule = Schedule(start_percent=start, end_percent=end, start_step=start_step,
                                end_step=end_step)
            got = steps_in(sigmas, model_sampling.percent_to_sigma, schedule.window)
            expected = _rule(progress, start, end, start_step, end_step, PROGRESS_TIE)
            checked += 1
            if got != expected:
                mismatches.append((family, scheduler, steps, denoise, start, end, start_step,
                                   end_step, got, expected))
    assert checked > 20000 and unrunnable <= 2 * len(families)
    assert mismatches == [], f"{len(mismatches)} of {checked}, e.g. {mismatches[:3]}"


@pytest.mark.parametrize("family, scheduler, steps, start, end, expected", [
    ("Flux dev", "simple", 6, 0.0, 0.5, range(0, 3)),
    ("Flux dev", "simple", 6, 0.5, 1.0, range(3, 6)),
    ("SD3 (shift 3)", "simple", 10, 0.0, 0.3, range(0, 3)),
    ("Wan 2.1 (shift 8)", "simple", 4, 0.25, 0.75, range(1, 3)),
])
def test_a_step_on_a_boundary_belongs_to_the_window_that_starts_there(pack, families,
                                                                       model_a, family,
                                                                       scheduler, steps, start,
                                                                       end, expected):
    from comfyui_amdm.amdm_core import Schedule, steps_in
    model_sampling = families[family]
    sigmas = _sigmas(model_a, model_sampling, scheduler, steps, 1.0).tolist()
    window = steps_in(sigmas, model_sampling.percent_to_sigma,
                      Schedule(start_percent=start, end_percent=end).window)
    assert window == expected


def test_the_guider_uses_the_rule_on_the_targets_model_sampling(amdm, families, model_a,
                                                                model_b, prompts):
    """The guider's window is steps_in on the target's own model_sampling, with the
    sigmas the sampler runs on: checked by which steps the other member is evaluated at."""
    from support.sampling import EvaluationLog
    Member, Schedule = amdm
    flow_a = run_node("ModelSamplingSD3", model=model_a, shift=3.0)[0]
    flow_b = run_node("ModelSamplingSD3", model=model_b, shift=3.0)[0]
    log = EvaluationLog()
    members = [Member(flow_a, prompts["red"], prompts["empty"], 5.0),
               Member(log.watch(flow_b, "b"), prompts["blue"], prompts["empty"], 5.0)]
    amdm_sampler(members, Schedule(end_percent=0.3), "euler", steps=10, scheduler="simple")
    sigmas = comfy.samplers.calculate_sigmas(families["SD3 (shift 3)"], "simple", 10).tolist()
    assert log.sigmas["b"] == pytest.approx(sigmas[:3], rel=1e-5)


def test_denoise_below_one_keeps_the_window_absolute_and_says_so(amdm, model_a, model_b,
                                                                  prompts, caplog):
    """With denoise 0.5 the run starts at progress 0.5: the default window (0 to 0.4) holds
    no step, the target samples alone, and a warning says why; a window reaching past 0.5
    aggregates the same run."""
    Member, Schedule = amdm
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.manual_seed(2))}
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    alone = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler", latent=latent,
                     steps=10, denoise=0.5)
    with caplog.at_level(logging.WARNING):
        empty = amdm_sampler(members, Schedule(end_percent=0.4), "euler", latent=latent,
                             steps=10, denoise=0.5)
    assert torch.equal(empty, alone)
    assert "holds none of this run's steps" in caplog.text
    assert "denoise < 1 starts late" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        aggregated = amdm_sampler(members, Schedule(end_percent=0.7), "euler", latent=latent,
                                  steps=10, denoise=0.5)
    assert "holds none" not in caplog.text
    assert not torch.allclose(aggregated, alone)
