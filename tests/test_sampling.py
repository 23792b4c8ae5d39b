"""AMDM inside ComfyUI's real sampler loop, on real (tiny, random) SD1.5 checkpoints.

Every comparison is against ComfyUI's own KSampler node on the same model, seed, sigmas.
"""
from __future__ import annotations

import comfy.samplers
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import (SEED, STEPS, EvaluationLog, amdm, amdm_sampler,  # noqa: F401
                              empty_latent, interrupting_clone, ksampler, model_a, model_b,
                              model_c, prompts)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_one_member_and_empty_window_equal_ksampler_bit_for_bit(amdm, model_a, model_b, prompts,
                                                               sampler):
    Member, Schedule = amdm
    reference = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, sampler)
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    other = Member(model_b, prompts["blue"], prompts["empty"], 5.0)
    alone = amdm_sampler([target], Schedule(), sampler)
    outside = amdm_sampler([target, other], Schedule(start_step=STEPS, end_step=STEPS + 5), sampler)
    assert torch.equal(alone, reference)
    assert torch.equal(outside, reference)


@pytest.mark.parametrize("target_member", [1, 2])
def test_zero_weight_members_match_ksampler_with_euler(amdm, model_a, model_b, prompts,
                                                       target_member):
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    target = members[target_member - 1]
    members = [Member(m.model, m.positive, m.negative, m.cfg,
                      weight=1.0 if m is target else 0.0, deviation=0.0) for m in members]
    reference = ksampler(target.model, target.positive, target.negative, target.cfg, "euler")
    for aggregation in ("linear", "slerp", "paper"):
        out = amdm_sampler(members, Schedule(end_percent=0.6, aggregation=aggregation,
                                             target_member=target_member), "euler")
        assert (out - reference).abs().max() <= 1e-5, aggregation


def test_identical_members_aggregate_to_plain_sampling(amdm, model_a, prompts):
    """Noise scaling happens once for the whole run: aggregating identical trajectories
    (shared noise, deterministic sampler, averaged guidance) changes nothing."""
    Member, Schedule = amdm
    member = Member(model_a, prompts["cat"], prompts["empty"], 6.0)
    reference = ksampler(model_a, prompts["cat"], prompts["empty"], 6.0, "euler")
    for aggregation in ("linear", "slerp"):
        out = amdm_sampler([member, member], Schedule(end_percent=0.7, aggregation=aggregation,
                                                      noise_mode="shared", guidance="averaged"),
                           "euler")
        # Identical members share one batched UNet call, whose float rounding differs from a
        # batch of one by a few ulps of the latent's scale.
        torch.testing.assert_close(out, reference, rtol=1e-5,
                                   atol=1e-5 * reference.abs().max().item(), msg=aggregation)


def test_aggregation_changes_the_result_and_is_deterministic(amdm, model_a, model_b, prompts):
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    schedule = Schedule(end_percent=0.5)
    first = amdm_sampler(members, schedule, "euler_ancestral")
    again = amdm_sampler(members, schedule, "euler_ancestral")
    other_seed = amdm_sampler(members, schedule, "euler_ancestral", seed=SEED + 1)
    plain = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler_ancestral")
    assert torch.equal(first, again)
    assert not torch.allclose(first, other_seed)
    assert not torch.allclose(first, plain)
    assert torch.isfinite(first).all()


def test_other_members_are_evaluated_only_inside_the_window(amdm, model_a, model_b, model_c,
                                                             prompts):
    Member, Schedule = amdm
    log = EvaluationLog()
    members = [Member(log.watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0),
               Member(log.watch(model_b, "b"), prompts["blue"], prompts["empty"], 5.0),
               Member(log.watch(model_c, "c"), prompts["cat"], prompts["empty"], 4.0)]
    schedule = Schedule(start_percent=0.0, end_step=3, target_member=2)
    amdm_sampler(members, schedule, "euler", steps=10)
    sigmas = run_node("BasicScheduler", model=model_a, scheduler="normal", steps=10,
                      denoise=1.0)[0].tolist()
    window_sigmas = pytest.approx(sigmas[:3], rel=1e-5)
    assert log.sigmas["b"] == pytest.approx(sigmas[:10], rel=1e-5)
    assert log.sigmas["a"] == window_sigmas
    assert log.sigmas["c"] == window_sigmas


def test_a_late_window_starts_members_from_the_targets_latent(amdm, model_a, model_b, prompts):
    Member, Schedule = amdm
    log = EvaluationLog()
    members = [Member(log.watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0),
               Member(log.watch(model_b, "b"), prompts["blue"], prompts["empty"], 5.0)]
    out = amdm_sampler(members, Schedule(end_percent=1.0, start_step=2, end_step=5), "euler",
                       steps=10)
    assert len(log.sigmas["a"]) == 10 and len(log.sigmas["b"]) == 3
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("noise_mode", ["independent", "shared"])
def test_seeds_of_stochastic_steps_differ_at_every_aggregated_step(comfy, amdm, model_a, model_b,
                                                                   prompts, noise_mode):
    """Every window step draws fresh noise; members draw their own (independent) or the same
    one (shared, so that merging keeps the noise level)."""
    import functools

    import comfy.k_diffusion.sampling as kd
    import comfy.samplers
    from comfyui_amdm.nodes import AMDMGuider
    Member, Schedule = amdm
    seeds = []

    @functools.wraps(kd.sample_euler_ancestral)
    def recording_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seeds.append(extra_args["seed"])
        return kd.sample_euler_ancestral(model, x, sigmas, extra_args=extra_args,
                                         callback=callback, disable=disable)

    guider = AMDMGuider([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                         Member(model_b, prompts["blue"], prompts["empty"], 5.0)],
                        Schedule(end_percent=1.0, start_step=1, end_step=5,
                                 noise_mode=noise_mode))
    latent = empty_latent()["samples"]
    sigmas = run_node("BasicScheduler", model=model_a, scheduler="normal", steps=STEPS,
                      denoise=1.0)[0]
    guider.sample(torch.randn(latent.shape, generator=torch.manual_seed(3)), latent,
                  comfy.samplers.KSAMPLER(recording_ancestral), sigmas, seed=SEED)
    # one call before the window, 4 steps x 2 members inside it, one call after it
    assert len(seeds) == 1 + 8 + 1
    assert seeds[0] == SEED
    target_steps, member_steps = seeds[1:9:2], seeds[2:9:2]
    assert len(set(target_steps + [seeds[0], seeds[-1]])) == 6
    if noise_mode == "shared":
        assert member_steps == target_steps
    else:
        assert len(set(seeds)) == len(seeds)


def test_lora_member_is_evaluated_with_its_own_weights(amdm, model_a, prompts, fixture_files):
    """A LoRA clone of the target shares its torch module: each evaluation must see its own
    member's weights, before, inside and after the window."""
    Member, Schedule = amdm
    lora_name = fixture_files["lora"].name
    lora_model = run_node("LoraLoaderModelOnly", model=model_a, lora_name=lora_name,
                          strength_model=1.0)[0]
    plain = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    styled = Member(lora_model, prompts["red"], prompts["empty"], 7.0)
    schedule = Schedule(end_percent=0.5)

    def only(target_member, weights):
        members = [Member(m.model, m.positive, m.negative, m.cfg, weight=w, deviation=0.0)
                   for m, w in zip((plain, styled), weights)]
        return amdm_sampler(members, Schedule(end_percent=0.5, target_member=target_member),
                            "euler")

    reference_plain = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler")
    reference_lora = ksampler(lora_model, prompts["red"], prompts["empty"], 7.0, "euler")
    assert not torch.allclose(reference_plain, reference_lora)
    assert (only(1, (1.0, 0.0)) - reference_plain).abs().max() <= 1e-5
    assert (only(2, (0.0, 1.0)) - reference_lora).abs().max() <= 1e-5
    mixed = amdm_sampler([plain, styled], schedule, "euler")
    same = amdm_sampler([plain, plain], schedule, "euler")
    assert not torch.allclose(mixed, same)
    # the target's weights are restored once the window is over
    assert torch.equal(ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler"),
                       reference_plain)


def assert_moves_toward(with_feature, without_feature, member_with, member_without,
                        minimum_cosine: float = 0.3) -> None:
    """The feature a member carries shows in the aggregate: what it changes in the AMDM
    result points the way it changes the member's own image (cosine of the differences)."""
    change = (with_feature - without_feature).flatten()
    own_change = (member_with - member_without).flatten()
    assert change.norm() > 0, "the member's feature changed nothing"
    cosine = torch.nn.functional.cosine_similarity(change, own_change, dim=0)
    assert cosine > minimum_cosine, f"cosine {cosine:.3f}"


def member_feature_test(amdm, model_a, prompts, member_model, positive, negative,
                        plain_model, plain_positive, plain_negative):
    """AMDM with the featured member against the same member without its feature, and
    each member alone with KSampler: the aggregate moves the member's way."""
    Member, Schedule = amdm
    schedule = Schedule(end_percent=0.5)
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    featured = amdm_sampler([target, Member(member_model, positive, negative, 5.0)], schedule,
                            "euler")
    plain = amdm_sampler([target, Member(plain_model, plain_positive, plain_negative, 5.0)],
                         schedule, "euler")
    assert_moves_toward(featured, plain,
                        ksampler(member_model, positive, negative, 5.0, "euler"),
                        ksampler(plain_model, plain_positive, plain_negative, 5.0, "euler"))


def test_attention_patch_on_a_member_acts_its_way(amdm, model_a, model_b, prompts):
    """IP-Adapter-style packs patch attention through model_options; a member keeps them."""
    patched = model_b.clone()
    patched.set_model_attn2_patch(lambda q, k, v, extra_options: (q, k * 3.0, v * -1.0))
    member_feature_test(amdm, model_a, prompts, patched, prompts["blue"], prompts["empty"],
                        model_b, prompts["blue"], prompts["empty"])


def with_controlnet(positive, negative, fixture_files, hint_seed: int) -> tuple:
    """Conditioning through core ControlNetLoader + ControlNetApplyAdvanced, random hint."""
    controlnet = run_node("ControlNetLoader",
                          control_net_name=fixture_files["controlnet"].name)[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.manual_seed(hint_seed))
    return run_node("ControlNetApplyAdvanced", positive=positive, negative=negative,
                    control_net=controlnet, image=hint, strength=1.0, start_percent=0.0,
                    end_percent=1.0)[:2]


def test_controlnet_on_a_member_acts_its_way(amdm, model_a, model_b, prompts, fixture_files):
    positive, negative = with_controlnet(prompts["blue"], prompts["empty"], fixture_files, 0)
    member_feature_test(amdm, model_a, prompts, model_b, positive, negative,
                        model_b, prompts["blue"], prompts["empty"])


def test_one_controlnet_shared_by_target_and_member(amdm, model_a, model_b, prompts,
                                                    fixture_files):
    """The same controlled conditioning on two members: the member's cleanup after the
    window must not break the ControlNet for the target's remaining steps."""
    Member, Schedule = amdm
    positive, negative = with_controlnet(prompts["red"], prompts["empty"], fixture_files, 1)
    members = [Member(model_a, positive, negative, 7.0), Member(model_b, positive, negative, 5.0)]
    out = amdm_sampler(members, Schedule(end_percent=0.5), "euler")
    silent = amdm_sampler([members[0], Member(model_b, positive, negative, 5.0, weight=0.0,
                                              deviation=0.0)], Schedule(end_percent=0.5), "euler")
    reference = ksampler(model_a, positive, negative, 7.0, "euler")
    assert torch.isfinite(out).all()
    assert (silent - reference).abs().max() <= 1e-5


def test_gligen_on_a_member_acts_its_way(amdm, model_a, model_b, prompts, sd15, fixture_files):
    clip = sd15[1]
    gligen = run_node("GLIGENLoader", gligen_name=fixture_files["gligen"].name)[0]
    boxed = run_node("GLIGENTextBoxApply", conditioning_to=prompts["blue"], clip=clip,
                     gligen_textbox_model=gligen, text="a blue ball", width=32, height=32,
                     x=0, y=0)[0]
    member_feature_test(amdm, model_a, prompts, model_b, boxed, prompts["empty"],
                        model_b, prompts["blue"], prompts["empty"])


def test_img2img_inpainting_and_batches(amdm, model_a, model_b, prompts):
    Member, Schedule = amdm
    source = torch.randn(2, 4, 8, 8, generator=torch.manual_seed(5))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, :4] = 1.0
    latent = {"samples": source, "noise_mask": mask}
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    other = Member(model_b, prompts["blue"], prompts["empty"], 5.0)
    schedule = Schedule(end_percent=0.8)
    alone = amdm_sampler([target], schedule, "euler", latent=latent, denoise=0.6)
    assert torch.equal(alone, ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler",
                                       latent=latent, denoise=0.6))
    out = amdm_sampler([target, other], schedule, "euler", latent=latent, denoise=0.6)
    assert out.shape == source.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, alone)
    # outside the mask the source latent is kept, inside it the image is regenerated
    torch.testing.assert_close(out[..., 4:], source[..., 4:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[..., :4], source[..., :4])


def test_batch_items_do_not_interact_and_follow_batch_index(amdm, model_a, model_b, prompts):
    """Item 2 of a batch equals the same item sampled alone (batch_index [2]): the target's
    and the other members' noise both follow the batch index, and norms are per item."""
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    schedule = Schedule(end_percent=0.6, aggregation="slerp", deviation_mode="absolute",
                        deviation_strength=2.0)
    batch = amdm_sampler(members, schedule, "euler", scheduler="karras",
                         latent={"samples": torch.zeros(3, 4, 8, 8), "batch_index": [0, 1, 2]})
    alone = amdm_sampler(members, schedule, "euler", scheduler="karras",
                         latent={"samples": torch.zeros(1, 4, 8, 8), "batch_index": [2]})
    torch.testing.assert_close(batch[2:3], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch[1:2], alone)


def test_progress_reports_every_step_once_and_interrupt_stops_the_window(comfy, amdm, model_a,
                                                                         model_b, prompts, monkeypatch):
    import comfy.model_management
    import comfy.utils
    Member, Schedule = amdm
    # ComfyUI 0.28 sends at most one update per 0.1 s to the hook: every update counts here.
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    updates = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
                   Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
        amdm_sampler(members, Schedule(start_step=2, end_step=6), "dpmpp_2m", steps=10)
        assert updates == [(i, 10) for i in range(1, 11)]

        log = EvaluationLog()
        interrupting, evaluations = interrupting_clone(model_b)
        members = [Member(log.watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0),
                   Member(interrupting, prompts["blue"], prompts["empty"], 5.0)]
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            amdm_sampler(members, Schedule(end_step=6), "euler", steps=10)
        assert len(evaluations) == 2
        assert len(log.sigmas["a"]) == 2
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


def test_all_members_are_loaded_during_the_window(comfy, amdm, model_a, model_b, prompts):
    """Every member's weights (its torch module) are loaded while the window runs, and the
    target's stay loaded after it."""
    import comfy.model_management
    Member, Schedule = amdm
    seen = {"a": [], "b": []}

    def watch(model, name):
        watched = model.clone()

        def record_loaded(apply_model, args):
            # An entry whose model was garbage-collected reads as None until ComfyUI drops it.
            seen[name].append({id(m.model) for m in comfy.model_management.loaded_models()
                               if m is not None})
            return apply_model(args["input"], args["timestep"], **args["c"])
        watched.set_model_unet_function_wrapper(record_loaded)
        return watched
    watched_a, watched_b = watch(model_a, "a"), watch(model_b, "b")
    members = [Member(watched_a, prompts["red"], prompts["empty"], 7.0),
               Member(watched_b, prompts["blue"], prompts["empty"], 5.0)]
    amdm_sampler(members, Schedule(end_step=3), "euler")
    assert len(seen["a"]) == STEPS and len(seen["b"]) == 3
    both = {id(model_a.model), id(model_b.model)}
    assert all(both <= ids for ids in seen["a"][:3] + seen["b"])
    assert all(id(model_a.model) in ids for ids in seen["a"][3:])


def test_hooked_conditioning_on_a_member_acts_on_that_member_only(amdm, model_a, prompts,
                                                                  fixture_files):
    """A LoRA hook in a member's conditioning (core hook nodes) is applied to that member's
    evaluations and never to the target's, even when both use the very same MODEL."""
    Member, Schedule = amdm
    hooks = run_node("CreateHookLoraModelOnly", lora_name=fixture_files["lora"].name,
                     strength_model=1.0)[0]
    hooked = run_node("ConditioningSetProperties", cond_NEW=prompts["blue"], strength=1.0,
                      set_cond_area="default", hooks=hooks)[0]
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    schedule = Schedule(end_percent=0.5)
    with_hooks = amdm_sampler([target, Member(model_a, hooked, prompts["empty"], 5.0)],
                              schedule, "euler")
    without = amdm_sampler([target, Member(model_a, prompts["blue"], prompts["empty"], 5.0)],
                           schedule, "euler")
    assert not torch.allclose(with_hooks, without)
    silent = amdm_sampler([target, Member(model_a, hooked, prompts["empty"], 5.0, weight=0.0,
                                          deviation=0.0)], schedule, "euler")
    reference = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler")
    assert (silent - reference).abs().max() <= 1e-5


def lora_hooked(conditioning, fixture_files, strength: float = 1.0) -> list:
    """Conditioning carrying a LoRA hook (core CreateHookLoraModelOnly)."""
    hooks = run_node("CreateHookLoraModelOnly", lora_name=fixture_files["lora"].name,
                     strength_model=strength)[0]
    return run_node("ConditioningSetProperties", cond_NEW=conditioning, strength=1.0,
                    set_cond_area="default", hooks=hooks)[0]


@pytest.mark.parametrize("sharing", ["same MODEL", "same MODEL, model-as-LoRA hook", "clone",
                                     "LoRA clone", "hooked member"])
def test_the_targets_hooks_survive_every_way_of_sharing_its_model(amdm, model_a, prompts,
                                                                  fixture_files, sharing):
    """A hook on the target's conditioning (a LoRA hook, or another checkpoint's weights as
    one: CreateHookModelAsLoraModelOnly), and a weight-0 member that shares the target's
    MODEL (the very object, a clone, a LoRA clone, or with hooks of its own): the result is
    KSampler with the hook, and plain KSampler afterwards is unchanged (nothing leaks)."""
    Member, Schedule = amdm
    if sharing == "same MODEL, model-as-LoRA hook":
        hooks = run_node("CreateHookModelAsLoraModelOnly", ckpt_name="dreamshaper_8.safetensors",
                         strength_model=1.0)[0]
        hooked_red = run_node("ConditioningSetProperties", cond_NEW=prompts["red"], strength=1.0,
                              set_cond_area="default", hooks=hooks)[0]
    else:
        hooked_red = lora_hooked(prompts["red"], fixture_files)
    plain_before = ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler")
    reference = ksampler(model_a, hooked_red, prompts["empty"], 7.0, "euler")
    assert not torch.allclose(reference, plain_before), "the hook must act"
    member_model = {
        "same MODEL": model_a, "same MODEL, model-as-LoRA hook": model_a,
        "clone": model_a.clone(), "hooked member": model_a,
        "LoRA clone": run_node("LoraLoaderModelOnly", model=model_a,
                               lora_name=fixture_files["lora"].name, strength_model=0.5)[0],
    }[sharing]
    member_positive = (lora_hooked(prompts["blue"], fixture_files, strength=-1.0)
                       if sharing == "hooked member" else prompts["blue"])
    members = [Member(model_a, hooked_red, prompts["empty"], 7.0),
               Member(member_model, member_positive, prompts["empty"], 5.0, weight=0.0)]
    out = amdm_sampler(members, Schedule(end_percent=0.6), "euler")
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    assert torch.equal(ksampler(model_a, prompts["red"], prompts["empty"], 7.0, "euler"),
                       plain_before)


def test_the_console_progress_bar_counts_every_step(amdm, model_a, model_b, prompts, capfd):
    import re
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    capfd.readouterr()
    amdm_sampler(members, Schedule(start_step=2, end_step=5), "dpmpp_2m", steps=8)
    bars = re.findall(r"(\d+)/(\d+) \[", capfd.readouterr().err)
    assert bars and {total for _, total in bars} == {"8"}
    assert bars[-1] == ("8", "8")
