"""The ways of combining the members that the table compares, each run through ComfyUI's
own nodes (KSampler, KSamplerAdvanced, ModelMergeSimple) or the pack's (ModelStack,
AggregationSchedule, AMDMSampler), and a model evaluation counter that is a real ComfyUI
model wrapper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch

from . import task
from ..comfy_setup import comfy_env, setup_comfy
from .models import Ecosystem, request_conditioning

PACK = setup_comfy()

import comfy.model_patcher  # noqa: E402  (ComfyUI is importable only after setup_comfy)

run_node = comfy_env().run_node
Schedule = PACK.amdm_core.Schedule

Latent = torch.Tensor


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 20
    sampler_name: str = "euler"
    # "normal" spaces timesteps evenly, so a window's percent is also its share of steps.
    scheduler: str = "normal"
    cfg: float = 3.0


@dataclass(frozen=True)
class Batch:
    """One sampler call's worth of images: every request once, from one ComfyUI seed."""

    requests: list[task.Request]
    seed: int

    def positive(self) -> list:
        """Per-image requests as one CONDITIONING: a [B, T, D] context with a latent batch
        of B gives image b the request b (ComfyUI repeats a conditioning only up to the
        batch size)."""
        return request_conditioning(task.encode_requests(self.requests))

    def negative(self) -> list:
        return request_conditioning(task.empty_context())

    def empty_latent(self) -> dict:
        return {"samples": torch.zeros(len(self.requests), task.CHANNELS, task.GRID, task.GRID)}


@dataclass
class EvaluationCounter:
    """Counts network evaluations (one latent row through the UNet) with ComfyUI's
    model_function_wrapper, so every path that calls the model is counted: CFG's
    cond and uncond rows, every member inside AMDM, every model in the score sum."""

    rows: int = 0

    def counted(self, model: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
        # A function, not a bound method: ModelPatcher.clone deep-copies model_options,
        # which would copy a method's counter along with it (functions are not copied).
        def count_rows(apply_model: Callable, args: dict) -> torch.Tensor:
            self.rows += args["input"].shape[0]
            return apply_model(args["input"], args["timestep"], **args["c"])

        counted_model = model.clone()
        counted_model.set_model_unet_function_wrapper(count_rows)
        return counted_model


def sample_alone(model: comfy.model_patcher.ModelPatcher, batch: Batch,
                 settings: SamplingSettings) -> Latent:
    """One model, ComfyUI's KSampler node."""
    (latent,) = run_node("KSampler", model=model, seed=batch.seed, steps=settings.steps,
                         cfg=settings.cfg, sampler_name=settings.sampler_name,
                         scheduler=settings.scheduler, positive=batch.positive(),
                         negative=batch.negative(), latent_image=batch.empty_latent(), denoise=1.0)
    return latent["samples"]


def sample_handoff(segments: list[tuple[comfy.model_patcher.ModelPatcher, int]], batch: Batch,
                   settings: SamplingSettings) -> Latent:
    """A chain of KSamplerAdvanced nodes: each model runs its steps and passes its noisy
    latent on (the standard refiner pattern). segments: (model, end step); the last
    model runs to the end."""
    latent = batch.empty_latent()
    start = 0
    for index, (model, end) in enumerate(segments):
        first, last = index == 0, index == len(segments) - 1
        (latent,) = run_node(
            "KSamplerAdvanced", model=model, add_noise="enable" if first else "disable",
            noise_seed=batch.seed, steps=settings.steps, cfg=settings.cfg,
            sampler_name=settings.sampler_name, scheduler=settings.scheduler,
            positive=batch.positive(), negative=batch.negative(), latent_image=latent,
            start_at_step=start, end_at_step=10000 if last else end,
            return_with_leftover_noise="disable" if last else "enable")
        start = end
    return latent["samples"]


def merged_model(models: list[comfy.model_patcher.ModelPatcher]) -> comfy.model_patcher.ModelPatcher:
    """Equal-weight average of the weights with chained ModelMergeSimple nodes:
    merging the k-th model into the average of the first k-1 with ratio (k-1)/k."""
    merged = models[0]
    for count, model in enumerate(models[1:], start=2):
        (merged,) = run_node("ModelMergeSimple", model1=merged, model2=model, ratio=(count - 1) / count)
    return merged


@dataclass
class ScoreSum:
    """Composable-diffusion style sum of the members' guidance, every member at every step.

    Installed as the target's model_function_wrapper, it returns for conditional rows
    D_t(x, c) + sum over the other members m of (D_m(x, c) - D_m(x, empty)) and for
    unconditional rows D_t(x, empty); ComfyUI's CFG then yields
    D_t(empty) + cfg * sum over all members of (D_m(c) - D_m(empty)).
    ConditioningCombine does not apply here: it sums prompts for one model, not models.
    Each member is evaluated through its own (counting) model_function_wrapper.

    Two variants: the other members only at noise levels in (``sigma_floor``,
    ``sigma_ceiling``] (some steps, the target alone at the others), and each other
    member's guidance taken against
    the target's unconditional prediction, D_m(c) - D_t(empty), which costs one evaluation
    per member instead of two (members fine-tuned from one base share an unconditional
    model only approximately)."""

    target: comfy.model_patcher.ModelPatcher
    others: list[comfy.model_patcher.ModelPatcher]
    empty_context: torch.Tensor = field(default_factory=task.empty_context)
    sigma_floor: float = 0.0
    sigma_ceiling: float = math.inf
    target_unconditional: bool = False

    @staticmethod
    def evaluate(member: comfy.model_patcher.ModelPatcher, args: dict) -> torch.Tensor:
        member_wrapper = member.model_options["model_function_wrapper"]
        return member_wrapper(member.model.apply_model, args)

    def with_context(self, args: dict, context: torch.Tensor) -> dict:
        return {**args, "c": {**args["c"], "c_crossattn": context}}

    def wrapper(self, apply_model: Callable, args: dict) -> torch.Tensor:
        # ComfyUI batches the cond and uncond rows as equal chunks, listed in cond_or_uncond.
        chunk_count = len(args["cond_or_uncond"])
        if not self.sigma_floor < float(args["timestep"].max()) <= self.sigma_ceiling:
            return self.evaluate(self.target, args)
        outputs = self.evaluate(self.target, args).chunk(chunk_count)
        if self.target_unconditional and 1 not in args["cond_or_uncond"]:
            raise RuntimeError("the target's unconditional rows were not batched with its conditional ones")
        target_unconditional = outputs[args["cond_or_uncond"].index(1)] if self.target_unconditional else None
        inputs = args["input"].chunk(chunk_count)
        timesteps = args["timestep"].chunk(chunk_count)
        contexts = args["c"]["c_crossattn"].chunk(chunk_count)
        combined = []
        for chunk, is_uncond, x, timestep, context in zip(outputs, args["cond_or_uncond"], inputs,
                                                          timesteps, contexts):
            if is_uncond:
                combined.append(chunk)
                continue
            chunk_args = {**args, "input": x, "timestep": timestep, "cond_or_uncond": [0],
                          "c": {**args["c"], "c_crossattn": context}}
            empty = self.empty_context.to(context).expand_as(context)
            for member in self.others:
                conditional = self.evaluate(member, chunk_args)
                unconditional = target_unconditional if self.target_unconditional else \
                    self.evaluate(member, self.with_context(chunk_args, empty))
                chunk = chunk + conditional - unconditional
            combined.append(chunk)
        return torch.cat(combined)

    def model(self) -> comfy.model_patcher.ModelPatcher:
        combined = self.target.clone()
        combined.set_model_unet_function_wrapper(self.wrapper)
        # ComfyUI loads additional models with the sampled one, with their own weight
        # patches applied: without this a member sharing weights with an earlier-loaded
        # clone (a ModelMergeSimple result, say) would run with that clone's weights.
        combined.set_additional_models("toy_score_sum_members", self.others)
        return combined


@dataclass(frozen=True)
class AMDMSettings(Schedule):
    """The AggregationSchedule node's inputs, plus how the members' CFG is set and the
    AMDMSampler's steps."""

    # CFG of the non-target members as a multiple of the sampling CFG. Linear aggregation
    # of N members averages their guided predictions, so each member's guidance reaches
    # the merged latent divided by N; a factor of N gives each its full weight back.
    others_cfg_factor: float = 1.0
    # Fewer steps with a longer window spend a budget of evaluations differently.
    steps: int = SamplingSettings.steps


def sample_amdm(models: list[comfy.model_patcher.ModelPatcher], amdm: AMDMSettings, batch: Batch,
                settings: SamplingSettings, ranges: list | None = None) -> Latent:
    """The pack's nodes, chained as in a workflow: ModelStack per member (member 1 first,
    every weight 1; ``ranges``: each member's own StepRange, in ModelStack's range
    inputs), AggregationSchedule, AMDMSampler at ``amdm.steps`` steps."""
    stack: tuple = ()
    for number, model in enumerate(models, start=1):
        cfg = settings.cfg * (1.0 if number == amdm.target_member else amdm.others_cfg_factor)
        own = {} if ranges is None else asdict(ranges[number - 1])
        (stack,) = run_node("ModelStack", model=model, positive=batch.positive(),
                            negative=batch.negative(), cfg=cfg, weight=1.0, deviation=1.0,
                            stack=stack, name="", **own)
    (schedule,) = run_node("AggregationSchedule",
                           **{f.name: getattr(amdm, f.name) for f in fields(Schedule)})
    (latent,) = run_node("AMDMSampler", stack=stack, seed=batch.seed, steps=amdm.steps,
                         sampler_name=settings.sampler_name, scheduler=settings.scheduler,
                         latent_image=batch.empty_latent(), denoise=1.0, schedule=schedule)
    return latent["samples"]


def model_list(ecosystem: Ecosystem, names: list[str], counter: EvaluationCounter) -> list:
    return [counter.counted(ecosystem.members[name]) for name in names]
