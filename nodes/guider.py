"""AMDM inside ComfyUI's own sampler loop.

AMDMGuider is a CFGGuider for the target member. Its sample() hands ComfyUI a KSAMPLER
whose function drives the user's sampler in segments: the target alone before the window,
all members one step at a time inside it (aggregated by amdm_core), the target alone
after it. Noise scaling, inpainting, CFG, patches, hooks, model loading and the progress
callback all stay ComfyUI's: every member is prepared by a stock CFGGuider.sample call,
nested so that all of them are live during the window and released after it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch

import comfy.model_management
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers

from ..amdm_core import (Schedule, WindowPlan, compensated_cfg, derive_seed, guidance_factors,
                         run_window, step_weights, window_steps)
from .members import Member, check_members, member_label

logger = logging.getLogger(__name__)

# Keys of derive_seed: separate streams for member noise, window steps and the tail.
NOISE_STREAM, STEP_STREAM, TAIL_STREAM = 1, 2, 3

Callback = Callable[[dict], None]


def _offset_callback(callback: Optional[Callback], offset: int) -> Optional[Callback]:
    """k-diffusion numbers steps from 0 in every call; the progress bar counts the run."""
    if callback is None or offset == 0:
        return callback
    return lambda info: callback({**info, "i": info["i"] + offset})


class _LiveMember:
    """A member whose CFGGuider.sample is in progress: conds processed, model loaded."""

    def __init__(self, guider: comfy.samplers.CFGGuider, model_k: Any, x_start: torch.Tensor,
                 extra_args: dict):
        self.guider = guider
        self.model_k = model_k
        self.x_start = x_start
        self.extra_args = extra_args
        # What ComfyUI reserved when it first loaded this member, for reloads in the window.
        self.memory_required, self.minimum_memory_required = \
            comfy.sampler_helpers.estimate_memory(guider.model_patcher, x_start.shape,
                                                  guider.original_conds)

    def activate(self) -> None:
        """Make this member's weights the live ones before evaluating it.

        Members that are clones of one checkpoint (a LoRA on one of them, say) share the
        torch module: loading one patches its weights in and detaches the other, and the
        model's current_patcher decides whose hooks apply. Members on distinct models
        stay loaded, so for them this is two identity checks.
        """
        patcher = self.guider.model_patcher
        if patcher not in comfy.model_management.loaded_models():
            comfy.model_management.load_models_gpu(
                [patcher, *self.guider.loaded_models], memory_required=self.memory_required,
                minimum_memory_required=self.minimum_memory_required)
        if patcher.model.current_patcher is not patcher:
            patcher.pre_run()


class _Run:
    """State of one AMDMGuider.sample call."""

    def __init__(self, guider: "AMDMGuider", sampler: comfy.samplers.KSAMPLER,
                 noise: torch.Tensor, latent_image: torch.Tensor,
                 denoise_mask: Optional[torch.Tensor], seed: Optional[int],
                 batch_index: Optional[Sequence[int]]):
        self.guider = guider
        self.sampler = sampler
        self.noise = noise
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask
        self.seed = 0 if seed is None else seed
        self.batch_index = batch_index
        self.live: dict[int, _LiveMember] = {}

    def step_seed(self, *keys: int) -> int:
        return derive_seed(self.seed, *keys)

    def segment(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, first: int,
                stop: int, extra_args: dict, callback: Optional[Callback], disable: bool,
                seed: int) -> torch.Tensor:
        """The user's sampler from step ``first`` to step ``stop`` in one call."""
        if first == stop:
            return x
        return self.sampler.sampler_function(
            model_k, x, sigmas[first:stop + 1], extra_args={**extra_args, "seed": seed},
            callback=_offset_callback(callback, first), disable=disable,
            **self.sampler.extra_options)

    def trajectory(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor,
                   extra_args: dict, callback: Optional[Callback] = None,
                   disable: bool = False) -> torch.Tensor:
        """Called by KSAMPLER.sample with the target's noise-scaled start latent."""
        window = self.guider.window(sigmas)
        n_steps = len(sigmas) - 1
        seed = extra_args.get("seed", self.seed)
        x = self.segment(model_k, x, sigmas, 0, window.start, extra_args, callback, disable,
                         seed)
        if not window:
            return x
        target = self.guider.target_index
        self.live[target] = _LiveMember(self.guider, model_k, x, extra_args)
        others = [i for i in range(len(self.guider.members)) if i != target]
        # Members joining after step 0 start from the target's latent: no noise of their own.
        x = self.with_members_live(others, sigmas, own_noise=window.start == 0,
                                   body=lambda: self.aggregate(sigmas, window, callback))
        self.live[target].activate()
        # A ControlNet wired into several members is one object: the members' cleanup just
        # reset it, so it is prepared again for the target.
        for conds in self.guider.conds.values():
            comfy.samplers.pre_run_control(self.guider.inner_model, conds)
        return self.segment(model_k, x, sigmas, window.stop, n_steps, extra_args, callback,
                            disable, self.step_seed(TAIL_STREAM))

    def with_members_live(self, indices: Sequence[int], sigmas: torch.Tensor, own_noise: bool,
                          body: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``body`` inside a CFGGuider.sample call of every member in ``indices``."""
        if not indices:
            return body()
        index, rest = indices[0], indices[1:]
        member = self.guider.members[index]
        member_guider = comfy.samplers.CFGGuider(member.model)
        member_guider.set_conds(member.positive, member.negative)
        member_guider.set_cfg(member.cfg)
        result: list[torch.Tensor] = []

        def enter(model_k: Any, x: torch.Tensor, sigmas_: torch.Tensor, extra_args: dict,
                  callback: Any = None, disable: bool = False) -> torch.Tensor:
            self.live[index] = _LiveMember(member_guider, model_k, x, extra_args)
            result.append(self.with_members_live(rest, sigmas, own_noise, body))
            return x

        logger.debug("preparing %s", member_label(index, member.name))
        noise = self.member_noise(index) if own_noise else self.noise
        member_guider.sample(noise, self.latent_image,
                             comfy.samplers.KSAMPLER(enter, inpaint_options=self.sampler.inpaint_options),
                             sigmas, denoise_mask=self.denoise_mask, disable_pbar=True,
                             seed=self.step_seed(NOISE_STREAM, index))
        return result[0]

    def member_noise(self, index: int) -> torch.Tensor:
        """Independent noise per member derived from the seed, unless shared or disabled
        (all-zero noise, as DisableNoise gives). Drawn as KSampler draws the target's, so
        a latent's batch_index selects the same noise item for every member."""
        if self.guider.schedule.noise_mode == "shared" or not torch.any(self.noise):
            return self.noise
        noise = comfy.sample.prepare_noise(self.noise, self.step_seed(NOISE_STREAM, index),
                                           self.batch_index)
        return noise.to(self.noise.device)

    def step_function(self, index: int, sigmas: torch.Tensor, window: range,
                      cfg_factors: torch.Tensor,
                      callback: Optional[Callback]) -> Callable[[torch.Tensor, int], torch.Tensor]:
        live = self.live[index]
        is_target = index == self.guider.target_index
        sampler_function = self.sampler.sampler_function
        extra_options = self.sampler.extra_options
        cfg = self.guider.members[index].cfg
        cfgs = [compensated_cfg(cfg, factor) for factor in cfg_factors.tolist()]

        def step(x: torch.Tensor, k: int) -> torch.Tensor:
            comfy.model_management.throw_exception_if_processing_interrupted()
            live.activate()
            live.guider.cfg = cfgs[k - window.start]
            return sampler_function(
                live.model_k, x, sigmas[k:k + 2],
                extra_args={**live.extra_args, "seed": self.step_seed(STEP_STREAM, index, k)},
                callback=_offset_callback(callback, k) if is_target else None, disable=True,
                **extra_options)
        return step

    def aggregate(self, sigmas: torch.Tensor, window: range,
                  callback: Optional[Callback]) -> torch.Tensor:
        """The window: every member steps, amdm_core merges; returns the target's latent."""
        members = self.guider.members
        target = self.guider.target_index
        x_target = self.live[target].x_start
        states = [x_target if (i == target or window.start > 0) else self.live[i].x_start
                  for i in range(len(members))]
        plan = self.guider.plan(window)
        cfg_factors = guidance_factors(plan.weights, plan.aggregation, self.guider.schedule.guidance)
        step_fns = [self.step_function(i, sigmas, window, cfg_factors, callback)
                    for i in range(len(members))]
        try:
            states = run_window(states, step_fns, plan.to(x_target.device))
        finally:
            self.guider.cfg = members[target].cfg  # the target finishes at its own scale
        return states[target]


class AMDMGuider(comfy.samplers.CFGGuider):
    """A GUIDER that aggregates the early steps of several members into the target."""

    def __init__(self, members: Sequence[Member], schedule: Schedule):
        check_members(members, schedule)
        if schedule.aggregation == "paper" and len(members) > 2:
            logger.warning("aggregation 'paper' with %d members: its coefficients sum to more "
                           "than one, so the merged latent grows whenever the members agree; "
                           "'linear' keeps it on scale", len(members))
        self.members = tuple(members)
        self.schedule = schedule
        self.target_index = schedule.target_member - 1
        target = self.members[self.target_index]
        super().__init__(target.model)
        self.set_conds(target.positive, target.negative)
        self.set_cfg(target.cfg)

    def window(self, sigmas: torch.Tensor) -> range:
        """Aggregated steps for these sigmas; empty for a single member (plain sampling)."""
        n_steps = max(len(sigmas) - 1, 0)
        if len(self.members) < 2:
            return range(n_steps, n_steps)
        model_sampling = self.model_patcher.get_model_object("model_sampling")
        return window_steps(sigmas.tolist(),
                            model_sampling.percent_to_sigma(self.schedule.start_percent),
                            model_sampling.percent_to_sigma(self.schedule.end_percent),
                            self.schedule.start_step, self.schedule.end_step)

    def plan(self, window: range) -> WindowPlan:
        schedule = self.schedule
        weights = step_weights([m.weight for m in self.members], self.target_index,
                               schedule.weight_curve, len(window))
        deviation = torch.tensor([schedule.deviation_strength * m.deviation for m in self.members],
                                 dtype=torch.float32).expand(len(window), len(self.members))
        return WindowPlan(window, weights, deviation, schedule.aggregation,
                          schedule.deviation_mode)

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any,
               sigmas: torch.Tensor, denoise_mask: Optional[torch.Tensor] = None,
               callback: Any = None, disable_pbar: bool = False, seed: Optional[int] = None,
               batch_index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """CFGGuider.sample; ``batch_index`` (a LATENT's) lets the other members' noise
        follow the batch items as the target's does."""
        if not isinstance(sampler, comfy.samplers.KSAMPLER) or \
                type(sampler).sample is not comfy.samplers.KSAMPLER.sample:
            raise TypeError(f"AMDM steps a k-diffusion SAMPLER (comfy.samplers.KSAMPLER) one "
                            f"step at a time; {type(sampler).__name__} cannot be driven so")
        run = _Run(self, sampler, noise, latent_image, denoise_mask, seed, batch_index)
        trajectory = comfy.samplers.KSAMPLER(run.trajectory, inpaint_options=sampler.inpaint_options)
        return super().sample(noise, latent_image, trajectory, sigmas, denoise_mask, callback,
                              disable_pbar, seed)
