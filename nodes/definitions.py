"""The ComfyUI nodes (V3 schema): thin wrappers that build members, schedules and the guider.

Node ids, input names, types and defaults are those of the pack's first nodes, so that saved
workflows load unchanged; inputs added since come last in their list, where a saved
workflow's widget values do not reach them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import ComfyExtension, io

from ..amdm_core import (AGGREGATION_MODES, DEVIATION_MODES, EVERY_STEP, GUIDANCE_MODES, NOISE_MODES,
                         WEIGHT_CURVES, Schedule, StepRange, handoff_bounds, progress_of, sigma_at_timestep)
from ..amdm_core.schedule import MAX_STEP, PROGRESS_TIE
from . import compat
from .guider import AMDMGuider
from .members import Member, member_label

CATEGORY = "sampling/amdm"
Stack = io.Custom("AMDM_STACK")
ScheduleType = io.Custom("AMDM_SCHEDULE")
DEFAULT_SCHEDULE = Schedule()
# ModelStack's range widgets, StepRange's fields; all at their defaults: no range of its own.
RANGE_INPUTS = ("start_percent", "end_percent", "start_step", "end_step")
SEARCH_ALIASES = ["mix models", "aggregate", "combine models", "multi model", "MoE", "handoff",
                  "expert", "refiner"]


def _schema(**fields: Any) -> io.Schema:
    """An io.Schema with the fields this ComfyUI's Schema has (search aliases: 0.28)."""
    known = {field.name for field in dataclasses.fields(io.Schema)}
    return io.Schema(**{name: value for name, value in fields.items() if name in known})


def member_range(values: dict[str, Any]) -> Optional[StepRange]:
    """A member's own range from ModelStack's range widgets; None when they are all at
    their defaults (the member follows the schedule)."""
    step_range = StepRange(**{name: values[name] for name in RANGE_INPUTS})
    return None if step_range == EVERY_STEP else step_range


def _node_error(node: str, error: ValueError) -> ValueError:
    return ValueError(f"{node}: {error}")


class ModelStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="ModelStack", display_name="AMDM Model Stack", category=CATEGORY,
            search_aliases=SEARCH_ALIASES,
            description="Adds one model to an AMDM stack: the model with its own prompts, CFG and "
                        "aggregation weight. Chain ModelStack nodes through 'stack'; the first in "
                        "the chain is member 1, the default target.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model of this member, with its own "
                                                "LoRAs and patches."),
                io.Conditioning.Input("positive", tooltip="This member's positive conditioning "
                                                          "(ControlNet, GLIGEN and hooks act only on "
                                                          "this member)."),
                io.Conditioning.Input("negative", tooltip="This member's negative conditioning."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale of this member. Inside the "
                                       "window the schedule's guidance option decides how much of it "
                                       "reaches the merge (full, the default: all of it)."),
                io.Float.Input("weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Share of this member in the aggregated latent (relative to "
                                       "the other members' weights)."),
                io.Float.Input("deviation", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Multiplies the schedule's deviation strength for this member: "
                                       "how far its copy of the merged latent is pulled back to its own."),
                Stack.Input("stack", optional=True, tooltip="Members added before this one."),
                io.String.Input("name", optional=True, default="",
                                tooltip="Label used in error messages and on the schedule drawing."),
                io.Float.Input("start_percent", optional=True, default=EVERY_STEP.start_percent, min=0.0,
                               max=1.0, step=0.001,
                               tooltip="This member's own range of steps, by ComfyUI's timestep percent "
                                       "(the schedule window's rule). Left at 0 to 1 with no step limits, "
                                       "the member steps where the schedule says (the target every step, "
                                       "the others in the window). Where one member is active it steps "
                                       "alone, where several are they aggregate: ranges that touch hand "
                                       "over (expert handoff), ranges that overlap aggregate across."),
                io.Float.Input("end_percent", optional=True, default=EVERY_STEP.end_percent, min=0.0,
                               max=1.0, step=0.001,
                               tooltip="End of this member's own range (1 = to the last step)."),
                io.Int.Input("start_step", optional=True, default=EVERY_STEP.start_step, min=0, max=MAX_STEP,
                             tooltip="Also require step index >= start_step for this member."),
                io.Int.Input("end_step", optional=True, default=EVERY_STEP.end_step, min=0, max=MAX_STEP,
                             tooltip="Also require step index < end_step for this member (0 = no limit)."),
            ],
            outputs=[Stack.Output(display_name="stack", tooltip="The members so far, this one last.")],
        )

    @classmethod
    def execute(cls, model: Any, positive: list, negative: list, cfg: float, weight: float,
                deviation: float, stack: tuple = (), name: str = "", **step_range: Any) -> io.NodeOutput:
        stack = tuple(stack)
        label = member_label(len(stack), name.strip())
        try:
            own = member_range({**dataclasses.asdict(EVERY_STEP), **step_range})
            member = Member(model, positive, negative, cfg, weight, deviation, name.strip(), own)
        except ValueError as error:
            raise _node_error(f"ModelStack ({label})", error) from None
        return io.NodeOutput(stack + (member,))


class AggregationSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULT_SCHEDULE
        return _schema(
            node_id="AggregationSchedule", display_name="AMDM Aggregation Schedule", category=CATEGORY,
            search_aliases=SEARCH_ALIASES,
            description="When and how the members are aggregated: the window of early steps, the "
                        "aggregation mode, the weight curve over the window, the deviation "
                        "optimisation, which member is the target and how members get noise.",
            inputs=[
                io.Float.Input("start_percent", default=d.start_percent, min=0.0, max=1.0, step=0.01,
                               tooltip="Start of the window, in ComfyUI's timestep percent (as "
                                       "ConditioningSetTimestepRange): step k is in it when start <= "
                                       "progress(k) < end; a step on a boundary belongs to the window "
                                       "that starts there. Absolute: with denoise 0.6 a run starts at "
                                       "0.4. A window that starts after step 0 starts every member "
                                       "from the target's latent."),
                io.Float.Input("end_percent", default=d.end_percent, min=0.0, max=1.0, step=0.01,
                               tooltip="End of the window (1 = to the last step); after it the target "
                                       "finishes alone and the others stop."),
                io.Combo.Input("aggregation", options=list(AGGREGATION_MODES), default=d.aggregation,
                               tooltip="slerp (default): weighted mean rescaled to the members' mean "
                                       "norm, which keeps the noise level; linear: weighted mean; paper: "
                                       "weights normalised to unit L2 norm as in the AMDM paper."),
                io.Combo.Input("weight_curve", options=list(WEIGHT_CURVES), default=d.weight_curve,
                               tooltip="How the non-target members' weights change across the window."),
                io.Combo.Input("deviation_mode", options=list(DEVIATION_MODES), default=d.deviation_mode,
                               tooltip="none: every member continues from the merged latent; relative: "
                                       "pulled back a fraction towards its own proposal; absolute: by a "
                                       "fixed length (the paper's p; depends on latent size)."),
                io.Float.Input("deviation_strength", default=d.deviation_strength, min=0.0, max=1000.0,
                               step=0.01, tooltip="relative: fraction in [0, 1]; absolute: length (about "
                                                  "45-55 for a 4x64x64 latent in the paper)."),
                io.Int.Input("target_member", default=d.target_member, min=1, max=64,
                             tooltip="Which member (1 = first in the chain) produces the image."),
                io.Combo.Input("noise_mode", options=list(NOISE_MODES), default=d.noise_mode,
                               tooltip="independent (default): each member its own noise derived from "
                                       "the seed (slerp keeps the noise level, linear shrinks it by about "
                                       "1/sqrt(N), paper inflates the latent); shared: all members start "
                                       "from the target's noise and draw the same stochastic noise at "
                                       "each window step, so linear keeps the noise level too."),
                io.Int.Input("start_step", optional=True, default=d.start_step, min=0, max=MAX_STEP,
                             tooltip="Also require step index >= start_step (0 = no limit)."),
                io.Int.Input("end_step", optional=True, default=d.end_step, min=0, max=MAX_STEP,
                             tooltip="Also require step index < end_step; 0 = no limit."),
                io.Combo.Input("guidance", optional=True, options=list(GUIDANCE_MODES), default=d.guidance,
                               tooltip="full (default): inside the window every member's cfg is divided "
                                       "by the largest member share, so equal members each keep their "
                                       "whole guidance, as in a sum of the members' guidance (members at "
                                       "cfg 1 stay at 1); averaged: the merge blends the members' "
                                       "classifier-free guidance with their latents (N equal members keep "
                                       "1/N each)."),
            ],
            outputs=[ScheduleType.Output(display_name="schedule",
                                         tooltip="Connect to AMDMSampler or AMDMGuider.")],
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        try:
            return io.NodeOutput(Schedule(**inputs))
        except ValueError as error:
            raise _node_error("AggregationSchedule", error) from None


STACK_INPUT = dict(tooltip="The members, from ModelStack.")
SCHEDULE_TOOLTIP = "The aggregation schedule; the defaults when not connected."
PREVIEW_TOOLTIP = ("Where several members aggregate, show each one's current prediction side by "
                   "side in the latent preview (tiles in stack order), through ComfyUI's own "
                   "preview method; elsewhere the stepping member's. Nothing is computed when "
                   "previews are off.")


def _guider(node: str, stack: tuple, schedule: Optional[Schedule], member_previews: bool) -> AMDMGuider:
    try:
        return AMDMGuider(stack, DEFAULT_SCHEDULE if schedule is None else schedule, node,
                          member_previews=member_previews)
    except ValueError as error:
        raise _node_error(node, error) from None


class AMDMGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="AMDMGuider", display_name="AMDM Guider", category=CATEGORY, search_aliases=SEARCH_ALIASES,
            description="A GUIDER that runs AMDM: use it with SamplerCustomAdvanced and any NOISE, "
                        "SAMPLER and SIGMAS.",
            inputs=[Stack.Input("stack", **STACK_INPUT),
                    ScheduleType.Input("schedule", optional=True, tooltip=SCHEDULE_TOOLTIP),
                    io.Boolean.Input("member_previews", optional=True, default=True, tooltip=PREVIEW_TOOLTIP)],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, stack: tuple, schedule: Optional[Schedule] = None,
                member_previews: bool = True) -> io.NodeOutput:
        return io.NodeOutput(_guider("AMDMGuider", stack, schedule, member_previews))


class AMDMSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="AMDMSampler", display_name="AMDM Sampler", category=CATEGORY, search_aliases=SEARCH_ALIASES,
            description="KSampler for an AMDM stack: the members' early steps are aggregated into "
                        "the target member, which finishes alone. Returns the target's latent.",
            inputs=[
                Stack.Input("stack", **STACK_INPUT),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the target's noise (exactly KSampler's); the other "
                                     "members' noise derives from it."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of sampler steps."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="The sampler. Inside the window it takes one step at a time: "
                                       "multistep samplers (dpmpp_2m, deis, lms, ...) restart their "
                                       "history at every aggregated step, uni_pc steps as euler there, "
                                       "dpm_fast, dpm_adaptive and sa_solver are refused (see the "
                                       "node's help)."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The scheduler, computed on the target's model."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (its noise_mask is honoured)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising, as in KSampler."),
                ScheduleType.Input("schedule", optional=True, tooltip=SCHEDULE_TOOLTIP),
                io.Boolean.Input("member_previews", optional=True, default=True, tooltip=PREVIEW_TOOLTIP),
            ],
            outputs=[io.Latent.Output(tooltip="The target member's denoised latent.")],
        )

    @classmethod
    def execute(cls, stack: tuple, seed: int, steps: int, sampler_name: str, scheduler: str,
                latent_image: dict, denoise: float, schedule: Optional[Schedule] = None,
                member_previews: bool = True) -> io.NodeOutput:
        guider = _guider("AMDMSampler", stack, schedule, member_previews)
        model = guider.model_patcher
        latent = compat.fix_empty_latent_channels(model, latent_image)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise,
                                         model_options=model.model_options).sigmas
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                                denoise_mask=latent_image.get("noise_mask"),
                                callback=latent_preview.prepare_callback(model, steps),
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
                                batch_index=latent_image.get("batch_index"))
        # as KSampler hands its LATENT on
        out = {key: value for key, value in latent_image.items()
               if key not in ("downscale_ratio_spacial", "downscale_ratio_temporal")}
        out["samples"] = samples.to(device=comfy.model_management.intermediate_device(),
                                    dtype=compat.intermediate_dtype())
        return io.NodeOutput(out)


# Boundaries of expert models, as a fraction of the training timesteps, on the model's
# shifted schedule (the Wan 2.2 A14B reference: text-to-video 0.875, image-to-video 0.9).
BOUNDARY_PRESETS = {"Wan 2.2 T2V (0.875)": 0.875, "Wan 2.2 I2V (0.9)": 0.9}
CUSTOM = "custom"


class AMDMExpertBoundary(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="AMDMExpertBoundary", display_name="AMDM Expert Boundary", category=CATEGORY,
            search_aliases=["MoE", "handoff", "expert", "boundary", "high noise", "low noise", "refiner",
                            "Wan 2.2"],
            description="Where two experts hand over (Wan 2.2's high-noise and low-noise models, base "
                        "and refiner), as timestep percents to wire into their ModelStack ranges: "
                        "the first expert's end_percent and the second's start_percent. With overlap "
                        "0 the switch is hard (plain MoE, as two KSamplerAdvanced would do it); an "
                        "overlap aggregates both experts across the boundary (soft handoff).",
            inputs=[
                io.Model.Input("model", tooltip="The experts' model (after its ModelSampling node): the "
                                                "boundary lies on its shifted schedule."),
                io.Combo.Input("preset", options=[*BOUNDARY_PRESETS, CUSTOM], default=next(iter(BOUNDARY_PRESETS)),
                               tooltip="The reference boundary of a model family, as a fraction of the "
                                       "training timesteps; custom: the boundary and unit below."),
                io.Float.Input("boundary", default=0.875, min=0.0, max=1000.0, step=0.001,
                               tooltip="With preset custom: the boundary, in the unit below (timestep "
                                       "and percent: 0 to 1; sigma: within the model's sigmas)."),
                io.Combo.Input("unit", options=["timestep", "sigma", "percent"], default="timestep",
                               tooltip="timestep: a fraction of the model's training timesteps on its "
                                       "shifted schedule (Wan 2.2's 0.875); sigma: ComfyUI's sigma; "
                                       "percent: ComfyUI's timestep percent."),
                io.Float.Input("overlap", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Width of the aggregated overlap around the boundary, in timestep "
                                       "percent: 0 is a hard switch."),
            ],
            outputs=[io.Float.Output(display_name="first_end_percent",
                                     tooltip="The first (high-noise) expert's end_percent."),
                     io.Float.Output(display_name="second_start_percent",
                                     tooltip="The second (low-noise) expert's start_percent.")],
        )

    @classmethod
    def execute(cls, model: Any, preset: str, boundary: float, unit: str, overlap: float) -> io.NodeOutput:
        sampling = model.get_model_object("model_sampling")
        if preset != CUSTOM:
            boundary, unit = BOUNDARY_PRESETS[preset], "timestep"
        sigma_min, sigma_max = float(sampling.sigma_min), float(sampling.sigma_max)
        if unit != "sigma" and boundary > 1.0:
            raise _node_error("AMDMExpertBoundary", ValueError(
                f"boundary {boundary} in unit {unit} must be at most 1 (a fraction)"))
        if unit == "sigma" and not sigma_min <= boundary <= sigma_max:
            raise _node_error("AMDMExpertBoundary", ValueError(
                f"boundary sigma {boundary} is outside this model's sigmas [{sigma_min:.4g}, {sigma_max:.4g}]"))
        if unit == "percent":
            percent = boundary
        else:
            sigma = boundary if unit == "sigma" else sigma_at_timestep(
                boundary, lambda s: float(sampling.timestep(torch.tensor(s))), sigma_min, sigma_max)
            # Just past the boundary's own percent: a step exactly on the boundary stays with
            # the first expert, as the reference switches (timestep >= boundary: first).
            percent = progress_of(sigma, sampling.percent_to_sigma) + 2 * PROGRESS_TIE
        try:
            return io.NodeOutput(*handoff_bounds(percent, overlap))
        except ValueError as error:
            raise _node_error("AMDMExpertBoundary", error) from None


NODES = [ModelStack, AggregationSchedule, AMDMGuiderNode, AMDMSamplerNode, AMDMExpertBoundary]


class AMDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
