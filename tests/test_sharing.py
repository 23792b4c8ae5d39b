"""Members that share a checkpoint cost no more than distinct ones.

Counted, never timed: weight patching (a LoRA member on the target's checkpoint is
patched once, not at every window step), UNet calls (members with one set of weights and
one latent share a batched call), what model management loads and reserves.
"""
from __future__ import annotations

import contextlib
import gc
import weakref

import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import (STEPS, amdm, amdm_sampler, interrupting_clone,  # noqa: F401
                              ksampler, model_a, model_b, prompts)


@contextlib.contextmanager
def recording(monkeypatch, owner, name: str):
    """Calls of ``owner.name`` (a ComfyUI function or method), recorded and passed through."""
    calls = []
    original = getattr(owner, name)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, record)
    yield calls
    monkeypatch.setattr(owner, name, original)


@contextlib.contextmanager
def vram_state(state):
    """ComfyUI's VRAM mode (as --lowvram sets it) for the duration."""
    saved = comfy.model_management.vram_state
    comfy.model_management.vram_state = state
    try:
        yield
    finally:
        comfy.model_management.vram_state = saved


def lora_clone(model, fixture_files, strength: float = 1.0):
    return run_node("LoraLoaderModelOnly", model=model, lora_name=fixture_files["lora"].name,
                    strength_model=strength)[0]


def test_a_lora_member_is_patched_once_not_at_every_window_step(amdm, model_a, prompts,
                                                                fixture_files, monkeypatch):
    """A LoRA clone of the target's checkpoint runs on a resident copy: the LoRA is merged
    into it once, however long the window; the target's module never carries it."""
    Member, Schedule = amdm
    counts = {}
    for window_steps in (2, 6):
        member = Member(lora_clone(model_a, fixture_files), prompts["blue"], prompts["empty"],
                        5.0)
        with recording(monkeypatch, comfy.model_patcher.ModelPatcher,
                       "patch_weight_to_device") as calls:
            amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0), member],
                         Schedule(end_percent=1.0, end_step=window_steps), "euler")
        patches = [args for args, _ in calls if args[1] in args[0].patches]
        assert all(patcher.model is not model_a.model for patcher, *_ in patches)
        counts[window_steps] = len(patches)
    lora_keys = len(lora_clone(model_a, fixture_files).patches)
    assert 0 < counts[2] == counts[6] <= lora_keys


def test_without_room_for_a_copy_the_member_is_re_patched_and_says_why(amdm, model_a, prompts,
                                                                       fixture_files, caplog):
    import logging
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(lora_clone(model_a, fixture_files, 0.8), prompts["blue"],
                      prompts["empty"], 5.0, name="style")]
    with vram_state(comfy.model_management.VRAMState.LOW_VRAM), caplog.at_level(logging.INFO):
        out = amdm_sampler(members, Schedule(end_percent=0.5), "euler")
    assert "member 2 ('style') shares its checkpoint with member 1 but not its weights, and " \
           "no copy of it can stay resident (ComfyUI runs in LOW_VRAM mode)" in caplog.text
    with caplog.at_level(logging.INFO):
        assert torch.equal(amdm_sampler(members, Schedule(end_percent=0.5), "euler"), out)
    assert "runs on a resident copy" in caplog.text


def test_a_resident_copy_is_freed_with_its_member_model(amdm, model_a, prompts, fixture_files):
    """The copy is kept from run to run only while the member's MODEL lives: a LoRA clone
    that the graph no longer holds (another strength, another LoRA) takes its copy along."""
    from comfyui_amdm.nodes import sharing
    Member, Schedule = amdm
    lora = lora_clone(model_a, fixture_files, 0.7)
    amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                  Member(lora, prompts["blue"], prompts["empty"], 5.0)],
                 Schedule(end_percent=0.5), "euler")
    copy = weakref.ref(sharing._RESIDENT_COPIES[lora])
    del lora
    gc.collect()
    assert copy() is None


@pytest.mark.parametrize("resident", [True, False], ids=["resident copy", "re-patched"])
def test_no_patched_weights_leak_after_complete_or_interrupted_runs(amdm, model_a, prompts,
                                                                    fixture_files, resident):
    """After AMDM with a LoRA clone of the target, complete or interrupted, KSampler on the
    target and on the clone gives what it gave before, bit for bit."""
    Member, Schedule = amdm
    lora = lora_clone(model_a, fixture_files, 0.6)
    interrupting, _ = interrupting_clone(lora)

    def references():
        return [ksampler(m, prompts["red"], prompts["empty"], 7.0, "euler")
                for m in (model_a, lora)]
    before = references()
    state = (comfy.model_management.vram_state if resident
             else comfy.model_management.VRAMState.LOW_VRAM)
    with vram_state(state):
        amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                      Member(lora, prompts["blue"], prompts["empty"], 5.0)],
                     Schedule(end_percent=0.5), "euler")
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                              Member(interrupting, prompts["blue"], prompts["empty"], 5.0)],
                             Schedule(end_percent=0.5), "euler")
        finally:
            comfy.model_management.interrupt_current_processing(False)
    after = references()
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_only_members_that_need_no_switch_may_step_in_parallel(amdm, model_a, model_b, prompts,
                                                                fixture_files):
    """On several GPUs a worker steps its device's members back to back, with no weight
    switch between them: members that would re-patch one module (no room for a copy)
    must take turns on the main thread. The rule, on real patchers."""
    from comfyui_amdm.nodes import sharing
    Member, _ = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(lora_clone(model_a, fixture_files), prompts["blue"], prompts["empty"], 5.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0),
               Member(model_a.clone(), prompts["blue"], prompts["cat"], 5.0)]
    own = [member.model for member in members]
    assert sharing.switch_weights(own, members, 0, 1)
    assert not sharing.switch_weights(own, members, 0, 2)
    assert not sharing.switch_weights(own, members, 0, 3)
    assert not sharing.switch_weights(sharing.resident_models(members, 0), members, 0, 1)


def _count_unet_calls(model):
    """A clone of ``model`` whose UNet calls (and their batch sizes) are recorded."""
    counted = model.clone()
    batches = []

    def wrapper(apply_model, args):
        batches.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])
    counted.set_model_unet_function_wrapper(wrapper)
    return counted, batches


def test_members_with_one_checkpoint_and_one_latent_share_one_unet_call_per_step(
        amdm, model_a, prompts, sd15, encode):
    """The same checkpoint with other prompts: inside the window both members' conds go
    through one UNet call per step, a negative prompt they share (here encoded twice from
    the same text) evaluated once; the result is the sequential one's (members whose
    options differ by an attention patch that changes nothing are not batched)."""
    Member, Schedule = amdm
    # Shared noise: the members step from one latent from the window's first step on.
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    counted, batches = _count_unet_calls(model_a)
    empty_again = encode(sd15[1], "")
    assert empty_again[0][0] is not prompts["empty"][0][0]
    batched = amdm_sampler([Member(counted, prompts["red"], prompts["empty"], 7.0),
                            Member(counted, prompts["blue"], empty_again, 5.0)],
                           schedule, "euler")
    # Every step one call: the 4 window steps on red, blue and one empty, the rest on 2.
    assert len(batches) == STEPS and batches.count(3) == 4, batches
    batches.clear()
    amdm_sampler([Member(counted, prompts["red"], prompts["empty"], 7.0),
                  Member(counted, prompts["blue"], prompts["cat"], 5.0)], schedule, "euler")
    assert len(batches) == STEPS and batches.count(4) == 4, batches
    apart = counted.clone()
    apart.set_model_attn2_patch(lambda q, k, v, extra_options: (q, k, v))
    batches.clear()
    sequential = amdm_sampler([Member(counted, prompts["red"], prompts["empty"], 7.0),
                               Member(apart, prompts["blue"], prompts["empty"], 5.0)],
                              schedule, "euler")
    assert len(batches) == STEPS + 4 and set(batches) == {2}
    # One batched call rounds differently from two: a few ulps of the latent's scale.
    torch.testing.assert_close(batched, sequential, rtol=1e-4,
                               atol=1e-5 * sequential.abs().max().item())
    assert not torch.allclose(batched, ksampler(model_a, prompts["red"], prompts["empty"], 7.0,
                                                "euler"))


def _controlled(prompts, fixture_files):
    controlnet = run_node("ControlNetLoader", control_net_name=fixture_files["controlnet"].name)[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.manual_seed(4))
    return run_node("ControlNetApplyAdvanced", positive=prompts["blue"],
                    negative=prompts["empty"], control_net=controlnet, image=hint,
                    strength=1.0, start_percent=0.0, end_percent=1.0)[:2]


def test_a_member_reloaded_in_the_window_reserves_what_comfyui_reserves(
        amdm, model_a, prompts, fixture_files, monkeypatch):
    """In LOW_VRAM mode a LoRA member and the target swap one module at every window step;
    each reload of the member reserves what ComfyUI's own sampling prepare reserves for it:
    the estimate for its conds plus its ControlNet's inference memory."""
    Member, Schedule = amdm
    positive, negative = _controlled(prompts, fixture_files)
    lora = lora_clone(model_a, fixture_files, 0.7)
    conds = {"positive": comfy.sampler_helpers.convert_cond(positive),
             "negative": comfy.sampler_helpers.convert_cond(negative)}
    shape = (1, 4, 8, 8)
    memory, minimum = comfy.sampler_helpers.estimate_memory(lora, shape, conds)
    _, control_memory = comfy.sampler_helpers.get_additional_models(conds, lora.model_dtype())
    expected = (memory + control_memory, minimum + control_memory)
    with vram_state(comfy.model_management.VRAMState.LOW_VRAM), \
            recording(monkeypatch, comfy.model_management, "load_models_gpu") as loads:
        amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                      Member(lora, positive, negative, 5.0)], Schedule(end_percent=0.5),
                     "euler")
    reloads = [kwargs for args, kwargs in loads
               if any(m.model is lora.model and m.patches_uuid == lora.patches_uuid
                      for m in args[0]) and "memory_required" in kwargs]
    assert len(reloads) >= 3
    assert all((r["memory_required"], r["minimum_memory_required"]) == expected for r in reloads)


def test_an_evicted_controlnet_is_loaded_again_before_its_member_runs(amdm, model_a, model_b,
                                                                      prompts, fixture_files):
    """Something unloads every model after each target evaluation (memory pressure): the
    member's model and its ControlNet are loaded again before each of its evaluations."""
    Member, Schedule = amdm
    positive, negative = _controlled(prompts, fixture_files)
    control_models = positive[0][1]["control"].get_models()
    evicting = model_a.clone()
    evicting.set_model_unet_function_wrapper(
        lambda apply_model, args: (apply_model(args["input"], args["timestep"], **args["c"]),
                                   comfy.model_management.unload_all_models())[0])
    seen = []
    watched = model_b.clone()

    def record(apply_model, args):
        loaded = comfy.model_management.loaded_models()
        seen.append(all(any(m is not None and m.model is c.model for m in loaded)
                        for c in control_models))
        return apply_model(args["input"], args["timestep"], **args["c"])
    watched.set_model_unet_function_wrapper(record)
    amdm_sampler([Member(evicting, prompts["red"], prompts["empty"], 7.0),
                  Member(watched, positive, negative, 5.0)], Schedule(end_percent=0.5),
                 "euler")
    assert len(seen) == 4 and all(seen)
