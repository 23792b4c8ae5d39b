"""AMDM inside ComfyUI's own sampler loop.

AMDMGuider is a GUIDER for SamplerCustomAdvanced (and AMDMSampler). For the sigmas it is
given it plans the run (amdm_core.plan): each member's steps, the spans where one member
steps alone or several aggregate, the stages between hard handoffs. It then drives the
members as ComfyUI's own samplers would:

- a stage that is one member alone is ComfyUI's own CFGGuider.sample of that member with
  the user's SAMPLER, the call one KSamplerAdvanced stage of a chain makes (its wrappers
  around a whole run included); the latent passes to the next stage as a LATENT;
- any other stage steps the user's k-diffusion sampler function: whole segments where one
  member is alone, one step at a time where several aggregate (amdm_core.run_window).

Each member of the other stages is a MemberSession, prepared when its range begins and
released when it ends, by one owner (_Run), in a flat list. An expert that hands over gives
its weights back to ComfyUI's model management at once, while its successors run. Complete,
interrupted and failed runs release every open session in one place. With one member active
at every step the run is ComfyUI's own CFGGuider.sample, bit for bit.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

import comfy.cli_args
import comfy.model_management
import comfy.sample
import comfy.samplers

from ..amdm_core import (Schedule, Span, Stage, StepFn, StepMap, WindowPlan, compensated_cfg,
                         derive_seed, guidance_factors, member_steps, one_after_another, progress_of,
                         range_errors, run_window, spans_of, stages_of, window_plans)
from . import compat, samplers
from .members import Member, check_members, member_label
from .sessions import MemberSession, load_together, whole_run_wrappers
from .sharing import SharedEvaluation, resident_models, shares_weights_storage, switch_weights

logger = logging.getLogger(__name__)

# Keys of derive_seed: separate streams for member noise, window steps and the tail.
NOISE_STREAM, STEP_STREAM, TAIL_STREAM = 1, 2, 3

Callback = Callable[[dict], None]


class SamplerDrive:
    """The user's SAMPLER as AMDM drives it: whole segments and single window steps of its
    k-diffusion function."""

    def __init__(self, sampler: Any, run_steps: int):
        if not (isinstance(sampler, comfy.samplers.KSAMPLER) and type(sampler).sample is comfy.samplers.KSAMPLER.sample):
            raise ValueError(f"members aggregate one step at a time, through a k-diffusion SAMPLER "
                             f"(comfy.samplers.KSAMPLER); {type(sampler).__name__} cannot be driven so "
                             f"(it can hand over, with ranges that do not overlap)")
        self.sampler = sampler
        self.function = sampler.sampler_function
        self.options = sampler.extra_options
        self.run_steps = run_steps
        self.name = samplers.sampler_name_of(self.function)
        self.behaviour = samplers.SAMPLERS.get(self.name) if self.name else None
        if self.behaviour is not None and self.behaviour.drive == samplers.REFUSED:
            raise ValueError(samplers.refusal(self.name))
        single = self.behaviour.single_step_sampler if self.behaviour else None
        self.single_step_function = comfy.samplers.ksampler(single).sampler_function if single else self.function
        self.probed = self.behaviour is not None

    def probe(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict) -> None:
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
                    "(any multistep history restarts at each window step)", name, evaluations[1])
        self.probed = True

    def run(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
            callback: Optional[Callback], seed: Optional[int]) -> torch.Tensor:
        """The sampler over ``sigmas`` (any number of steps) in one call, no console bar.

        Samplers with churn (euler, heun, dpm_2 given s_churn) add s_churn / (steps of the
        call) of noise per step: a call over part of the run gets its share of the run's
        s_churn, so that every step churns as in one call over the whole run."""
        function = self.single_step_function if len(sigmas) < 3 else self.function
        options = self.options
        if options.get("s_churn"):
            options = {**options, "s_churn": options["s_churn"] * (len(sigmas) - 1) / self.run_steps}
        return function(model_k, x, sigmas, extra_args={**extra_args, "seed": seed},
                        callback=callback, disable=True, **options)


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


@dataclass(frozen=True)
class RunPlan:
    """What a run does over its sigmas: each member's steps, its spans and stages, and a
    WindowPlan for every aggregated span (keyed by its first step)."""

    active: list[range]
    spans: list[Span]
    stages: list[Stage]
    windows: dict[int, WindowPlan]

    @property
    def aggregates(self) -> bool:
        return bool(self.windows)


class _Run:
    """One AMDMGuider.sample call: the owner of every member session."""

    def __init__(self, guider: "AMDMGuider", plan: RunPlan, sampler: Any, models: Sequence[Any],
                 noise: torch.Tensor, latent_image: torch.Tensor, denoise_mask: Optional[torch.Tensor],
                 sigmas: torch.Tensor, callback: Any, seed: Optional[int],
                 batch_index: Optional[Sequence[int]]):
        self.guider = guider
        self.members = guider.members
        self.schedule = guider.schedule
        self.target = guider.target_index
        self.plan = plan
        self.sampler = sampler
        # Stages of one member alone call the user's SAMPLER (any SAMPLER, as a chain would);
        # the others step its k-diffusion function.
        self.drive = SamplerDrive(sampler, len(sigmas) - 1) if plan.aggregates else None
        self.models = models
        self.noise = noise
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask
        self.sigmas = sigmas
        self.user_callback = callback
        self.raw_seed = seed
        self.seed = 0 if seed is None else seed
        self.batch_index = batch_index
        self.sessions: dict[int, MemberSession] = {}
        self.finished: list[Any] = []  # patchers of finished members, weights not yet given back
        self.closed: set[int] = set()
        # Member previews cost a concatenation per step, only where previews are shown.
        self.tiles = guider.member_previews and callback is not None and \
            comfy.cli_args.args.preview_method != comfy.cli_args.LatentPreviewMethod.NoPreviews

    # --- sessions: one owner, a flat list

    def open(self, index: int, noise: torch.Tensor, latent: torch.Tensor, sigmas: torch.Tensor,
             seed: Optional[int]) -> MemberSession:
        """Prepare member ``index``, after giving back the weights of finished members that
        no open or later member uses."""
        self.give_back_finished()
        member = self.members[index]
        session = MemberSession(self.member_guider(index), member_label(index, member.name))
        self.sessions[index] = session
        logger.debug("preparing %s", session.label)
        with compat.device_context(session.device):
            session.prepare(noise, latent, sigmas, self.denoise_mask, seed)
        return session

    def member_guider(self, index: int) -> comfy.samplers.CFGGuider:
        """A CFGGuider of member ``index`` on a clone of its own: the guider registers (and
        restores) hook patches on its patcher, which must never be another member's, even
        for the very same MODEL."""
        member = self.members[index]
        guider = comfy.samplers.CFGGuider(self.models[index].clone())
        guider.set_conds(member.positive, member.negative)
        guider.set_cfg(member.cfg)
        return guider

    def close(self, index: int) -> None:
        session = self.sessions.pop(index)
        try:
            session.release(keep_controls=set().union(*(s.controls() for s in self.sessions.values())))
        finally:
            self.retire(index, session.patcher)

    def retire(self, index: int, patcher: Any) -> None:
        """Member ``index`` has finished."""
        self.closed.add(index)
        self.finished.append(patcher)
        # A member that handed over (an expert whose successor started after it) gives its
        # weights back at once, while its successors run; so does any finished member where
        # memory is short. Members that leave an AMDM window while the target goes on stay
        # loaded, as ComfyUI keeps a model between runs: the next run needs them again.
        start = self.plan.active[index].start
        handed_over = any(self.plan.active[i].start > start for i in [*self.sessions, *self.later()])
        if handed_over or comfy.model_management.vram_state in (
                comfy.model_management.VRAMState.LOW_VRAM, comfy.model_management.VRAMState.NO_VRAM):
            self.give_back_finished()

    def later(self) -> list[int]:
        """The members that step later in this run and are not open yet."""
        return [i for i, steps in enumerate(self.plan.active)
                if steps and i not in self.sessions and i not in self.closed]

    def give_back_finished(self) -> None:
        """Unload the weights of finished members that no open or later member uses (their
        memory goes back to ComfyUI's model management)."""
        in_use = [s.patcher for s in self.sessions.values()] + [self.models[i] for i in self.later()]
        kept = []
        for patcher in self.finished:
            if any(shares_weights_storage(patcher, other) for other in in_use):
                kept.append(patcher)
            else:
                compat.unload(patcher)
        self.finished = kept

    def close_all(self) -> None:
        """Release every open session, each even if another's release fails (the first
        error is raised once all are released)."""
        errors = []
        for index in reversed(list(self.sessions)):
            try:
                self.close(index)
            except Exception as error:  # noqa: BLE001 - logged, the first re-raised below
                logger.error("releasing %s failed", member_label(index, self.members[index].name), exc_info=error)
                errors.append(error)
        if errors:
            raise errors[0]

    # --- the run

    def sample(self, disable_pbar: bool) -> torch.Tensor:
        n_steps = len(self.sigmas) - 1
        latent = self.latent_image
        try:
            # One console progress bar for the whole run: every sampler call below is silent.
            with tqdm(total=n_steps, disable=disable_pbar) as bar:
                def on_step(info: dict) -> None:
                    bar.update(1)
                    if self.user_callback is not None:
                        self.user_callback(info["i"], info["denoised"], info["x"], n_steps)
                    comfy.model_management.throw_exception_if_processing_interrupted()

                for number, stage in enumerate(self.plan.stages):
                    # Later stages continue a LATENT, as KSamplerAdvanced with add_noise
                    # disabled does: zero noise (its own, on the CPU) and the previous output.
                    noise = self.noise if number == 0 else \
                        torch.zeros(latent.size(), dtype=latent.dtype, layout=latent.layout, device="cpu")
                    sigmas = self.sigmas[stage.steps.start:stage.steps.stop + 1]
                    run = self.single_stage if stage.single else self.stepped_stage
                    latent = run(stage, noise, latent, sigmas, _offset_callback(on_step, stage.steps.start))
        except BaseException:
            # The run's own error (an interrupt, say) is the one to raise; a release that
            # fails after it is logged by close_all.
            with contextlib.suppress(Exception):
                self.close_all()
            raise
        self.close_all()
        return latent

    def single_stage(self, stage: Stage, noise: torch.Tensor, latent: torch.Tensor,
                     sigmas: torch.Tensor, callback: Callback) -> torch.Tensor:
        """One member alone: ComfyUI's own CFGGuider.sample with the user's SAMPLER, the very
        call a KSamplerAdvanced stage of a chain makes, so that the member's wrappers around
        a whole run (EasyCache, context windows) wrap its stage, as they wrap that stage."""
        [index] = stage.spans[0].members
        self.give_back_finished()
        guider = self.member_guider(index)
        try:
            return guider.sample(noise, latent, self.sampler, sigmas, self.denoise_mask,
                                 lambda i, denoised, x, total: callback({"i": i, "denoised": denoised, "x": x}),
                                 disable_pbar=True, seed=self.raw_seed)
        finally:
            self.retire(index, guider.model_patcher)

    def stepped_stage(self, stage: Stage, noise: torch.Tensor, latent: torch.Tensor,
                      sigmas: torch.Tensor, callback: Callback) -> torch.Tensor:
        """Spans of one member run as segments of the sampler function, aggregated spans
        one step at a time; the latent carries over from span to span."""
        first = stage.steps.start
        leaving = self.leaving(stage)
        states = self.start_states(stage.spans[0], noise, latent, sigmas)
        carried = states[stage.spans[0].members[0]]
        for number, span in enumerate(stage.spans):
            for index in span.members:
                if index not in self.sessions:  # joins from the carried latent
                    self.open(index, noise, latent, sigmas, self.seed_of(index, span)).start(self.sampler)
            local = range(span.steps.start - first, span.steps.stop - first)
            if span.aggregated:
                carried, after = self.aggregate(span, local, states, carried, callback)
                states = dict(zip(span.members, after))
            else:
                [index] = span.members
                session = self.sessions[index]
                session.activate()
                with compat.device_context(session.device):
                    carried = self.drive.run(session.model_k, states.get(index, carried),
                                             session.sigmas[local.start:local.stop + 1], session.extra_args,
                                             _offset_callback(callback, local.start),
                                             self.segment_seed(span, number))
                states = {index: carried}
            for index in span.members:
                if self.plan.active[index].stop == span.steps.stop and index != leaving:
                    self.close(index)
        out = self.sessions[leaving].finish(states[leaving])
        self.close(leaving)
        return out

    def leaving(self, stage: Stage) -> int:
        """The member whose latent leaves the stage: the last span's, the target at the end."""
        last = stage.spans[-1]
        return last.members[0] if not last.aggregated else self.target

    def seed_of(self, index: int, span: Span) -> Optional[int]:
        """The seed a member is prepared with (its conds' and the sampler's default): the
        run's for the target and for the member that starts the run from its noise, a
        derived one for the others."""
        primary = self.target if self.target in span.members else span.members[0]
        return self.raw_seed if index in (self.target, primary) else derive_seed(self.seed, NOISE_STREAM, index)

    def segment_seed(self, span: Span, number: int) -> Optional[int]:
        """The first segment of a stage draws the run's seed (as KSampler and each stage of
        a KSamplerAdvanced chain do); a segment after an aggregated span draws from a stream
        of its own (the first of them as it always has, later ones per step)."""
        if number == 0:
            return self.raw_seed
        later = [k for k in self.plan.windows if k < span.steps.start]
        return derive_seed(self.seed, TAIL_STREAM, *([span.steps.start] if len(later) > 1 else []))

    def start_states(self, span: Span, noise: torch.Tensor, latent: torch.Tensor,
                     sigmas: torch.Tensor) -> dict[int, torch.Tensor]:
        """The members of a stage's first span start from noise: the target (else the first
        of them) from the stage's, the others from their own (independent noise) or from
        the very same latent (shared noise)."""
        primary = self.target if self.target in span.members else span.members[0]
        x = self.open(primary, noise, latent, sigmas, self.raw_seed).start(self.sampler)
        states = {primary: x}
        for index in span.members:
            if index != primary:
                own = self.open(index, self.member_noise(index, noise), latent, sigmas,
                                self.seed_of(index, span)).start(self.sampler)
                states[index] = x if self.schedule.noise_mode == "shared" else own
        return states

    def member_noise(self, index: int, noise: torch.Tensor) -> torch.Tensor:
        """Independent noise per member derived from the seed, unless shared or disabled
        (all-zero noise, as DisableNoise gives). Drawn as KSampler draws the target's, so
        a latent's batch_index selects the same noise item for every member."""
        if self.schedule.noise_mode == "shared" or not torch.any(noise):
            return noise
        return comfy.sample.prepare_noise(noise, derive_seed(self.seed, NOISE_STREAM, index),
                                          self.batch_index).to(noise.device)

    # --- aggregated spans

    def aggregate(self, span: Span, local: range, states: dict[int, torch.Tensor],
                  carried: torch.Tensor, callback: Callback) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every member of the span steps, amdm_core merges; the last merge and each
        member's latent after the span. Aggregation runs on the target's device (else the
        first member's)."""
        plan = self.plan.windows[span.steps.start]
        members = [self.members[m] for m in span.members]
        sessions = [self.sessions[m] for m in span.members]
        lead = span.members.index(self.target) if self.target in span.members else 0
        home = sessions[lead].device
        start = [states.get(m, carried).to(home) for m in span.members]
        shared = SharedEvaluation(sessions, [self.models[m] for m in span.members], members,
                                  self.denoise_mask is not None)
        factors = guidance_factors(plan.weights, plan.aggregation, self.schedule.guidance)
        cfgs = [[compensated_cfg(member.cfg, factor) for member in members] for factor in factors.tolist()]

        offset = span.steps.start - local.start  # global step = local step + offset
        reports: dict[int, dict] = {}
        step_fns = [self.step_function(session, shared.window_args(i, session.extra_args),
                                       lambda info, i=i: reports.__setitem__(i, info), offset, home,
                                       span.members[i])
                    for i, session in enumerate(sessions)]
        self.drive.probe(sessions[lead].model_k, start[lead], sessions[lead].sigmas[local.start:],
                         sessions[lead].extra_args)

        def stepped_and_reported(map_steps: StepMap) -> StepMap:
            """Progress and preview once per step, after every member stepped: the lead
            member's, or every member's prediction side by side (in stack order)."""
            def step_all(step_fns_: Sequence[StepFn], states_: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
                # Every member's CFG scale for step k is set before any member steps: a
                # batched evaluation reads the scales of all the members it serves.
                for session, cfg in zip(sessions, cfgs[k - span.steps.start]):
                    session.set_cfg(cfg)
                reports.clear()
                proposals = map_steps(step_fns_, states_, k)
                if lead in reports:
                    # Not at the run's last step: ComfyUI keeps the last prediction its
                    # callback sees as SamplerCustomAdvanced's denoised_output.
                    tiled = self.tiles and k < len(self.sigmas) - 2
                    denoised = torch.cat([reports[i]["denoised"].to(home) for i in range(len(sessions))], dim=-1) \
                        if tiled else reports[lead]["denoised"]
                    callback({**reports[lead], "i": k - offset, "denoised": denoised})
                return proposals
            return step_all

        try:
            with self.stepping(sessions, span.members, shared) as map_steps:
                return run_window(start, step_fns, plan.to(home), stepped_and_reported(map_steps))
        finally:
            for member, session in zip(members, sessions):
                session.set_cfg(member.cfg)  # a member that goes on does so at its own scale

    def window_step_seed(self, index: int, k: int) -> int:
        """Shared noise: every member draws the same stochastic noise at step k, so that
        averaging their steps keeps its level; independent: each member its own."""
        if self.schedule.noise_mode == "shared":
            return derive_seed(self.seed, STEP_STREAM, k)
        return derive_seed(self.seed, STEP_STREAM, index, k)

    def step_function(self, session: MemberSession, extra_args: dict, report: Callback,
                      offset: int, home: torch.device, index: int) -> StepFn:
        """A member's proposal for step k (global), from a latent on the home device; the
        sampler's step report (its prediction) goes to ``report``."""
        drive = self.drive

        def step(x: torch.Tensor, k: int) -> torch.Tensor:
            j = k - offset
            with compat.device_context(session.device):
                proposal = drive.run(session.model_k, x.to(session.device), session.sigmas[j:j + 2],
                                     extra_args, report, self.window_step_seed(index, k))
            return proposal.to(home)
        return step

    @contextlib.contextmanager
    def stepping(self, sessions: Sequence[MemberSession], indices: Sequence[int],
                 shared: SharedEvaluation) -> Iterator[StepMap]:
        """How the members' steps of one window step run: one after another, or, when they
        sit on several GPUs and ComfyUI has its multi-GPU thread pool, one worker per
        device at the same time. Loading and patch switching stay on this thread, before
        the steps start (ComfyUI's model management is not thread-safe), and load every
        member in one call, so that members on one GPU never evict each other."""
        groups: dict[torch.device, list[int]] = {}
        for i, session in enumerate(sessions):
            groups.setdefault(session.device, []).append(i)
        # A worker steps its device's members back to back, with no switch between them:
        # members that re-patch one module take turns on this thread instead.
        models = [self.models[m] for m in indices]
        members = [self.members[m] for m in indices]
        parallel = len(groups) > 1 and all(d.type == "cuda" for d in groups) and not any(
            switch_weights(models, members, a, b)
            for group in groups.values() for a, b in itertools.combinations(group, 2))
        pool = compat.device_pool(groups) if parallel else None

        def one_by_one(step_fns: Sequence[StepFn], states: Sequence[torch.Tensor],
                       k: int) -> list[torch.Tensor]:
            shared.begin_step(states)
            proposals = []
            for session, step, x in zip(sessions, step_fns, states):
                comfy.model_management.throw_exception_if_processing_interrupted()
                session.activate()
                proposals.append(step(x, k))
            return proposals

        def per_device(step_fns: Sequence[StepFn], states: Sequence[torch.Tensor],
                       k: int) -> list[torch.Tensor]:
            shared.begin_step(states)
            comfy.model_management.throw_exception_if_processing_interrupted()
            load_together([session.guider for session in sessions],
                                 sum(session.memory_required for session in sessions),
                                 sum(session.minimum_memory_required for session in sessions))
            for device, group in groups.items():
                pool.submit(device, one_after_another, [step_fns[i] for i in group],
                            [states[i] for i in group], k)
            return gather(pool, groups, len(sessions))

        if pool is None:
            yield one_by_one
            return
        try:
            yield per_device
        finally:
            pool.shutdown()


def gather(pool: Any, groups: dict[Any, list[int]], count: int) -> list[torch.Tensor]:
    """Every device's results, in member order; the first error is raised only once every
    worker has answered, so that no device is left running."""
    proposals: list[Optional[torch.Tensor]] = [None] * count
    errors = []
    for device, group in groups.items():
        results, error = pool.get_result(device)
        if error is not None:
            errors.append(error)
            continue
        for i, proposal in zip(group, results):
            proposals[i] = proposal
    if errors:
        raise errors[0]
    return proposals


class AMDMGuider(comfy.samplers.CFGGuider):
    """A GUIDER that runs a stack of members over their ranges of steps."""

    def __init__(self, members: Sequence[Member], schedule: Schedule, node: str = "AMDMGuider",
                 member_previews: bool = True):
        check_members(members, schedule)
        self.node = node
        self.member_previews = member_previews
        _warn_on_noise_level(schedule, len(members))
        self.members = tuple(members)
        self.schedule = schedule
        self.target_index = schedule.target_member - 1
        self.labels = [member_label(i, m.name) for i, m in enumerate(self.members)]
        target = self.members[self.target_index]
        super().__init__(target.model)
        self.set_conds(target.positive, target.negative)
        self.set_cfg(target.cfg)

    def plan(self, sigmas: torch.Tensor) -> RunPlan:
        """The run over these sigmas. Bad ranges are an error naming the member; a schedule
        window that holds none of the steps is a warning (those members sit it out)."""
        sampling = self.model_patcher.get_model_object("model_sampling")
        sigma_list = sigmas.tolist()
        n_steps = max(len(sigma_list) - 1, 0)
        ranges = [m.step_range for m in self.members]
        active = member_steps(sigma_list, sampling.percent_to_sigma, ranges, self.schedule)
        spans = spans_of(active, n_steps)
        errors = range_errors(spans, active, ranges, [m.weight for m in self.members], self.labels,
                              self.target_index, sigma_list, sampling.percent_to_sigma)
        if errors:
            raise ValueError(f"{self.node}: " + "; ".join(errors))
        idle = [label for label, own, steps in zip(self.labels, ranges, active) if own is None and not steps]
        if idle and n_steps > 0:
            logger.warning(_empty_window_reason(self.schedule, sigma_list, sampling.percent_to_sigma, idle))
        windows = window_plans(spans, [m.weight for m in self.members], [m.deviation for m in self.members],
                               self.target_index, self.schedule)
        return RunPlan(active, spans, stages_of(spans), windows)

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any,
               sigmas: torch.Tensor, denoise_mask: Optional[torch.Tensor] = None,
               callback: Any = None, disable_pbar: bool = False, seed: Optional[int] = None,
               batch_index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """CFGGuider.sample; ``batch_index`` (a LATENT's) lets the other members' noise
        follow the batch items as the target's does."""
        plan = self.plan(sigmas)
        if [span.members for span in plan.spans] in ([], [(self.target_index,)]):
            # the target alone at every step: ComfyUI's own sampling
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback,
                                  disable_pbar, seed)
        if compat.is_nested(latent_image):
            raise ValueError(f"{self.node}: nested latents (several latents packed into one, "
                             f"as audio-video models use) cannot be passed between members")
        stepped = {m for stage in plan.stages if not stage.single for span in stage.spans for m in span.members}
        for index in sorted(stepped):
            wrappers = whole_run_wrappers(self.members[index].model)
            if wrappers:
                raise ValueError(f"{self.node}: {self.labels[index]}'s MODEL carries wrappers around "
                                 f"a whole sampling run ({', '.join(wrappers)}), which cannot wrap its "
                                 f"part of a stage where members aggregate; let it hand over (ranges "
                                 f"that do not overlap) or sample it alone")
        try:
            run = _Run(self, plan, sampler, resident_models(self.members, self.target_index, plan.spans),
                       noise, latent_image, denoise_mask, sigmas, callback, seed, batch_index)
        except ValueError as error:
            raise ValueError(f"{self.node}: {error}") from None
        return run.sample(disable_pbar)


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
                         percent_to_sigma: Callable[[float], float], idle: Sequence[str]) -> str:
    first = progress_of(sigmas[0], percent_to_sigma)
    last = progress_of(sigmas[-2], percent_to_sigma)
    steps = f"its {len(sigmas) - 1} steps span progress {first:.3f} to {last:.3f}"
    if first > 0.001:
        steps += " (a run with denoise < 1 starts late: the window is in absolute progress)"
    return (f"AMDM: the window {schedule.window.describe()} holds none of this run's steps "
            f"({steps}); {', '.join(idle)} sit{'s' * (len(idle) == 1)} it out. Move the window "
            f"into that range to aggregate")
