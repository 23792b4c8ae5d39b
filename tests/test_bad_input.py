"""Bad input is a clear error, naming the node input or stack member, before any sampling."""
from __future__ import annotations

import math

import pytest
import torch

from support.comfy_env import run_node


@pytest.fixture(scope="module")
def conds(sd15, encode):
    clip = sd15[1]
    return encode(clip, "a red cube"), encode(clip, "")


@pytest.fixture
def evaluations():
    return []


@pytest.fixture
def counted(sd15, evaluations):
    """The fixture model, counting every UNet evaluation."""
    model = sd15[0].clone()

    def wrapper(apply_model, args):
        evaluations.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])
    model.set_model_unet_function_wrapper(wrapper)
    return model


def stack(*members):
    result = ()
    for model, positive, negative, options in members:
        result = run_node("ModelStack", model=model, positive=positive, negative=negative,
                          cfg=options.get("cfg", 7.0), weight=options.get("weight", 1.0),
                          deviation=options.get("deviation", 1.0), stack=result,
                          name=options.get("name", ""))[0]
    return result


def schedule(**overrides):
    values = dict(start_percent=0.0, end_percent=0.5, aggregation="linear",
                  weight_curve="constant", deviation_mode="none", deviation_strength=0.0,
                  target_member=1, noise_mode="independent", start_step=0, end_step=10000)
    values.update(overrides)
    return run_node("AggregationSchedule", **values)[0]


def sample(members, amdm_schedule=None):
    latent = run_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    return run_node("AMDMSampler", stack=members, seed=0, steps=4, sampler_name="euler",
                    scheduler="normal", latent_image=latent, denoise=1.0,
                    schedule=amdm_schedule)


def test_empty_stack(pack, evaluations):
    with pytest.raises(ValueError, match="AMDMSampler: the stack is empty"):
        sample(())
    with pytest.raises(ValueError, match="AMDMGuider: the stack is empty"):
        run_node("AMDMGuider", stack=())


@pytest.mark.parametrize("weight", [-0.5, math.nan, math.inf])
def test_bad_member_weight_names_the_member(pack, counted, conds, weight):
    with pytest.raises(ValueError, match="ModelStack \\(member 2 \\('style'\\)\\): weight must be "
                                         "a finite number >= 0"):
        stack((counted, *conds, {}), (counted, *conds, {"weight": weight, "name": "style"}))


def test_bad_member_deviation_and_cfg(pack, counted, conds):
    with pytest.raises(ValueError, match="ModelStack \\(member 1\\): deviation must be"):
        stack((counted, *conds, {"deviation": -1.0}))
    with pytest.raises(ValueError, match="ModelStack \\(member 1\\): cfg must be a finite number"):
        stack((counted, *conds, {"cfg": math.nan}))


def test_all_weights_zero(pack, counted, conds, evaluations):
    members = stack((counted, *conds, {"weight": 0.0}), (counted, *conds, {"weight": 0.0}))
    with pytest.raises(ValueError, match="AMDMSampler: every member's weight is 0"):
        sample(members)
    assert evaluations == []


@pytest.mark.parametrize("overrides, message", [
    ({"start_percent": 0.6, "end_percent": 0.3}, "end_percent \\(0.3\\) must be greater"),
    ({"start_percent": 0.4, "end_percent": 0.4}, "end_percent \\(0.4\\) must be greater"),
    ({"start_percent": -0.1}, "start_percent must lie in \\[0, 1\\]"),
    ({"end_percent": 1.1}, "end_percent must lie in \\[0, 1\\]"),
    ({"start_step": 8, "end_step": 8}, "end_step \\(8\\) must be greater than start_step "
                                       "\\(8\\), or 0 for no limit"),
    ({"deviation_mode": "relative", "deviation_strength": 1.5},
     "deviation_strength is a fraction in \\[0, 1\\]"),
])
def test_bad_window_names_the_schedule_input(pack, overrides, message):
    with pytest.raises(ValueError, match="AggregationSchedule: " + message):
        schedule(**overrides)


def test_target_outside_the_stack(pack, counted, conds, evaluations):
    members = stack((counted, *conds, {}), (counted, *conds, {}))
    with pytest.raises(ValueError, match="target_member \\(3\\) is outside the stack of 2"):
        sample(members, schedule(target_member=3))
    assert evaluations == []


def test_relative_deviation_above_one_names_the_member(pack, counted, conds, evaluations):
    members = stack((counted, *conds, {}), (counted, *conds, {"deviation": 2.0, "name": "layout"}))
    with pytest.raises(ValueError, match="member 2 \\('layout'\\): deviation 2.0 x"):
        sample(members, schedule(deviation_mode="relative", deviation_strength=0.8))
    assert evaluations == []


def _flow_model(model):
    return run_node("ModelSamplingSD3", model=model, shift=3.0)[0]


def _zsnr_model(model):
    return run_node("ModelSamplingDiscrete", model=model, sampling="eps", zsnr=True)[0]


def _other_latent_format(model):
    import comfy.latent_formats
    patched = model.clone()
    patched.add_object_patch("latent_format", comfy.latent_formats.SDXL())
    return patched


@pytest.mark.parametrize("make_foreign, message, fix", [
    (_flow_model, "model_sampling family flow matching", "choose members of one family"),
    (_zsnr_model, "noise schedule sigmas 0.029\\d* to 4\\d{3} against", "apply the same "
                                                                   "ModelSamplingDiscrete"),
    (_other_latent_format, "latent format \\('SDXL'", "choose members of one model family"),
])
def test_members_of_another_ecosystem(pack, counted, conds, evaluations, make_foreign, message,
                                      fix):
    members = stack((counted, *conds, {}), (make_foreign(counted), *conds, {"name": "alien"}))
    with pytest.raises(ValueError, match=f"member 2 \\('alien'\\) is not of the same ecosystem "
                                         f"as member 1: {message}.*{fix}"):
        sample(members)
    assert evaluations == []


def _sd3_shift(shift):
    return lambda model: run_node("ModelSamplingSD3", model=model, shift=shift)[0]


def _flux_shift(max_shift, base_shift):
    return lambda model: run_node("ModelSamplingFlux", model=model, max_shift=max_shift,
                                  base_shift=base_shift, width=1024, height=1024)[0]


@pytest.mark.parametrize("make_first, make_second", [
    (_sd3_shift(3.0), _sd3_shift(6.0)),  # SD3 at two shifts
    (_sd3_shift(5.0), _sd3_shift(8.0)),  # Wan 2.1 at 480p and 720p shifts
    (_flux_shift(1.15, 0.5), _flux_shift(0.0, 0.0)),  # Flux dev and schnell (shift 1)
])
def test_flow_members_that_differ_only_in_shift_are_one_ecosystem(pack, counted, conds,
                                                                   make_first, make_second):
    """A shift changes a flow model's schedule, not how it reads sigma; the run follows the
    target's sigmas. Accepted, and the other member acts on the result."""
    first, second = make_first(counted), make_second(counted)
    alone = sample(stack((first, *conds, {})))[0]["samples"]
    both = sample(stack((first, *conds, {}), (second, conds[1], conds[0], {})))[0]["samples"]
    assert torch.isfinite(both).all() and not torch.allclose(both, alone)


def test_v_prediction_shares_the_sigma_space(pack, counted, conds):
    v_model = run_node("ModelSamplingDiscrete", model=counted, sampling="v_prediction",
                       zsnr=False)[0]
    out = sample(stack((counted, *conds, {}), (v_model, *conds, {})))[0]["samples"]
    assert torch.isfinite(out).all()


def test_a_sampler_that_is_not_k_diffusion_is_refused_where_members_aggregate(pack, counted, conds,
                                                                             evaluations):
    """Aggregating needs a k-diffusion SAMPLER stepped one step at a time: any other is
    refused before any evaluation. With one member, or members that only hand over, it is
    ComfyUI's own sampling of each stage, and any SAMPLER runs (as in KSamplerAdvanced)."""
    import comfy.samplers
    from comfyui_amdm.amdm_core import Schedule, StepRange
    from comfyui_amdm.nodes import AMDMGuider, Member

    class OpaqueSampler(comfy.samplers.KSAMPLER):
        """A SAMPLER of another pack that overrides sample(): runs euler its own way."""
        def __init__(self):
            super().__init__(comfy.samplers.ksampler("euler").sampler_function)
            self.calls = 0

        def sample(self, *args, **kwargs):
            self.calls += 1
            return super().sample(*args, **kwargs)

    latent = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([14.6, 1.0, 0.0])
    guider = AMDMGuider([Member(counted, *conds, 7.0), Member(counted, *conds, 5.0)], Schedule())
    with pytest.raises(ValueError, match="AMDMGuider: members aggregate one step at a time, through a "
                                         "k-diffusion SAMPLER .* OpaqueSampler cannot be driven so"):
        guider.sample(torch.randn_like(latent), latent, OpaqueSampler(), sigmas)
    assert evaluations == []
    sampler = OpaqueSampler()
    AMDMGuider([Member(counted, *conds, 7.0)], Schedule()).sample(torch.randn_like(latent), latent, sampler, sigmas)
    handoff = [Member(counted, *conds, 7.0, step_range=StepRange(end_step=1)),
               Member(counted, *conds, 5.0, step_range=StepRange(start_step=1))]
    AMDMGuider(handoff, Schedule(target_member=2)).sample(torch.randn_like(latent), latent, sampler, sigmas)
    assert sampler.calls == 3 and len(evaluations) == 4


def test_a_refused_sampler_runs_where_nothing_aggregates(pack, counted, conds, evaluations):
    """dpm_adaptive cannot be stepped, but a window that holds no step leaves the target
    alone: ComfyUI's own sampling, as KSampler."""
    import comfy.samplers
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import AMDMGuider, Member

    latent = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([14.6, 1.0, 0.0])
    guider = AMDMGuider([Member(counted, *conds, 7.0), Member(counted, *conds, 5.0)],
                        Schedule(start_step=5, end_step=9))
    guider.sample(torch.randn_like(latent), latent, comfy.samplers.sampler_object("dpm_adaptive"), sigmas)
    assert evaluations


def test_expert_boundary_in_sigma_covers_the_models_sigmas(pack, sd15):
    """A boundary in ComfyUI's sigma reaches past 1 for SD-family models (their sigmas run
    to about 14.6); a sigma outside the model's, or a fraction above 1, is an error naming
    the node."""
    from comfyui_amdm.amdm_core import progress_of
    from comfyui_amdm.amdm_core.schedule import PROGRESS_TIE
    model = sd15[0]
    sampling = model.get_model_object("model_sampling")
    end, start = run_node("AMDMExpertBoundary", model=model, preset="custom", boundary=5.0, unit="sigma",
                          overlap=0.0)
    # just past the boundary's own percent, so that a step on it stays with the first expert
    assert end == start == pytest.approx(progress_of(5.0, sampling.percent_to_sigma) + 2 * PROGRESS_TIE, abs=1e-9)
    with pytest.raises(ValueError, match=r"AMDMExpertBoundary: boundary sigma 20.0 is outside this model's "
                                         r"sigmas \[0.029\d*, 14.6\d*\]"):
        run_node("AMDMExpertBoundary", model=model, preset="custom", boundary=20.0, unit="sigma", overlap=0.0)
    with pytest.raises(ValueError, match=r"AMDMExpertBoundary: boundary 1.5 in unit timestep must be at most 1"):
        run_node("AMDMExpertBoundary", model=model, preset="custom", boundary=1.5, unit="timestep", overlap=0.0)
