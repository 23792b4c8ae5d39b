"""Attention patches written the way the ecosystem's most used packs write theirs, as ComfyUI
nodes for the test server (installed as a custom node beside the pack) and as plain functions
for in-process tests. Each one changes a model's output, so that a test sees it act.

- IPAdapterStylePatch: an attn2 patch that, like IPAdapter_plus's CrossAttentionPatch (and
  InstantID's, LLLite's), picks per batch item ``(cond, uncond)[i]`` for every ``i`` in
  ``extra_options["cond_or_uncond"]``: any index other than 0 and 1 is an IndexError.
- ip_adapter_style_wrapper: the same per-item choice in an APPLY_MODEL wrapper (as packs that
  wrap the model call rather than patch attention).
- reference_only_style: an attn1 patch that, like reference-only, works on fixed chunks of the
  latent's batch size, the first item of each chunk the reference.
- batch_layout_wrapper: a unet function wrapper that reads the call's batch layout itself
  (``len(args["cond_or_uncond"])`` chunks of equal size).
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class IPAdapterStylePatch:
    """Scales the cross-attention keys of each batch item by its image embedding's scale:
    ``cond_scale`` for positive items, ``uncond_scale`` for negative ones."""

    def __init__(self, cond_scale: float, uncond_scale: float):
        self.scales = (cond_scale, uncond_scale)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> tuple:
        cond_or_uncond = extra_options["cond_or_uncond"]
        per_item = k.shape[0] // len(cond_or_uncond)
        scale = torch.cat([torch.full((per_item, 1, 1), self.scales[i], dtype=k.dtype, device=k.device)
                           for i in cond_or_uncond])
        return q, k * scale, v


def ip_adapter_style_wrapper(cond_scale: float, uncond_scale: float) -> Callable:
    """An APPLY_MODEL wrapper that scales each batch item's output by ``(cond_scale,
    uncond_scale)[i]`` for its ``i`` in ``transformer_options["cond_or_uncond"]``."""
    scales = (cond_scale, uncond_scale)

    def wrapper(executor: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                c_crossattn: Any = None, control: Any = None, transformer_options: dict = {},
                **kwargs: Any) -> torch.Tensor:
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        cond_or_uncond = transformer_options["cond_or_uncond"]
        per_item = out.shape[0] // len(cond_or_uncond)
        scale = torch.cat([torch.full((per_item,), scales[i], dtype=out.dtype, device=out.device)
                           for i in cond_or_uncond])
        return out * scale.view(-1, *([1] * (out.dim() - 1)))
    return wrapper


def reference_only_style(latent_batch: int) -> Callable:
    """An attn1 patch that lets every item of a chunk of ``latent_batch`` items attend to the
    first item's queries as well as its own keys (keys and values doubled in length)."""
    def patch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> tuple:
        tokens = q.shape[1]
        keys = torch.cat([k, k], dim=1)
        for first in range(0, q.shape[0], latent_batch):
            keys[first + 1:first + latent_batch, tokens:] = q[first]
        return q, keys, keys
    return patch


def batch_layout_wrapper(strength: float) -> Callable[[Callable, dict], torch.Tensor]:
    """A unet function wrapper that mixes each chunk's first item into the others, chunks
    taken as ``len(cond_or_uncond)`` equal parts of the batch."""
    def wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        x = args["input"]
        chunks = len(args["cond_or_uncond"])
        out = apply_model(x, args["timestep"], **args["c"])
        parts = list(out.chunk(chunks))
        return torch.cat([part + strength * part[:1] for part in parts])
    return wrapper


class ApplyIPAdapterStylePatch:
    """A node that puts IPAdapterStylePatch on a clone of the MODEL (a new patch object per
    call, as IPAdapter_plus's nodes do)."""

    CATEGORY = "amdm tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    # Two such nodes with equal inputs give two patched MODELs, as two IPAdapter nodes with
    # their own images do (ComfyUI's cache would otherwise hand both the first one's output).
    NOT_IDEMPOTENT = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",),
                             "cond_scale": ("FLOAT", {"default": 1.3, "min": 0.0, "max": 10.0}),
                             "uncond_scale": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 10.0})}}

    def apply(self, model: Any, cond_scale: float, uncond_scale: float) -> tuple:
        patched = model.clone()
        patched.set_model_attn2_patch(IPAdapterStylePatch(cond_scale, uncond_scale))
        return (patched,)


NODE_CLASS_MAPPINGS = {"ApplyIPAdapterStylePatch": ApplyIPAdapterStylePatch}
