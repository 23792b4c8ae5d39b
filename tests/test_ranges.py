"""Members with their own ranges of steps: a hard handoff is the KSamplerAdvanced chain users
wire for it, bit for bit and evaluation for evaluation; overlapping ranges aggregate; bad
ranges are errors before any evaluation; a finished member's weights go back to ComfyUI
before a later member loads."""
from __future__ import annotations


import comfy.model_management
import pytest
import torch

from support.comfy_env import run_node
from support.sampling import (SEED, EvaluationLog, amdm, amdm_sampler,  # noqa: F401
                              empty_latent, interrupting_clone, ksampler, model_a, model_b, prompts,
                              vram_state)

STEPS = 8


def chain(stages: list, sampler: str, latent=None, scheduler: str = "normal") -> torch.Tensor:
    """The KSamplerAdvanced chain users wire for a handoff: stage i runs steps
    [start_i, end_i) of one schedule, the first adds the noise, the others continue the
    LATENT with add_noise disabled, each but the last returns with its leftover noise."""
    latent = empty_latent() if latent is None else latent
    for number, (model, positive, negative, cfg, start, end) in enumerate(stages):
        latent = run_node("KSamplerAdvanced", model=model, add_noise="enable" if number == 0 else "disable",
                          noise_seed=SEED, steps=STEPS, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                          positive=positive, negative=negative, latent_image=latent, start_at_step=start,
                          end_at_step=end,
                          return_with_leftover_noise="enable" if number < len(stages) - 1 else "disable")[0]
    return latent["samples"]


def by_steps(start: int, end: int):
    from comfyui_amdm.amdm_core import StepRange
    return StepRange(start_step=start, end_step=0 if end >= STEPS else end)


def handoff_stack(Member, stages: list) -> list:
    return [Member(model, positive, negative, cfg, step_range=by_steps(start, end))
            for model, positive, negative, cfg, start, end in stages]


def chain_and_handoff(Member, Schedule, log: EvaluationLog, stages: list, sampler: str) -> tuple:
    """The chain's latent and each stage's evaluated sigmas, then the same of the pack's
    handoff over those stages' ranges (the last stage the target)."""
    reference = chain(stages, sampler)
    chain_calls = {name: list(calls) for name, calls in log.sigmas.items()}
    for calls in log.sigmas.values():
        calls.clear()
    out = amdm_sampler(handoff_stack(Member, stages), Schedule(target_member=len(stages)), sampler, steps=STEPS)
    return reference, chain_calls, out, log.sigmas


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_a_hard_handoff_is_the_ksampleradvanced_chain(amdm, model_a, model_b, prompts, sampler):
    Member, Schedule = amdm
    log = EvaluationLog()
    stages = [(log.watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0, 0, 3),
              (log.watch(model_b, "b"), prompts["blue"], prompts["cat"], 4.0, 3, 10000)]
    reference, chain_calls, out, calls = chain_and_handoff(Member, Schedule, log, stages, sampler)
    assert torch.equal(out, reference)
    assert calls == chain_calls and len(chain_calls["a"]) > 0 and len(chain_calls["b"]) > 0


def test_a_member_with_a_whole_run_wrapper_hands_over_as_in_the_chain(amdm, model_a, model_b, prompts):
    """ComfyUI's EasyCache (wrappers around a whole run: OUTER_SAMPLE, and its own around the
    diffusion model) on the first expert wraps its stage as it wraps that KSamplerAdvanced
    stage: the chain's result bit for bit, with the chain's UNet forwards, fewer than without
    EasyCache (it acts); where such a member would aggregate, it is refused before sampling."""
    Member, Schedule = amdm
    cached = run_node("EasyCache", model=model_a, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0,
                      verbose=False)[0]
    forwards = []
    # On the UNet's output block: EasyCache skips a step inside the diffusion model's forward.
    hook = model_a.model.diffusion_model.out.register_forward_pre_hook(
        lambda module, args: forwards.append(1))
    try:
        def stages(first):
            return [(first, prompts["red"], prompts["empty"], 7.0, 0, 6),
                    (model_b, prompts["blue"], prompts["cat"], 4.0, 6, 10000)]
        chain(stages(model_a), "euler")
        uncached = len(forwards)
        forwards.clear()
        reference = chain(stages(cached), "euler")
        chain_forwards = len(forwards)
        forwards.clear()
        out = amdm_sampler(handoff_stack(Member, stages(cached)), Schedule(target_member=2), "euler", steps=STEPS)
        assert torch.equal(out, reference)
        assert len(forwards) == chain_forwards < uncached
        overlapping = handoff_stack(Member, [(cached, prompts["red"], prompts["empty"], 7.0, 0, 6),
                                             (model_b, prompts["blue"], prompts["cat"], 4.0, 4, 10000)])
        forwards.clear()
        with pytest.raises(ValueError, match="AMDMSampler: member 1's MODEL carries wrappers around a whole "
                                             "sampling run \\(easycache\\), which cannot wrap its part of a stage where "
                                             "members aggregate"):
            amdm_sampler(overlapping, Schedule(target_member=2), "euler", steps=STEPS)
        assert forwards == []
    finally:
        hook.remove()


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_three_stages_on_lora_clones_of_one_checkpoint(amdm, model_a, prompts, fixture_files, sampler):
    """Staged LoRAs: the checkpoint alone, then two LoRA strengths, each at its own cfg; the
    chain's result and its evaluations, stage by stage."""
    Member, Schedule = amdm
    log = EvaluationLog()
    lora = [run_node("LoraLoaderModelOnly", model=model_a, lora_name=fixture_files["lora"].name,
                     strength_model=strength)[0] for strength in (1.0, 0.5)]
    stages = [(log.watch(model_a, "base"), prompts["red"], prompts["empty"], 6.0, 0, 2),
              (log.watch(lora[0], "lora 1.0"), prompts["red"], prompts["empty"], 2.0, 2, 5),
              (log.watch(lora[1], "lora 0.5"), prompts["red"], prompts["empty"], 1.0, 5, 10000)]
    reference, chain_calls, out, calls = chain_and_handoff(Member, Schedule, log, stages, sampler)
    assert torch.equal(out, reference)
    assert calls == chain_calls and all(len(stage_calls) > 0 for stage_calls in chain_calls.values())
    # nothing leaks: the checkpoint alone samples as before
    assert torch.equal(ksampler(model_a, prompts["red"], prompts["empty"], 6.0, "euler"),
                       ksampler(model_a.clone(), prompts["red"], prompts["empty"], 6.0, "euler"))


def test_a_handoff_runs_samplers_that_cannot_aggregate(amdm, model_a, model_b, prompts):
    """Each stage is one call of the sampler, as in the chain: sa_solver hands over too
    (it cannot run one step at a time, so an overlap with it is refused)."""
    Member, Schedule = amdm
    stages = [(model_a, prompts["red"], prompts["empty"], 7.0, 0, 4),
              (model_b, prompts["blue"], prompts["empty"], 4.0, 4, 10000)]
    assert torch.equal(amdm_sampler(handoff_stack(Member, stages), Schedule(target_member=2), "sa_solver",
                                    steps=STEPS),
                       chain(stages, "sa_solver"))
    overlapping = [Member(model_a, prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 5)),
                   Member(model_b, prompts["blue"], prompts["empty"], 4.0, step_range=by_steps(3, STEPS))]
    with pytest.raises(ValueError, match="AMDMSampler: sampler 'sa_solver' .* cannot drive it one step"):
        amdm_sampler(overlapping, Schedule(target_member=2), "sa_solver", steps=STEPS)


def test_an_overlap_aggregates_across_the_boundary(amdm, model_a, model_b, prompts):
    """A soft handoff: both experts step in the overlap and are merged. With the first
    expert at weight 0 the merge is the second's own step: the run is the hard switch at
    the overlap's start (up to the LATENT round trip a chain makes at its boundary)."""
    Member, Schedule = amdm
    log = EvaluationLog()
    first, second = log.watch(model_a, "a"), log.watch(model_b, "b")
    hard = amdm_sampler([Member(first, prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 3)),
                         Member(second, prompts["blue"], prompts["empty"], 4.0, step_range=by_steps(3, STEPS))],
                        Schedule(target_member=2), "euler", steps=STEPS)
    for calls in log.sigmas.values():
        calls.clear()
    soft = amdm_sampler([Member(first, prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 5)),
                         Member(second, prompts["blue"], prompts["empty"], 4.0, step_range=by_steps(3, STEPS))],
                        Schedule(target_member=2), "euler", steps=STEPS)
    # steps 0-4 for the first expert, 3-7 for the second: each step one evaluation (cond and
    # uncond batched), so 5 distinct sigmas each
    assert len(set(log.sigmas["a"])) == 5 and len(set(log.sigmas["b"])) == 5
    assert not torch.allclose(soft, hard, atol=1e-3)
    silent = amdm_sampler([Member(first, prompts["red"], prompts["empty"], 7.0, weight=0.0,
                                  step_range=by_steps(0, 5)),
                           Member(second, prompts["blue"], prompts["empty"], 4.0, step_range=by_steps(3, STEPS))],
                          Schedule(target_member=2, guidance="averaged"), "euler", steps=STEPS)
    torch.testing.assert_close(silent, hard, rtol=1e-5, atol=1e-5 * hard.abs().max().item())


@pytest.mark.parametrize("ranges, message", [
    (((0, 3), (4, STEPS)), r"steps 3 to 3 \(progress .*\) are in no member's range"),
    (((0, STEPS), (20, 30)), r"member 2: its range \[0.0, 1.0\), steps \[20, end\) holds none of this run's 8 steps"),
    (((0, 4), (4, STEPS)), r"the target, member 1, is not active at the last step"),
])
def test_bad_ranges_are_errors_before_any_evaluation(amdm, model_a, model_b, prompts, ranges, message):
    Member, Schedule = amdm
    log = EvaluationLog()
    members = [Member(log.watch(model, name), prompts["red"], prompts["empty"], 7.0, step_range=by_steps(*steps))
               for model, name, steps in zip((model_a, model_b), "ab", ranges)]
    with pytest.raises(ValueError, match="AMDMSampler: .*" + message):
        amdm_sampler(members, Schedule(target_member=1), "euler", steps=STEPS)
    assert log.sigmas == {"a": [], "b": []}


@pytest.mark.parametrize("state", ["NORMAL_VRAM", "LOW_VRAM", "NO_VRAM"])
def test_a_finished_expert_is_unloaded_before_the_next_one_loads(amdm, model_a, model_b, prompts, state):
    """At every evaluation of the second expert the first one's weights are no longer
    loaded, in each of ComfyUI's VRAM modes; in an overlap both are, and after it the
    first is given back at once."""
    Member, Schedule = amdm
    loaded_at: dict[str, list[set]] = {"a": [], "b": []}

    def watch(model, name):
        watched = model.clone()

        def record(apply_model, args):
            loaded_at[name].append({id(m.model) for m in comfy.model_management.loaded_models() if m is not None})
            return apply_model(args["input"], args["timestep"], **args["c"])
        watched.set_model_unet_function_wrapper(record)
        return watched

    a, b = id(model_a.model), id(model_b.model)
    with vram_state(getattr(comfy.model_management.VRAMState, state)):
        amdm_sampler([Member(watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 4)),
                      Member(watch(model_b, "b"), prompts["blue"], prompts["empty"], 4.0,
                             step_range=by_steps(4, STEPS))],
                     Schedule(target_member=2), "euler", steps=STEPS)
        assert all(a in ids for ids in loaded_at["a"]) and len(loaded_at["a"]) == 4
        assert all(b in ids and a not in ids for ids in loaded_at["b"]) and len(loaded_at["b"]) == 4
        for seen in loaded_at.values():
            seen.clear()
        amdm_sampler([Member(watch(model_a, "a"), prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 5)),
                      Member(watch(model_b, "b"), prompts["blue"], prompts["empty"], 4.0,
                             step_range=by_steps(3, STEPS))],
                     Schedule(target_member=2), "euler", steps=STEPS)
        overlap, after = loaded_at["b"][:2], loaded_at["b"][2:]
        assert all({a, b} <= ids for ids in overlap) and len(after) == 3
        assert all(a not in ids for ids in after)  # given back as soon as its range ends


def test_members_leaving_a_window_stay_loaded_for_the_next_run(amdm, model_a, model_b, prompts):
    """A member whose AMDM window ends while the target goes on did not hand over: as
    ComfyUI keeps KSampler's model, both stay loaded after the run (the next run needs them)."""
    Member, Schedule = amdm
    with vram_state(comfy.model_management.VRAMState.NORMAL_VRAM):
        amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                      Member(model_b, prompts["blue"], prompts["empty"], 4.0)],
                     Schedule(end_percent=0.5), "euler", steps=STEPS)
        loaded = {id(m.model) for m in comfy.model_management.loaded_models() if m is not None}
    assert {id(model_a.model), id(model_b.model)} <= loaded


def test_an_interrupted_handoff_leaves_no_weights_patched(amdm, model_a, prompts, fixture_files):
    Member, Schedule = amdm
    lora = run_node("LoraLoaderModelOnly", model=model_a, lora_name=fixture_files["lora"].name,
                    strength_model=1.0)[0]
    interrupting, calls = interrupting_clone(lora, on_call=2)
    before = [ksampler(m, prompts["red"], prompts["empty"], 7.0, "euler") for m in (model_a, lora)]
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            amdm_sampler([Member(model_a, prompts["red"], prompts["empty"], 7.0, step_range=by_steps(0, 3)),
                          Member(interrupting, prompts["red"], prompts["empty"], 2.0, step_range=by_steps(3, STEPS))],
                         Schedule(target_member=2), "euler", steps=STEPS)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2
    after = [ksampler(m, prompts["red"], prompts["empty"], 7.0, "euler") for m in (model_a, lora)]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
