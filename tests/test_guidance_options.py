"""AggregationSchedule's `guidance` option: 'averaged' blends the members' classifier-free
guidance with the latents; 'full' scales every member's CFG inside the window so that the
merge carries each member's whole guidance, as a sum of the members' guidance would.

Core properties on plain tensors, then the option end to end through the pack's nodes and
ComfyUI's KSampler on the toy ecosystem's trained models (tiny UNets, fast on a CPU).
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

from support import comfy_env
from support.comfy_env import run_node

# The toy ecosystem lives in the repository's benchmarks package; appended (not prepended)
# so that ComfyUI's top-level `nodes` keeps precedence over the repository's `nodes/`.
if str(comfy_env.REPO_ROOT) not in sys.path:
    sys.path.append(str(comfy_env.REPO_ROOT))

STEPS = 6
SEED = 77
CFG = 4.0


@pytest.fixture(scope="module")
def core(pack):
    from comfyui_amdm import amdm_core
    return amdm_core


def cfg_blend(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """ComfyUI's CFG: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (0.5, 3.0)])
def test_full_guidance_merges_to_the_sum_of_the_members_guidance(core, weights):
    """Members sharing the unconditional prediction (fine-tunes of one base): the linear
    merge of their CFG results at the compensated scales is the unconditional prediction
    plus each member's guidance at its own scale, the largest weight's in full and the
    others' in proportion to their weight. 'averaged' keeps only a share of each."""
    generator = torch.Generator().manual_seed(0)
    uncond = torch.randn(2, 4, 8, 8, generator=generator)
    conds = [torch.randn(2, 4, 8, 8, generator=generator) for _ in weights]
    scales = [CFG + index for index in range(len(weights))]
    weight_tensor = torch.tensor(weights)
    expected = uncond + sum(s * (w / max(weights)) * (c - uncond) for s, w, c in zip(scales, weights, conds))
    (factor,) = core.guidance_factors(weight_tensor.unsqueeze(0), "linear", "full")
    assert factor.item() == pytest.approx(sum(weights) / max(weights))
    merged = core.aggregate(torch.stack([cfg_blend(uncond, c, core.compensated_cfg(s, factor.item()))
                                         for c, s in zip(conds, scales)]), weight_tensor, "linear")
    assert torch.allclose(merged, expected, atol=1e-4)
    (unchanged,) = core.guidance_factors(weight_tensor.unsqueeze(0), "linear", "averaged")
    averaged = core.aggregate(torch.stack([cfg_blend(uncond, c, s) for c, s in zip(conds, scales)]),
                              weight_tensor, "linear")
    assert unchanged.item() == 1.0
    assert (averaged - expected).abs().max() > 0.5


def test_factors_follow_the_aggregation_and_the_weight_curve(core):
    """1 / (largest coefficient) per window step: N for N equal members, sqrt(N) for
    'paper' (unit-norm coefficients); a decaying curve takes it down towards 1 as the
    other members fade out."""
    equal = torch.ones(1, 3)
    assert core.guidance_factors(equal, "linear", "full").item() == pytest.approx(3.0)
    assert core.guidance_factors(equal, "slerp", "full").item() == pytest.approx(3.0)
    assert core.guidance_factors(equal, "paper", "full").item() == pytest.approx(math.sqrt(3.0))
    window = [core.Span(range(4), (0, 1, 2))]
    [plan] = core.window_plans(window, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 0,
                               core.Schedule(weight_curve="linear_decay")).values()
    decaying = plan.weights
    factors = core.guidance_factors(decaying, "linear", "full")
    assert factors.tolist() == pytest.approx([3.0, 2.5, 2.0, 1.5])
    assert core.guidance_factors(decaying, "linear", "averaged").tolist() == [1.0] * 4


def test_a_member_without_guidance_keeps_cfg_one(core):
    assert core.compensated_cfg(1.0, 3.0) == 1.0
    assert core.compensated_cfg(2.5, 3.0) == pytest.approx(7.5)


def test_schedule_names_a_bad_guidance_value(core):
    with pytest.raises(ValueError, match="guidance must be one of averaged, full"):
        core.Schedule(guidance="double")
    assert run_node("AggregationSchedule", **{**core.Schedule().__dict__, "guidance": "full"})[0].guidance == "full"


@pytest.fixture(scope="module")
def toy(pack):
    """Members of the first shipped toy ecosystem (tiny UNets, real ComfyUI MODELs) and a
    batch of its requests as conditioning."""
    from benchmarks.toy_ecosystem import models, task
    from benchmarks.toy_ecosystem.methods import Batch

    batch = Batch(task.benchmark_requests(6), seed=SEED)
    return models.load_ecosystem(3), batch.positive(), batch.negative(), batch.empty_latent()


def ksampler(toy, model, cfg: float) -> torch.Tensor:
    _, positive, negative, latent = toy
    return run_node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler",
                    scheduler="normal", positive=positive, negative=negative, latent_image=latent,
                    denoise=1.0)[0]["samples"]


def amdm_sampler(toy, stack, schedule) -> torch.Tensor:
    latent = toy[3]
    return run_node("AMDMSampler", stack=tuple(stack), seed=SEED, steps=STEPS, sampler_name="euler",
                    scheduler="normal", latent_image=latent, denoise=1.0, schedule=schedule)[0]["samples"]


def test_identical_members_with_full_guidance_sample_at_n_times_the_cfg(core, toy):
    """Two identical members over the whole window: 'averaged' is plain sampling at the
    members' cfg, 'full' is plain sampling at twice it (the sum of two equal guidances)."""
    from comfyui_amdm.nodes import Member

    ecosystem, positive, negative, _ = toy
    model = ecosystem.members["shape"]
    member = Member(model, positive, negative, CFG)
    for guidance, cfg in (("averaged", CFG), ("full", 2 * CFG)):
        schedule = core.Schedule(end_percent=1.0, noise_mode="shared", aggregation="linear", guidance=guidance)
        out = amdm_sampler(toy, [member, member], schedule)
        assert (out - ksampler(toy, model, cfg)).abs().max() <= 1e-4, guidance
    assert (ksampler(toy, model, 2 * CFG) - ksampler(toy, model, CFG)).abs().max() > 0.1


def test_full_guidance_scales_each_member_inside_the_window_only(core, toy):
    """The CFG scale of every evaluation, recorded by a post-CFG hook on each member's
    model, and the UNet rows it took: x3 for three equal members inside the window, the
    target's own scale after it, and a member at cfg 1 left at 1 (cond only, one row)."""
    from comfyui_amdm.nodes import Member

    ecosystem, positive, negative, latent = toy
    images = latent["samples"].shape[0]
    scales: dict[str, list[float]] = {}
    rows: dict[str, int] = {}

    def recorded(name):
        log = scales.setdefault(name, [])
        rows[name] = 0
        watched = ecosystem.members[name].clone()

        def hook(args):
            log.append(float(args["cond_scale"]))
            return args["denoised"]

        def count(apply_model, args):
            rows[name] += args["input"].shape[0] // images
            return apply_model(args["input"], args["timestep"], **args["c"])
        watched.set_model_sampler_post_cfg_function(hook)
        watched.set_model_unet_function_wrapper(count)
        return watched

    members = [Member(recorded("shape"), positive, negative, CFG),
               Member(recorded("position"), positive, negative, 2.0),
               Member(recorded("colour"), positive, negative, 1.0)]
    out = amdm_sampler(toy, members, core.Schedule(end_percent=0.5, guidance="full", noise_mode="shared"))
    assert torch.isfinite(out).all()
    window = len(scales["position"])
    assert 0 < window < STEPS
    assert scales["shape"] == pytest.approx([3 * CFG] * window + [CFG] * (STEPS - window))
    assert scales["position"] == pytest.approx([6.0] * window)
    assert scales["colour"] == pytest.approx([1.0] * window)
    assert rows == {"shape": 2 * STEPS, "position": 2 * window, "colour": window}
