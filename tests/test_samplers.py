"""Every sampler ComfyUI offers means something definite inside the window.

The pack's sampler table (nodes/samplers.py) sorts them into exact, restarts, adapted and
refused. These tests hold each sampler to its entry on real (tiny) SD1.5 checkpoints: the
other member changes the result, the model is evaluated as often as the table says, a
weight-0 member reproduces the target's own one-step trajectory, refused samplers fail
before any evaluation.
"""
from __future__ import annotations

import functools
import logging

import comfy.sample
import comfy.samplers
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import (SEED, EvaluationLog, amdm, amdm_sampler,  # noqa: F401
                              empty_latent, ksampler, model_a, model_b, prompts)

STEPS = 4
SCHEDULER = "karras"
ALL_SAMPLERS = comfy.samplers.KSampler.SAMPLERS
# Samplers whose steps draw no noise: their one-step trajectories can be reproduced exactly.
DETERMINISTIC = {"euler", "euler_cfg_pp", "heun", "dpm_2", "ddim", "lms", "dpmpp_2m",
                 "dpmpp_2m_cfg_pp", "ipndm", "ipndm_v", "deis", "res_multistep",
                 "res_multistep_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
                 "heunpp2", "uni_pc", "uni_pc_bh2"}


@pytest.fixture(scope="module")
def table(pack):
    from comfyui_amdm.nodes import samplers
    return samplers


def test_the_table_knows_every_sampler_of_this_comfyui(table):
    assert set(ALL_SAMPLERS) <= set(table.SAMPLERS)
    for name in ALL_SAMPLERS:
        function = comfy.samplers.sampler_object(name).sampler_function
        expected = "euler" if name == "ddim" else name
        assert table.sampler_name_of(function) == expected, name


def test_the_readme_and_the_sampler_help_show_the_table(table):
    from support.comfy_env import REPO_ROOT
    assert table.markdown_table() in (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert table.markdown_list() in (REPO_ROOT / "web" / "docs" / "AMDMSampler.md").read_text(encoding="utf-8")


def _window_all_but_last(Schedule, **options):
    """Every step but the last one (to sigma 0, where some samplers take fewer
    evaluations): the member's evaluations then count exactly."""
    return Schedule(end_percent=1.0, end_step=STEPS - 1, **options)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_every_sampler_lets_the_other_member_act_or_is_refused(amdm, table, model_a, model_b,
                                                              prompts, sampler):
    Member, Schedule = amdm
    behaviour = table.SAMPLERS[sampler]
    log = EvaluationLog()
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    run = functools.partial(amdm_sampler, sampler=sampler, steps=STEPS, scheduler=SCHEDULER)

    def with_member(text):
        member = Member(log.watch(model_b, text), prompts[text], prompts["empty"], 5.0)
        return run([target, member], _window_all_but_last(Schedule))

    if behaviour.drive == table.REFUSED:
        with pytest.raises(ValueError, match=f"AMDMSampler: sampler '{sampler}' .* use euler "
                                             f"or dpmpp_2m"):
            with_member("blue")
        assert log.sigmas["blue"] == []
        return
    blue, cat = with_member("blue"), with_member("cat")
    assert torch.isfinite(blue).all() and torch.isfinite(cat).all()
    assert not torch.allclose(blue, cat), "the other member's prompt changed nothing"
    assert len(log.sigmas["blue"]) == behaviour.evaluations * (STEPS - 1)


@pytest.mark.parametrize("sampler", sorted(DETERMINISTIC))
def test_a_weight_0_member_reproduces_the_targets_one_step_trajectory(amdm, table, model_a,
                                                                       model_b, prompts,
                                                                       sampler):
    """Exact samplers: that trajectory is KSampler's own. Samplers that restart or are
    adapted: it is SamplerCustom run one step per call on the sampler's own sigmas (KSampler
    adds a step for uni_pc and dpm_2), with the sampler the window uses for single steps."""
    Member, Schedule = amdm
    behaviour = table.SAMPLERS[sampler]
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0, weight=0.0)]
    out = amdm_sampler(members, Schedule(end_percent=1.0), sampler, steps=STEPS,
                       scheduler=SCHEDULER)
    if behaviour.drive == table.EXACT:
        reference = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, sampler,
                             steps=STEPS, scheduler=SCHEDULER)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
        return
    one_step = comfy.samplers.sampler_object(behaviour.single_step_sampler or sampler)
    sigmas = comfy.samplers.KSampler(model_a, steps=STEPS, device="cpu", sampler=sampler,
                                     scheduler=SCHEDULER, denoise=1.0).sigmas
    latent = empty_latent()
    for k in range(STEPS):
        latent = run_node("SamplerCustom", model=model_a, add_noise=k == 0, noise_seed=SEED,
                          cfg=7.0, positive=prompts["red"], negative=prompts["empty"],
                          sampler=one_step, sigmas=sigmas[k:k + 2], latent_image=latent)[0]
    torch.testing.assert_close(out, latent["samples"], rtol=1e-4, atol=1e-4)
    whole_run = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, sampler, steps=STEPS,
                         scheduler=SCHEDULER)
    assert not torch.allclose(out, whole_run), "the table says this sampler changes when " \
                                               "driven one step at a time"


def test_a_sampler_the_table_does_not_know_is_probed(amdm, model_a, model_b, prompts, caplog):
    """A SAMPLER from elsewhere is driven one step per call only if a one-step call uses
    the model: a renamed euler is accepted (and equals euler), a renamed UniPC refused."""
    import comfy.extra_samplers.uni_pc as uni_pc
    import comfy.k_diffusion.sampling as kd
    from comfyui_amdm.nodes import AMDMGuider
    Member, Schedule = amdm

    def sample_my_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return kd.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback,
                               disable=disable)

    def sample_my_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return uni_pc.sample_unipc(model, x, sigmas, extra_args=extra_args, callback=callback,
                                   disable=disable)

    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    latent = empty_latent()
    sigmas = run_node("BasicScheduler", model=model_a, scheduler=SCHEDULER, steps=STEPS,
                      denoise=1.0)[0]
    noise = comfy.sample.prepare_noise(latent["samples"], SEED)

    def sample(function):
        guider = AMDMGuider(members, Schedule(end_percent=1.0))
        return guider.sample(noise, latent["samples"], comfy.samplers.KSAMPLER(function),
                             sigmas, seed=SEED)

    with caplog.at_level(logging.INFO):
        renamed = sample(sample_my_euler)
    assert "'sample_my_euler' is not in AMDM's sampler table" in caplog.text
    assert torch.equal(renamed, sample(kd.sample_euler))
    with pytest.raises(ValueError, match="'sample_my_unipc' .* ignores the model"):
        sample(sample_my_unipc)


def test_a_sampler_with_churn_churns_each_step_as_in_one_call(amdm, model_a, model_b, prompts):
    """euler with s_churn (a SAMPLER that sets it, as custom sampler nodes do) adds
    s_churn / steps of noise per step of a call: driven in pieces, each call gets its share
    of the run's s_churn, not the whole of it at every step."""
    import comfy.k_diffusion.sampling
    Member, Schedule = amdm
    churns = []

    @functools.wraps(comfy.k_diffusion.sampling.sample_euler)
    def sample_euler(model, x, sigmas, **kwargs):
        churns.append((len(sigmas) - 1, kwargs["s_churn"]))
        return comfy.k_diffusion.sampling.sample_euler(model, x, sigmas, **kwargs)

    sampler = comfy.samplers.KSAMPLER(sample_euler, extra_options={"s_churn": 8.0})
    stack = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
             Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    guider = run_node("AMDMGuider", stack=tuple(stack), schedule=Schedule(end_step=2, end_percent=1.0))[0]
    sigmas = comfy.samplers.calculate_sigmas(model_a.get_model_object("model_sampling"), "normal", 8)
    run_node("SamplerCustomAdvanced", noise=run_node("RandomNoise", noise_seed=1)[0], guider=guider,
             sampler=sampler, sigmas=sigmas, latent_image=empty_latent())
    # two window steps (both members), then the target's six steps in one call
    assert churns == [(1, 1.0)] * 4 + [(6, 6.0)]
