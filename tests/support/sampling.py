"""Fixtures and helpers for sampling tests: the pack's Member and Schedule, fixture models
and prompts, and ComfyUI's KSampler / the pack's AMDMSampler on tiny latents.

Test modules import the fixtures they use (``from support.sampling import amdm, ...``).
"""
from __future__ import annotations

import contextlib

import pytest

from support.comfy_env import run_node

STEPS = 8
SEED = 1234


@pytest.fixture(scope="module")
def amdm(pack):
    """(Member, Schedule) of the pack."""
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import Member
    return Member, Schedule


@pytest.fixture(scope="module")
def prompts(sd15, encode):
    _, clip, _ = sd15
    return {name: encode(clip, text) for name, text in {
        "red": "a red cube on the left", "blue": "a blue ball on the right",
        "cat": "a cat in a garden", "empty": ""}.items()}


@pytest.fixture(scope="module")
def model_a(sd15):
    return sd15[0]


@pytest.fixture(scope="module")
def model_b(load_checkpoint):
    return load_checkpoint("dreamshaper_8.safetensors")[0]


@pytest.fixture(scope="module")
def model_c(load_checkpoint):
    return load_checkpoint("realisticVisionV60B1_v51VAE.safetensors")[0]


def empty_latent(batch: int = 1, size: int = 64) -> dict:
    return run_node("EmptyLatentImage", width=size, height=size, batch_size=batch)[0]


def ksampler(model, positive, negative, cfg, sampler, latent=None, seed=SEED, steps=STEPS,
             scheduler="normal", denoise=1.0):
    latent = empty_latent() if latent is None else latent
    return run_node("KSampler", model=model, seed=seed, steps=steps, cfg=cfg,
                    sampler_name=sampler, scheduler=scheduler, positive=positive,
                    negative=negative, latent_image=latent, denoise=denoise)[0]["samples"]


def amdm_sampler(stack, schedule, sampler, latent=None, seed=SEED, steps=STEPS,
                 scheduler="normal", denoise=1.0):
    latent = empty_latent() if latent is None else latent
    return run_node("AMDMSampler", stack=tuple(stack), seed=seed, steps=steps,
                    sampler_name=sampler, scheduler=scheduler, latent_image=latent,
                    denoise=denoise, schedule=schedule)[0]["samples"]


def interrupting_clone(model, on_call: int = 2) -> tuple:
    """A clone of ``model`` that asks ComfyUI to interrupt at its ``on_call``-th UNet call
    (the call itself completes; the sampler stops at its next check), and the list that
    grows by one entry per UNet call of it."""
    import comfy.model_management

    calls = []
    interrupting = model.clone()

    def interrupt(apply_model, args):
        calls.append(1)
        if len(calls) == on_call:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])
    interrupting.set_model_unet_function_wrapper(interrupt)
    return interrupting, calls


class EvaluationLog:
    """Records every UNet evaluation of a model through ComfyUI's unet function wrapper."""

    def __init__(self):
        self.sigmas: dict[str, list[float]] = {}

    def watch(self, model, name: str):
        watched = model.clone()
        log = self.sigmas.setdefault(name, [])

        def wrapper(apply_model, args):
            log.append(float(args["timestep"][0]))
            return apply_model(args["input"], args["timestep"], **args["c"])
        watched.set_model_unet_function_wrapper(wrapper)
        return watched


@contextlib.contextmanager
def vram_state(state):
    """ComfyUI's VRAM mode (as --lowvram sets it) for the duration."""
    import comfy.model_management
    saved = comfy.model_management.vram_state
    comfy.model_management.vram_state = state
    try:
        yield
    finally:
        comfy.model_management.vram_state = saved
