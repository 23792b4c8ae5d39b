"""AMDM inside ComfyUI's own sampler loop.

AMDMGuider is a CFGGuider for the target member. Its sample() hands ComfyUI a KSAMPLER
whose function drives the user's sampler in segments: the target alone before the window,
all members one step at a time inside it (aggregated by amdm_core), the target alone
after it. Noise scaling, inpainting, CFG, patches, hooks, model loading and the progress
callback all stay ComfyUI's.

Member lifetimes: every other member runs inside a stock CFGGuider.sample call of its own,
which prepares its conds, hooks, ControlNets and model and releases them when it returns.
Those calls are opened one inside the other (members in stack order) and closed in
reverse, so that all members are live during the window; each member's state while live is
a MemberSession.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..amdm_core import (Schedule, StepFn, StepMap, WindowPlan, compensated_cfg, derive_seed,
                         guidance_factors, one_after_another, progress_of, run_window,
                         step_weights, window_for)
from . import compat, samplers
from .members import Member, check_members, member_label
from .sharing import SharedEvaluation, resident_models, switch_weights

logger = logging.getLogger(__name__)

# Keys of derive_seed: separate streams for member noise, window steps and the tail.
NOISE_STREAM, STEP_STREAM, TAIL_STREAM = 1, 2, 3

Callback = Callable[[dict], None]


class SamplerDrive:
    """The user's KSAMPLER as AMDM drives it: whole segments and single window steps."""

    def __init__(self, sampler: Any):
        self.function, self.options, _ = compat.sampler_parts(sampler)
        self.name = samplers.sampler_name_of(self.function)
        self.behaviour = samplers.SAMPLERS.get(self.name) if self.name else None
        if self.behaviour is not None and self.behaviour.drive == samplers.REFUSED:
            raise ValueError(samplers.refusal(self.name))
        single = self.behaviour.single_step_sampler if self.behaviour else None
        self.single_step_function = compat.sampler_function(single) if single else self.function
        self.probed = self.behaviour is not None

    def probe(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor,
              extra_args: dict) -> None:
        """A sampler the table does not know is driven one step per call only if a one-step
        call demonstrably uses the model: run it on one step against two stand-in models
        (the denoised prediction 0 and x / 2) and require different results."""
        if self.probed:
            return
        name = getattr(self.function, "__name__", repr(self.function))
        results, evaluations = [], []
        for scale in (0.0, 0.5):
            stand_in = _StandInModel(model_k, scale)
            results.append(self.function(stand_in, x, sigmas[:2], extra_args={**extra_args},
                                         callback=None, disable=True, **self.options))
            evaluations.append(stand_in.calls)
        if min(evaluations) == 0 or torch.equal(results[0], results[1]):
            raise ValueError(f"sampler function '{name}' is not in AMDM's sampler table and a "
                             f"one-step call of it ignores the model, so it cannot be driven "
                             f"one step at a time; use {samplers.SUGGESTED}")
        logger.info("sampler function '%s' is not in AMDM's sampler table; a one-step call "
                    "uses the model (%d evaluations), so it is driven one step per call "
                    "(any multistep history restarts at each window step)", name,
                    evaluations[1])
        self.probed = True

    def run(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
            callback: Optional[Callback], seed: int) -> torch.Tensor:
        """The sampler over ``sigmas`` (any number of steps) in one call, no console bar."""
        function = self.single_step_function if len(sigmas) < 3 else self.function
        return function(model_k, x, sigmas, extra_args={**extra_args, "seed": seed},
                        callback=callback, disable=True, **self.options)


class _StandInModel:
    """A model_k whose prediction is ``scale * x``; attributes come from the real one, for
    samplers that read model_sampling or patchers off their model."""

    def __init__(self, model_k: Any, scale: float):
        self._model_k = model_k
        self._scale = scale
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return x * self._scale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model_k, name)


def _offset_callback(callback: Optional[Callback], offset: int) -> Optional[Callback]:
    """k-diffusion numbers steps from 0 in every call; the progress bar counts the run."""
    if callback is None or offset == 0:
        return callback
    return lambda info: callback({**info, "i": info["i"] + offset})


class MemberSession:
    """A member whose CFGGuider.sample is in progress: conds processed, model loaded.

    The member steps on its own model's device: a latent handed to it is moved there and
    its proposal goes back to the target's device, where aggregation runs.
    """

    def __init__(self, guider: Any, model_k: Any, x_start: torch.Tensor, extra_args: dict,
                 sigmas: torch.Tensor):
        self.guider = guider
        self.model_k = model_k
        self.x_start = x_start
        self.extra_args = extra_args
        self.device = x_start.device
        self.sigmas = sigmas.to(self.device)
        # What ComfyUI reserved when it first loaded this member, for reloads in the window.
        self.memory_required, self.minimum_memory_required = \
            compat.estimate_memory(guider, x_start.shape)

    def activate(self) -> None:
        """Make this member's weights the live ones before evaluating it (members that are
        clones of one checkpoint share its torch module; a reload reserves what ComfyUI's
        own sampling reserves). For members on distinct models, two identity checks."""
        compat.ensure_loaded(self.guider, self.memory_required, self.minimum_memory_required)


class _Run:
    """State of one AMDMGuider.sample call."""

    def __init__(self, guider: "AMDMGuider", drive: SamplerDrive, inpaint_options: dict,
                 models: Sequence[Any], noise: torch.Tensor, latent_image: torch.Tensor,
                 denoise_mask: Optional[torch.Tensor], seed: Optional[int],
                 batch_index: Optional[Sequence[int]]):
        self.guider = guider
        self.models = models
        self.drive = drive
        self.inpainting = inpaint_options
        self.noise = noise
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask
        self.seed = 0 if seed is None else seed
        self.batch_index = batch_index
        self.sessions: dict[int, MemberSession] = {}

    def step_seed(self, *keys: int) -> int:
        return derive_seed(self.seed, *keys)

    def window_step_seed(self, index: int, k: int) -> int:
        """Shared noise: every member draws the same stochastic noise at step k, so that
        averaging their steps keeps its level; independent: each member its own."""
        if self.guider.schedule.noise_mode == "shared":
            return self.step_seed(STEP_STREAM, k)
        return self.step_seed(STEP_STREAM, index, k)

    def segment(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, first: int,
                stop: int, extra_args: dict, callback: Optional[Callback],
                seed: int) -> torch.Tensor:
        """The user's sampler from step ``first`` to step ``stop`` in one call."""
        if first == stop:
            return x
        return self.drive.run(model_k, x, sigmas[first:stop + 1], extra_args,
                              _offset_callback(callback, first), seed)

    def trajectory(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor,
                   extra_args: dict, callback: Optional[Callback] = None,
                   disable: bool = False) -> torch.Tensor:
        """Called by KSAMPLER.sample with the target's noise-scaled start latent."""
        n_steps = len(sigmas) - 1
        window = self.guider.window(sigmas)
        if window:
            self.drive.probe(model_k, x, sigmas, extra_args)
        # One console progress bar for the whole run: every sampler call below is silent.
        with tqdm(total=n_steps, disable=disable) as bar:
            def on_step(info: dict) -> None:
                bar.update(1)
                if callback is not None:
                    callback(info)

            seed = extra_args.get("seed", self.seed)
            x = self.segment(model_k, x, sigmas, 0, window.start, extra_args, on_step, seed)
            if not window:
                return x
            target = self.guider.target_index
            self.sessions[target] = MemberSession(self.guider, model_k, x, extra_args, sigmas)
            others = [i for i in range(len(self.guider.members)) if i != target]
            # Members joining after step 0 start from the target's latent: no noise of their own.
            x = self.with_sessions(others, sigmas, own_noise=window.start == 0,
                                   body=lambda: self.aggregate(window, on_step))
            self.sessions[target].activate()
            # A ControlNet wired into several members is one object: the members' cleanup
            # just reset it, so it is prepared again for the target.
            compat.prepare_controls_again(self.guider)
            return self.segment(model_k, x, sigmas, window.stop, n_steps, extra_args, on_step,
                                self.step_seed(TAIL_STREAM))

    def with_sessions(self, indices: Sequence[int], sigmas: torch.Tensor, own_noise: bool,
                      body: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``body`` inside a CFGGuider.sample call of every member in ``indices``."""
        if not indices:
            return body()
        index, rest = indices[0], indices[1:]
        member = self.guider.members[index]
        # A clone of its own: the member's guider registers (and restores) hook patches on
        # its patcher, which must never be the target's, even for the very same MODEL.
        member_guider = compat.CFGGuider(compat.clone_patcher(self.models[index]))
        member_guider.set_conds(member.positive, member.negative)
        member_guider.set_cfg(member.cfg)
        result: list[torch.Tensor] = []

        def enter(model_k: Any, x: torch.Tensor, sigmas_: torch.Tensor, extra_args: dict,
                  callback: Any = None, disable: bool = False) -> torch.Tensor:
            self.sessions[index] = MemberSession(member_guider, model_k, x, extra_args, sigmas_)
            result.append(self.with_sessions(rest, sigmas, own_noise, body))
            return x

        logger.debug("preparing %s", member_label(index, member.name))
        noise = self.member_noise(index) if own_noise else self.noise
        member_guider.sample(noise, self.latent_image,
                             compat.make_ksampler(enter, self.inpainting),
                             sigmas, denoise_mask=self.denoise_mask, disable_pbar=True,
                             seed=self.step_seed(NOISE_STREAM, index))
        return result[0]

    def member_noise(self, index: int) -> torch.Tensor:
        """Independent noise per member derived from the seed, unless shared or disabled
        (all-zero noise, as DisableNoise gives). Drawn as KSampler draws the target's, so
        a latent's batch_index selects the same noise item for every member."""
        if self.guider.schedule.noise_mode == "shared" or not torch.any(self.noise):
            return self.noise
        noise = compat.prepare_noise(self.noise, self.step_seed(NOISE_STREAM, index),
                                     self.batch_index)
        return noise.to(self.noise.device)

    def step_function(self, index: int, shared: SharedEvaluation, callback: Callback,
                      set_cfgs: Callable[[int], None]) -> StepFn:
        """Member ``index``'s proposal for step k, from a latent on the target's device."""
        session = self.sessions[index]
        home = self.sessions[self.guider.target_index].device
        is_target = index == self.guider.target_index
        drive = self.drive
        extra_args = shared.window_args(index, session.extra_args)

        def step(x: torch.Tensor, k: int) -> torch.Tensor:
            set_cfgs(k)
            proposal = drive.run(session.model_k, x.to(session.device),
                                 session.sigmas[k:k + 2], extra_args,
                                 _offset_callback(callback, k) if is_target else None,
                                 self.window_step_seed(index, k))
            return proposal.to(home)
        return step

    @contextlib.contextmanager
    def stepping(self, shared: SharedEvaluation) -> Iterator[StepMap]:
        """How the members' steps of one window step run: one after another, or, when they
        sit on several GPUs and ComfyUI has its multi-GPU thread pool, one worker per
        device at the same time. Loading and patch switching stay on this thread, before
        the steps start: ComfyUI's model management is not thread-safe."""
        sessions = [self.sessions[i] for i in range(len(self.guider.members))]
        groups: dict[torch.device, list[int]] = {}
        for i, session in enumerate(sessions):
            groups.setdefault(session.device, []).append(i)
        # A worker steps its device's members back to back, with no switch between them:
        # members that re-patch one module take turns on this thread instead.
        parallel = len(groups) > 1 and all(d.type == "cuda" for d in groups) and not any(
            switch_weights(self.models, self.guider.members, a, b)
            for indices in groups.values() for a, b in itertools.combinations(indices, 2))
        pool = compat.device_pool(groups) if parallel else None

        def one_by_one(step_fns: Sequence[StepFn], states: Sequence[torch.Tensor],
                       k: int) -> list[torch.Tensor]:
            shared.begin_step(states)
            proposals = []
            for session, step, x in zip(sessions, step_fns, states):
                compat.throw_if_interrupted()
                session.activate()
                proposals.append(step(x, k))
            return proposals

        def per_device(step_fns: Sequence[StepFn], states: Sequence[torch.Tensor],
                       k: int) -> list[torch.Tensor]:
            shared.begin_step(states)
            compat.throw_if_interrupted()
            for session in sessions:
                session.activate()
            for device, indices in groups.items():
                pool.submit(device, one_after_another, [step_fns[i] for i in indices],
                            [states[i] for i in indices], k)
            proposals: list[torch.Tensor] = [states[0]] * len(sessions)
            for device, indices in groups.items():
                results, error = pool.get_result(device)
                if error is not None:
                    raise error
                for i, proposal in zip(indices, results):
                    proposals[i] = proposal
            return proposals

        if pool is None:
            yield one_by_one
            return
        try:
            yield per_device
        finally:
            pool.shutdown()

    def aggregate(self, window: range, callback: Callback) -> torch.Tensor:
        """The window: every member steps, amdm_core merges; returns the target's latent."""
        members = self.guider.members
        target = self.guider.target_index
        x_target = self.sessions[target].x_start
        # With shared noise every member's start is the target's: one tensor for all.
        from_target = window.start > 0 or self.guider.schedule.noise_mode == "shared"
        states = [x_target if (i == target or from_target)
                  else self.sessions[i].x_start.to(x_target.device)
                  for i in range(len(members))]
        sessions = [self.sessions[i] for i in range(len(members))]
        shared = SharedEvaluation(sessions, self.models, members, self.denoise_mask is not None)
        plan = self.guider.plan(window)
        factors = guidance_factors(plan.weights, plan.aggregation, self.guider.schedule.guidance)
        cfgs = [[compensated_cfg(member.cfg, factor) for member in members]
                for factor in factors.tolist()]

        def set_cfgs(k: int) -> None:
            """Every member's CFG scale for window step k, set before any member steps
            (a batched evaluation reads the scales of all the members it serves)."""
            for session, cfg in zip(sessions, cfgs[k - window.start]):
                session.guider.set_cfg(cfg)

        step_fns = [self.step_function(i, shared, callback, set_cfgs) for i in range(len(members))]
        try:
            with self.stepping(shared) as map_steps:
                return run_window(states, step_fns, plan.to(x_target.device), map_steps)[target]
        finally:
            self.guider.set_cfg(members[target].cfg)  # the target finishes at its own scale


class AMDMGuider(compat.CFGGuider):
    """A GUIDER that aggregates the early steps of several members into the target."""

    def __init__(self, members: Sequence[Member], schedule: Schedule,
                 node: str = "AMDMGuider"):
        check_members(members, schedule)
        self.node = node
        _warn_on_noise_level(schedule, len(members))
        self.members = tuple(members)
        self.schedule = schedule
        self.target_index = schedule.target_member - 1
        target = self.members[self.target_index]
        super().__init__(target.model)
        self.set_conds(target.positive, target.negative)
        self.set_cfg(target.cfg)

    def window(self, sigmas: torch.Tensor) -> range:
        """Aggregated steps for these sigmas; empty for a single member (plain sampling).
        Logs a warning when a stack of several members gets an empty window."""
        n_steps = max(len(sigmas) - 1, 0)
        if len(self.members) < 2:
            return range(n_steps, n_steps)
        model_sampling = compat.model_sampling(compat.guider_model(self))
        sigma_list = sigmas.tolist()
        window = window_for(sigma_list, model_sampling.percent_to_sigma, self.schedule)
        if not window and n_steps > 0:
            logger.warning(_empty_window_reason(self.schedule, sigma_list,
                                                model_sampling.percent_to_sigma,
                                                member_label(self.target_index,
                                                             self.members[self.target_index].name)))
        return window

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
        if compat.is_nested(latent_image) and len(self.members) > 1:
            raise ValueError(f"{self.node}: nested latents (several latents packed into one, "
                             f"as audio-video models use) cannot be aggregated")
        if not compat.is_plain_ksampler(sampler):
            raise TypeError(f"AMDM steps a k-diffusion SAMPLER (comfy.samplers.KSAMPLER) one "
                            f"step at a time; {type(sampler).__name__} cannot be driven so")
        try:
            drive = SamplerDrive(sampler) if len(self.members) > 1 else None
        except ValueError as error:
            raise ValueError(f"{self.node}: {error}") from None
        if drive is None:
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback,
                                  disable_pbar, seed)
        _, _, inpaint_options = compat.sampler_parts(sampler)
        models = resident_models(self.members, self.target_index)
        run = _Run(self, drive, inpaint_options, models, noise, latent_image, denoise_mask,
                   seed, batch_index)
        trajectory = compat.make_ksampler(run.trajectory, inpaint_options)
        return super().sample(noise, latent_image, trajectory, sigmas, denoise_mask, callback,
                              disable_pbar, seed)


def _warn_on_noise_level(schedule: Schedule, n_members: int) -> None:
    """Aggregation and noise mode must agree, or the merged latent loses or gains noise."""
    if schedule.aggregation == "paper" and n_members > 2:
        logger.warning("aggregation 'paper' with %d members: its coefficients sum to more than "
                       "one, so the merged latent grows whenever the members agree; 'slerp' "
                       "keeps it on scale", n_members)
    if schedule.aggregation == "linear" and schedule.noise_mode == "independent":
        logger.warning("aggregation 'linear' with noise_mode 'independent' averages independent "
                       "noises: the merged latent keeps only about 1/sqrt(N) of the noise the "
                       "next step expects. Use aggregation 'slerp' (the default) or noise_mode 'shared'")
    if schedule.aggregation == "paper" and schedule.deviation_mode == "none":
        logger.warning("aggregation 'paper' without deviation: after the first window step all "
                       "members continue from one latent, and the paper's weights (their sum "
                       "exceeds one) inflate it at every step. Use deviation_mode 'absolute' "
                       "(the paper's p, about 50 for 512 px) or aggregation 'slerp'")
    if schedule.aggregation == "paper" and schedule.noise_mode == "shared":
        logger.warning("aggregation 'paper' with noise_mode 'shared': the paper's weights keep "
                       "the norm of independent noises and inflate a shared one; use "
                       "noise_mode 'independent' with 'paper'")


def _empty_window_reason(schedule: Schedule, sigmas: list[float],
                         percent_to_sigma: Callable[[float], float], target: str) -> str:
    first = progress_of(sigmas[0], percent_to_sigma)
    last = progress_of(sigmas[-2], percent_to_sigma)
    steps = f"its {len(sigmas) - 1} steps span progress {first:.3f} to {last:.3f}"
    if first > 0.001:
        steps += " (a run with denoise < 1 starts late: the window is in absolute progress)"
    limits = "" if (schedule.start_step, schedule.end_step) == (0, 0) else \
        f", step limits [{schedule.start_step}, {schedule.end_step or 'end'})"
    return (f"AMDM: the window [{schedule.start_percent}, {schedule.end_percent}){limits} holds "
            f"none of this run's steps ({steps}); {target} samples alone. Move the window "
            f"into that range to aggregate")
