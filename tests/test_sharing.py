"""Members that share a checkpoint cost no more than distinct ones.

Counted, never timed: weight patching (a LoRA member on the target's checkpoint is
patched once, not at every window step), UNet calls (members with one set of weights and
one latent share a batched call), what model management loads and reserves.
"""
from __future__ import annotations

import contextlib
import gc
import queue
import threading
import weakref

import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import (STEPS, amdm, amdm_sampler, empty_latent, interrupting_clone,  # noqa: F401
                              ksampler, model_a, model_b, prompts, vram_state)


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


def lora_clone(model, fixture_files, strength: float = 1.0):
    return run_node("LoraLoaderModelOnly", model=model, lora_name=fixture_files["lora"].name,
                    strength_model=strength)[0]


class StandInPool:
    """ComfyUI's multi-GPU thread pool as the pack uses it (submit, get_result, shutdown),
    each piece of work run on this thread when it is submitted: for releases without the
    pool, and for GPUs a CPU machine has no worker for."""

    def __init__(self, devices):
        self.results = {device: queue.Queue() for device in devices}
        self.submitted = []
        self.shut_down = False

    def submit(self, device, fn, *args, **kwargs):
        self.submitted.append(device)
        try:
            self.results[device].put((fn(*args, **kwargs), None))
        except Exception as error:
            self.results[device].put((None, error))

    def get_result(self, device):
        return self.results[device].get_nowait()

    def shutdown(self):
        self.shut_down = True


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
    from comfyui_amdm.amdm_core import Span
    every_step = [Span(range(0, 4), (0, 1, 2, 3))]
    assert not sharing.switch_weights(sharing.resident_models(members, 0, every_step), members, 0, 1)


@contextlib.contextmanager
def unet_batches(model):
    """The batch size of every call of ``model``'s torch module (all its clones), recorded
    by a forward hook on the module: no model option, so batching is not affected."""
    batches = []
    handle = model.model.diffusion_model.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(args[0].shape[0]), with_kwargs=True)
    try:
        yield batches
    finally:
        handle.remove()


def test_members_with_one_checkpoint_and_one_latent_share_one_unet_call_per_step(
        amdm, model_a, prompts, sd15, encode):
    """The same checkpoint with other prompts: inside the window both members' conds go
    through one UNet call per step, a negative prompt they share (here encoded twice from
    the same text) evaluated once; the result is the sequential one's (members whose
    options differ by an attention patch that changes nothing are not batched)."""
    Member, Schedule = amdm
    # Shared noise: the members step from one latent from the window's first step on.
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    counted = model_a.clone()
    empty_again = encode(sd15[1], "")
    assert empty_again[0][0] is not prompts["empty"][0][0]
    with unet_batches(model_a) as batches:
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


# --- batching with the ecosystem's attention patches -----------------------------------------

def _own_prompts(Member, model, other, prompts):
    return [Member(model, prompts["red"], prompts["empty"], 7.0),
            Member(other, prompts["blue"], prompts["cat"], 5.0)]


# Each member's (positive, negative) prompt names, and the items of one batched call: every
# distinct prompt once per role it has (a list that is one member's positive and another's
# negative is evaluated as both).
PROMPT_SETS = {"own prompts": ((("red", "empty"), ("blue", "cat")), 4),
               "shared empty prompt": ((("red", "empty"), ("empty", "empty")), 3)}


def _members(Member, models, prompts, names):
    return [Member(model, prompts[positive], prompts[negative], cfg)
            for model, (positive, negative), cfg in zip(models, names, (7.0, 5.0))]


@pytest.mark.parametrize("case", list(PROMPT_SETS))
def test_an_ipadapter_style_patch_sees_cond_and_uncond_per_member_when_batched(amdm, model_a, prompts, case):
    """Two members with their own prompts and negatives on one MODEL with an attention patch
    that indexes (cond, uncond)[i]: evaluated in one call, each item tagged 0 or 1, the
    result is that of the same members on separately patched MODELs (never batched)."""
    from support.patch_nodes import IPAdapterStylePatch
    Member, Schedule = amdm
    names, items = PROMPT_SETS[case]
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    patched = model_a.clone()
    patched.set_model_attn2_patch(IPAdapterStylePatch(1.3, 0.7))
    separately = model_a.clone()
    separately.set_model_attn2_patch(IPAdapterStylePatch(1.3, 0.7))
    with unet_batches(model_a) as batches:
        together = amdm_sampler(_members(Member, (patched, patched), prompts, names), schedule, "euler")
        assert batches.count(items) == 4, batches  # one call per window step
        batches.clear()
        apart = amdm_sampler(_members(Member, (patched, separately), prompts, names), schedule, "euler")
        assert set(batches) == {2}, batches
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5 * apart.abs().max().item())
    plain = amdm_sampler(_members(Member, (model_a, model_a), prompts, names), schedule, "euler")
    assert not torch.allclose(together, plain, atol=1e-3), "the patch must act"


def test_an_apply_model_wrapper_sees_cond_and_uncond_per_member_when_batched(amdm, model_a, prompts):
    """Another pack's APPLY_MODEL wrapper that picks (cond, uncond)[i] per item sees the tags
    as a patch does (the tagging wrapper is the outermost): batched equals apart."""
    import comfy.patcher_extension
    from support.patch_nodes import ip_adapter_style_wrapper
    Member, Schedule = amdm
    names, items = PROMPT_SETS["shared empty prompt"]
    schedule = Schedule(end_percent=0.5, noise_mode="shared")

    def wrapped():
        model = model_a.clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "ip_adapter_style",
                                   ip_adapter_style_wrapper(1.3, 0.7))
        return model
    patched, separately = wrapped(), wrapped()
    with unet_batches(model_a) as batches:
        together = amdm_sampler(_members(Member, (patched, patched), prompts, names), schedule, "euler")
        assert batches.count(items) == 4, batches
    apart = amdm_sampler(_members(Member, (patched, separately), prompts, names), schedule, "euler")
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5 * apart.abs().max().item())
    plain = amdm_sampler(_members(Member, (model_a, model_a), prompts, names), schedule, "euler")
    assert not torch.allclose(together, plain, atol=1e-3), "the wrapper must act"


def test_a_reference_only_style_patch_works_on_its_chunks_when_batched(amdm, model_a, prompts):
    """An attn1 patch that, like reference-only, works on fixed chunks of the latent's batch
    size: a batched call keeps that layout (every cond list holds the whole latent batch),
    so batched equals apart, at a latent batch of 2."""
    from support.patch_nodes import reference_only_style
    from support.sampling import empty_latent
    Member, Schedule = amdm
    names, _ = PROMPT_SETS["own prompts"]
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    latent = empty_latent(batch=2)

    def patched():
        model = model_a.clone()
        model.set_model_attn1_patch(reference_only_style(2))
        return model
    first, second = patched(), patched()
    with unet_batches(model_a) as batches:
        together = amdm_sampler(_members(Member, (first, first), prompts, names), schedule, "euler", latent)
        assert batches.count(8) == 4, batches  # 4 cond lists of 2 items in one call per window step
    apart = amdm_sampler(_members(Member, (first, second), prompts, names), schedule, "euler", latent)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5 * apart.abs().max().item())
    plain = amdm_sampler(_members(Member, (model_a, model_a), prompts, names), schedule, "euler", latent)
    assert not torch.allclose(together, plain, atol=1e-3), "the patch must act"


def test_patches_that_could_cross_members_are_not_batched(amdm, model_a, prompts):
    """ComfyUI's own SAG records the negative's attention in its patch for its post-CFG
    function; a unet function wrapper reads the call's batch layout itself: such members
    are evaluated one at a time, and the result is that of separately patched MODELs."""
    from support.patch_nodes import batch_layout_wrapper
    from comfyui_amdm.nodes import sharing
    Member, Schedule = amdm
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    sag = run_node("SelfAttentionGuidance", model=model_a, scale=0.8, blur_sigma=2.0)[0]
    reference = model_a.clone()
    reference.set_model_unet_function_wrapper(batch_layout_wrapper(0.3))
    assert sharing.batchable(model_a) and not sharing.batchable(sag) and not sharing.batchable(reference)
    for model in (sag, reference):
        alone = model.clone()
        with unet_batches(model_a) as batches:
            together = amdm_sampler(_own_prompts(Member, model, model, prompts), schedule, "euler")
            assert max(batches) <= 2, batches
        apart = amdm_sampler(_own_prompts(Member, model, alone, prompts), schedule, "euler")
        torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5 * apart.abs().max().item())


def test_members_sharing_one_patch_object_on_two_models_are_tagged_too(amdm, model_a, prompts):
    """Two MODELs that share one patch function object evaluate alike: they are batched,
    and the patch still sees each member's cond and uncond."""
    from support.patch_nodes import IPAdapterStylePatch
    Member, Schedule = amdm
    patch = IPAdapterStylePatch(1.5, 0.5)
    first, second = model_a.clone(), model_a.clone()
    first.set_model_attn2_patch(patch)
    second.set_model_attn2_patch(patch)
    schedule = Schedule(end_percent=0.5, noise_mode="shared")
    with unet_batches(model_a) as batches:
        together = amdm_sampler(_own_prompts(Member, first, second, prompts), schedule, "euler")
    assert batches.count(4) == 4, batches
    separately = model_a.clone()
    separately.set_model_attn2_patch(IPAdapterStylePatch(1.5, 0.5))
    apart = amdm_sampler(_own_prompts(Member, first, separately, prompts), schedule, "euler")
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5 * apart.abs().max().item())


# --- what a resident copy costs and when it is made --------------------------------------------

def test_no_resident_copy_when_the_members_never_step_in_turn(amdm, model_a, prompts, fixture_files, monkeypatch):
    """A LoRA clone whose window holds no step of the run, or that only hands over to the
    target, needs no copy of the checkpoint."""
    from comfyui_amdm.amdm_core import StepRange
    from comfyui_amdm.nodes import compat
    Member, Schedule = amdm
    lora = lora_clone(model_a, fixture_files, 0.9)
    with recording(monkeypatch, compat, "independent_copy") as copies:
        amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                      Member(lora, prompts["blue"], prompts["empty"], 5.0)],
                     Schedule(start_step=50, end_step=60), "euler")
        amdm_sampler([Member(lora, prompts["blue"], prompts["empty"], 5.0, step_range=StepRange(end_step=3)),
                      Member(model_a, prompts["red"], prompts["empty"], 7.0, step_range=StepRange(start_step=3))],
                     Schedule(target_member=2), "euler")
        assert copies == []
        amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                      Member(lora, prompts["blue"], prompts["empty"], 5.0)], Schedule(end_step=2), "euler")
        assert len(copies) == 1


def test_the_memory_check_counts_a_shared_checkpoint_once(model_a, fixture_files):
    """A target and its LoRA clone hold one module: one more copy needs twice the module and
    the inference reserve, not three times."""
    from comfyui_amdm.nodes import sharing
    lora = lora_clone(model_a, fixture_files)
    size = model_a.model_size()
    assert sharing.copy_memory_needed([model_a, lora], lora) == \
        2 * size + int(comfy.model_management.minimum_inference_memory())


@pytest.mark.parametrize("modules, copied", [(2.5, True), (1.5, False)])
def test_a_resident_copy_is_made_where_the_shared_checkpoint_and_one_copy_fit(
        amdm, model_a, prompts, fixture_files, monkeypatch, modules, copied):
    """The decision itself: on a device that holds ComfyUI's inference reserve and 2.5
    times the checkpoint, a LoRA clone stepping in turn with its target gets a resident copy
    (target and clone share one module, so one copy needs two); with 1.5 times, none.
    Counting the shared module twice would refuse the copy at 2.5 too."""
    from comfyui_amdm.amdm_core import Span
    from comfyui_amdm.nodes import sharing
    Member, _ = amdm
    lora = lora_clone(model_a, fixture_files, 0.6)  # a MODEL of its own: copies are kept per MODEL
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(lora, prompts["blue"], prompts["empty"], 5.0)]
    total = int(modules * model_a.model_size() + comfy.model_management.minimum_inference_memory())
    monkeypatch.setattr(comfy.model_management, "get_total_memory",
                        lambda dev=None, torch_total_too=False: (total, total) if torch_total_too else total)
    models = sharing.resident_models(members, 0, [Span(range(0, 4), (0, 1))])
    on_a_copy = models[1].model is not model_a.model
    assert models[0] is model_a and on_a_copy == copied and (models[1] is lora) == (not copied)


def test_a_resident_copy_shares_no_hook_state_with_its_original(model_a, fixture_files):
    from comfyui_amdm.nodes import compat
    lora = lora_clone(model_a, fixture_files, 0.4)
    copy = compat.independent_copy(lora)
    assert copy.model is not lora.model and copy.parent is None
    assert copy.hook_backup is not lora.hook_backup and copy.hook_backup == {}


def test_members_on_devices_load_in_one_call(amdm, model_a, model_b, prompts, monkeypatch):
    """Before the members of a window step run on their devices, they are loaded together:
    one load call for all of them, reserving what each one's sampling reserves, so that two
    checkpoints on one GPU cannot evict each other before the workers run."""
    from comfyui_amdm.nodes import sessions
    guiders = []
    for model, prompt in ((model_a, prompts["red"]), (model_b, prompts["blue"])):
        guider = comfy.samplers.CFGGuider(model.clone())
        guider.set_conds(prompt, prompts["empty"])
        guider.loaded_models = []
        guiders.append(guider)
    comfy.model_management.unload_all_models()
    with recording(monkeypatch, comfy.model_management, "load_models_gpu") as loads:
        sessions.load_together(guiders, 300, 200)
    assert len(loads) == 1
    args, kwargs = loads[0]
    assert [p.model for p in args[0]] == [model_a.model, model_b.model]
    assert (kwargs["memory_required"], kwargs["minimum_memory_required"]) == (300, 200)
    loaded = comfy.model_management.loaded_models()
    assert all(any(m is g.model_patcher for m in loaded) for g in guiders)


def test_a_window_step_on_several_gpus_loads_its_members_in_one_call(amdm, model_a, model_b,
                                                                     prompts, monkeypatch):
    """The per-device path of a window step, as the run drives it: two members on two GPUs
    are handed to one load call (reserving what both reserve) before any device steps, and
    each device's steps run on its pool worker. On a CPU machine the sessions are prepared
    on the CPU and then placed on two GPUs, and the pool is a stand-in."""
    from comfyui_amdm.nodes import compat, guider, sharing
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    amdm_guider = guider.AMDMGuider(members, Schedule())
    latent = empty_latent()["samples"]
    noise = torch.randn(latent.shape, generator=torch.manual_seed(0))
    sigmas = run_node("BasicScheduler", model=model_a, scheduler="normal", steps=4, denoise=1.0)[0]
    models = [member.model for member in members]
    run = guider._Run(amdm_guider, amdm_guider.plan(sigmas), comfy.samplers.ksampler("euler"), models,
                      noise, latent, None, sigmas, None, 0, None)
    pools = []
    monkeypatch.setattr(compat, "device_pool", lambda devices: pools.append(StandInPool(devices)) or pools[-1])
    try:
        sessions = [run.open(i, noise, latent, sigmas, 0) for i in range(2)]
        for number, session in enumerate(sessions):
            session.device = torch.device("cuda", number)
        shared = sharing.SharedEvaluation(sessions, models, members, False)
        states = [torch.zeros(2), torch.full((2,), 2.0)]
        comfy.model_management.unload_all_models()
        with recording(monkeypatch, guider, "load_together") as together, \
                recording(monkeypatch, comfy.model_management, "load_models_gpu") as loads:
            with run.stepping(sessions, [0, 1], shared) as map_steps:
                proposals = map_steps([lambda x, k: x + k, lambda x, k: x * k], states, 3)
    finally:
        run.close_all()
    [pool] = pools
    assert pool.submitted == [torch.device("cuda", 0), torch.device("cuda", 1)] and pool.shut_down
    assert [p.tolist() for p in proposals] == [[3.0, 3.0], [6.0, 6.0]]
    assert len(together) == 1 and len(loads) == 1
    (handed, memory, minimum), _ = together[0]
    assert list(handed) == [session.guider for session in sessions]
    assert (memory, minimum) == (sum(s.memory_required for s in sessions),
                                 sum(s.minimum_memory_required for s in sessions))
    assert all(any(p is s.patcher for p in loads[0][0][0]) for s in sessions)


def test_a_worker_error_is_raised_once_every_device_answered():
    """One device's step fails: the others' results are collected first, so that no worker
    is left with a result nobody reads (the next step would read it as its own). On
    ComfyUI's pool where the release has one, else on a stand-in with its interface."""
    from comfyui_amdm.nodes import compat, guider
    devices = [torch.device("cpu", 0), torch.device("cpu", 1)]
    pool = compat.device_pool(devices) or StandInPool(devices)
    release = threading.Event()

    def fails():
        raise RuntimeError("device 0 failed")

    def slow(value):
        release.wait(5)
        return [torch.tensor(value)]
    try:
        threading.Timer(0.2, release.set).start()
        pool.submit(devices[0], fails)
        pool.submit(devices[1], slow, 1.0)
        with pytest.raises(RuntimeError, match="device 0 failed"):
            guider.gather(pool, {devices[0]: [0], devices[1]: [1]}, 2)
        pool.submit(devices[1], lambda: [torch.tensor(2.0)])
        assert pool.get_result(devices[1])[0][0].item() == 2.0
    finally:
        pool.shutdown()
