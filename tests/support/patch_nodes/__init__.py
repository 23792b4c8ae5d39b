"""Attention patches written the way the ecosystem's most used packs write theirs, as ComfyUI
nodes for the test server (installed as a custom node beside the pack) and as plain functions
for in-process tests. Each one changes a model's output, so that a test sees it act.

- IPAdapterStylePatch: an attn2 patch that, like IPAdapter_plus's CrossAttentionPatch (and
  InstantID's, LLLite's), picks per batch item ``(cond, uncond)[i]`` for every ``i`` in
  ``extra_options["cond_or_uncond"]``: any index other than 0 and 1 is an IndexError.
- ReferenceOnlyStylePatch: a unet function wrapper that, like reference-only, reads the batch
  layout itself (``len(args["cond_or_uncond"])`` chunks of equal size).
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


def reference_only_style(strength: float) -> Callable[[Callable, dict], torch.Tensor]:
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
