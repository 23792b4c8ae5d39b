"""The ComfyUI nodes: thin wrappers that build members, schedules and the guider."""
from __future__ import annotations

from typing import Any, Optional

from ..amdm_core import (AGGREGATION_MODES, DEVIATION_MODES, GUIDANCE_MODES, NOISE_MODES,
                         WEIGHT_CURVES, Schedule)
from ..amdm_core.schedule import MAX_STEP
from . import compat
from .guider import AMDMGuider
from .members import Member, member_label

CATEGORY = "sampling/amdm"
STACK = "AMDM_STACK"
SCHEDULE = "AMDM_SCHEDULE"
DEFAULT_SCHEDULE = Schedule()
STACK_INPUT = (STACK, {"tooltip": "The members, from ModelStack."})
SCHEDULE_INPUT = (SCHEDULE, {"tooltip": "The aggregation schedule; the defaults when not "
                                        "connected."})


def _node_error(node: str, error: ValueError) -> ValueError:
    return ValueError(f"{node}: {error}")


class ModelStack:
    DESCRIPTION = ("Adds one model to an AMDM stack: the model with its own prompts, CFG and "
                   "aggregation weight. Chain ModelStack nodes through 'stack'; the first in "
                   "the chain is member 1, the default target.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STACK,)
    RETURN_NAMES = ("stack",)
    OUTPUT_TOOLTIPS = ("The members so far, this one last.",)
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model of this member, with its "
                                               "own LoRAs and patches."}),
                "positive": ("CONDITIONING", {"tooltip": "This member's positive conditioning "
                                                         "(ControlNet, GLIGEN and hooks act only "
                                                         "on this member)."}),
                "negative": ("CONDITIONING", {"tooltip": "This member's negative conditioning."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1,
                                  "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale of this member. Inside the "
                                             "window the schedule's guidance option decides "
                                             "how much of it reaches the merge (full, the "
                                             "default: all of it)."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                     "tooltip": "Share of this member in the aggregated latent "
                                                "(relative to the other members' weights)."}),
                "deviation": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                        "tooltip": "Multiplies the schedule's deviation strength "
                                                   "for this member: how far its copy of the "
                                                   "merged latent is pulled back to its own."}),
            },
            "optional": {
                "stack": (STACK, {"tooltip": "Members added before this one."}),
                "name": ("STRING", {"default": "", "tooltip": "Label used in error messages "
                                                             "and on the schedule drawing."}),
            },
        }

    def append(self, model: Any, positive: list, negative: list, cfg: float, weight: float,
               deviation: float, stack: tuple = (), name: str = "") -> tuple:
        stack = tuple(stack)
        try:
            member = Member(model, positive, negative, cfg, weight, deviation, name.strip())
        except ValueError as error:
            raise _node_error(f"ModelStack ({member_label(len(stack), name.strip())})",
                              error) from None
        return (stack + (member,),)


class AggregationSchedule:
    DESCRIPTION = ("When and how the members are aggregated: the window of early steps, the "
                   "aggregation mode, the weight curve over the window, the deviation "
                   "optimisation, which member is the target and how members get noise.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (SCHEDULE,)
    RETURN_NAMES = ("schedule",)
    OUTPUT_TOOLTIPS = ("Connect to AMDMSampler or AMDMGuider.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        d = DEFAULT_SCHEDULE
        return {
            "required": {
                "start_percent": ("FLOAT", {"default": d.start_percent, "min": 0.0, "max": 1.0,
                                            "step": 0.01,
                                            "tooltip": "Start of the window, in ComfyUI's "
                                                       "timestep percent (as "
                                                       "ConditioningSetTimestepRange): step k "
                                                       "is in it when start <= progress(k) < "
                                                       "end; a step on a boundary belongs to "
                                                       "the window that starts there. Absolute: "
                                                       "with denoise 0.6 a run starts at 0.4. "
                                                       "A window that starts after step 0 "
                                                       "starts every member from the target's "
                                                       "latent."}),
                "end_percent": ("FLOAT", {"default": d.end_percent, "min": 0.0, "max": 1.0,
                                          "step": 0.01,
                                          "tooltip": "End of the window (1 = to the last "
                                                     "step); after it the target finishes "
                                                     "alone and the others stop."}),
                "aggregation": (AGGREGATION_MODES, {"default": d.aggregation,
                                                    "tooltip": "slerp (default): weighted "
                                                               "mean rescaled to the members' "
                                                               "mean norm, which keeps the noise "
                                                               "level; linear: weighted mean; "
                                                               "paper: "
                                                               "weights normalised to unit L2 "
                                                               "norm as in the AMDM paper."}),
                "weight_curve": (WEIGHT_CURVES, {"default": d.weight_curve,
                                                 "tooltip": "How the non-target members' "
                                                            "weights change across the window."}),
                "deviation_mode": (DEVIATION_MODES, {"default": d.deviation_mode,
                                                     "tooltip": "none: every member continues "
                                                                "from the merged latent; "
                                                                "relative: pulled back a fraction "
                                                                "towards its own proposal; "
                                                                "absolute: by a fixed length (the "
                                                                "paper's p; depends on latent "
                                                                "size)."}),
                "deviation_strength": ("FLOAT", {"default": d.deviation_strength, "min": 0.0,
                                                 "max": 1000.0, "step": 0.01,
                                                 "tooltip": "relative: fraction in [0, 1]; "
                                                            "absolute: length (about 45-55 for "
                                                            "a 4x64x64 latent in the paper)."}),
                "target_member": ("INT", {"default": d.target_member, "min": 1, "max": 64,
                                          "tooltip": "Which member (1 = first in the chain) "
                                                     "produces the image."}),
                "noise_mode": (NOISE_MODES, {"default": d.noise_mode,
                                             "tooltip": "independent (default): each member "
                                                        "its own noise derived from the seed "
                                                        "(slerp keeps the noise level, linear "
                                                        "shrinks it by about 1/sqrt(N), paper "
                                                        "inflates the latent); "
                                                        "shared: all members start from the "
                                                        "target's noise and draw the same "
                                                        "stochastic noise at each window step, "
                                                        "so linear keeps the noise level too."}),
            },
            "optional": {
                "start_step": ("INT", {"default": d.start_step, "min": 0, "max": MAX_STEP,
                                       "tooltip": "Also require step index >= start_step "
                                                  "(0 = no limit)."}),
                "end_step": ("INT", {"default": d.end_step, "min": 0, "max": MAX_STEP,
                                     "tooltip": "Also require step index < end_step; "
                                                "0 = no limit."}),
                "guidance": (GUIDANCE_MODES, {"default": d.guidance,
                                              "tooltip": "full (default): inside the window every "
                                                         "member's cfg is divided by the largest member "
                                                         "share, so equal members each keep their whole "
                                                         "guidance, as in a sum of the members' guidance "
                                                         "(members at cfg 1 stay at 1); averaged: the "
                                                         "merge blends the members' classifier-free "
                                                         "guidance with their latents (N equal members "
                                                         "keep 1/N each)."}),
            },
        }

    def build(self, **inputs: Any) -> tuple:
        try:
            return (Schedule(**inputs),)
        except ValueError as error:
            raise _node_error("AggregationSchedule", error) from None


def _guider(node: str, stack: tuple, schedule: Optional[Schedule]) -> AMDMGuider:
    try:
        return AMDMGuider(stack, DEFAULT_SCHEDULE if schedule is None else schedule, node)
    except ValueError as error:
        raise _node_error(node, error) from None


class AMDMGuiderNode:
    DESCRIPTION = ("A GUIDER that runs AMDM: use it with SamplerCustomAdvanced and any NOISE, "
                   "SAMPLER and SIGMAS.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced.",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"stack": STACK_INPUT}, "optional": {"schedule": SCHEDULE_INPUT}}

    def get_guider(self, stack: tuple, schedule: Optional[Schedule] = None) -> tuple:
        return (_guider("AMDMGuider", stack, schedule),)


class AMDMSamplerNode:
    DESCRIPTION = ("KSampler for an AMDM stack: the members' early steps are aggregated into "
                   "the target member, which finishes alone. Returns the target's latent.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The target member's denoised latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "stack": STACK_INPUT,
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                 "control_after_generate": True,
                                 "tooltip": "Seed of the target's noise (exactly KSampler's); "
                                            "the other members' noise derives from it."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                                  "tooltip": "Number of sampler steps."}),
                "sampler_name": (compat.SAMPLER_NAMES,
                                 {"tooltip": "The sampler. Inside the window it takes one step "
                                             "at a time: multistep samplers (dpmpp_2m, deis, "
                                             "lms, ...) restart their history at every "
                                             "aggregated step, uni_pc steps as euler there, "
                                             "dpm_fast, dpm_adaptive and sa_solver are "
                                             "refused (see the node's help)."}),
                "scheduler": (compat.SCHEDULER_NAMES,
                              {"tooltip": "The scheduler, computed on the target's model."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to denoise (its noise_mask "
                                                       "is honoured)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Amount of denoising, as in KSampler."}),
            },
            "optional": {"schedule": SCHEDULE_INPUT},
        }

    def sample(self, stack: tuple, seed: int, steps: int, sampler_name: str, scheduler: str,
               latent_image: dict, denoise: float, schedule: Optional[Schedule] = None) -> tuple:
        guider = _guider("AMDMSampler", stack, schedule)
        model = compat.guider_model(guider)
        latent = compat.fix_empty_latent_channels(model, latent_image)
        noise = compat.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = compat.scheduler_sigmas(model, steps, sampler_name, scheduler, denoise)
        samples = guider.sample(noise, latent, compat.sampler_object(sampler_name), sigmas,
                                denoise_mask=latent_image.get("noise_mask"),
                                callback=compat.preview_callback(model, steps),
                                disable_pbar=not compat.progress_bar_enabled(), seed=seed,
                                batch_index=latent_image.get("batch_index"))
        out = latent_image.copy()
        out["samples"] = samples.to(compat.intermediate_device())
        return (out,)


NODE_CLASS_MAPPINGS = {
    "ModelStack": ModelStack,
    "AggregationSchedule": AggregationSchedule,
    "AMDMGuider": AMDMGuiderNode,
    "AMDMSampler": AMDMSamplerNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ModelStack": "AMDM Model Stack",
    "AggregationSchedule": "AMDM Aggregation Schedule",
    "AMDMGuider": "AMDM Guider",
    "AMDMSampler": "AMDM Sampler",
}
