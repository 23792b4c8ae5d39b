"""What differs between the ComfyUI releases the pack supports, found by feature detection.

The rest of the pack uses ComfyUI's modules directly. Where releases differ (a parameter
one release added, a module or function only newer ones have), the pack calls the function
here, which probes signatures and attributes, never version numbers. Tested on ComfyUI
0.3.64 and 0.28.0.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import re
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

import comfy.model_management
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers

logger = logging.getLogger(__name__)


def _accepts(function: Callable, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


# --- nodes ----------------------------------------------------------------------------------

def node_outputs(node_class: type, inputs: dict[str, Any]) -> tuple:
    """Run a node as ComfyUI's executor does and return its outputs: V1 nodes (a tuple, or
    {"result": ...} from output nodes) and V3 nodes (io.NodeOutput), which releases mix."""
    result = getattr(node_class(), node_class.FUNCTION)(**inputs)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    if isinstance(result, dict):
        result = result.get("result", ())
    elif not isinstance(result, tuple) and hasattr(result, "result"):
        result = result.result
    return tuple(result)


# --- latents --------------------------------------------------------------------------------

def fix_empty_latent_channels(patcher: Any, latent: dict) -> torch.Tensor:
    """The LATENT's samples with the channels the model expects (an empty latent made for
    another family), passing the spatial/temporal ratios where ComfyUI takes them (0.28)."""
    function = comfy.sample.fix_empty_latent_channels
    extra = {key: latent.get(key) for key in ("downscale_ratio_spacial", "downscale_ratio_temporal")
             if _accepts(function, key)}
    return function(patcher, latent["samples"], **extra)


def is_nested(latent: torch.Tensor) -> bool:
    """Nested latents (several latents packed, as audio-video models use; 0.28)."""
    return bool(getattr(latent, "is_nested", False))


def intermediate_dtype() -> torch.dtype:
    """The dtype KSampler hands its LATENT on in (0.28 has a setting; before, float32)."""
    function = getattr(comfy.model_management, "intermediate_dtype", None)
    return function() if function is not None else torch.float32


def process_conds(model: Any, noise: torch.Tensor, conds: dict, device: torch.device,
                  latent_image: torch.Tensor, denoise_mask: Optional[torch.Tensor],
                  seed: Optional[int]) -> dict:
    """comfy.samplers.process_conds for one plain latent (0.28 also takes its shapes)."""
    extra = {"latent_shapes": [latent_image.shape]} if _accepts(comfy.samplers.process_conds, "latent_shapes") else {}
    return comfy.samplers.process_conds(model, noise, conds, device, latent_image, denoise_mask, seed, **extra)


# --- several GPUs ---------------------------------------------------------------------------

def prepare_multigpu_clones(guider: Any) -> list[Any]:
    """The per-device clones of a guider's model that ComfyUI's multi-GPU sampling prepared
    (0.28, with a thread pool for them in its model_options), as outer_sample makes them;
    none on releases without it."""
    prepare = getattr(comfy.sampler_helpers, "prepare_model_patcher_multigpu_clones", None)
    if prepare is None:
        return []
    patchers = prepare(guider.model_patcher, guider.loaded_models, guider.model_options)
    if patchers:
        devices = [guider.model_patcher.load_device] + [p.load_device for p in patchers]
        guider.model_options["multigpu_thread_pool"] = device_pool(devices)
    return patchers


def multigpu_clones(guider: Any) -> list[Any]:
    """The per-device clones of a guider's model that ComfyUI's multi-GPU sampling prepared
    for its run (0.28 keeps them, with the guider's own patcher, in model_options under
    "multigpu_clones"); none on releases without multi-GPU sampling."""
    clones = (guider.model_options or {}).get("multigpu_clones", {})
    return [patcher for patcher in clones.values() if patcher is not guider.model_patcher]


def shutdown_multigpu_pool(guider: Any) -> None:
    pool = guider.model_options.pop("multigpu_thread_pool", None)
    if pool is not None:
        pool.shutdown()


def device_pool(devices: Iterable[torch.device]) -> Optional[Any]:
    """ComfyUI's multi-GPU thread pool over ``devices`` (one worker per device), where the
    installed ComfyUI has one; None otherwise (members then run one after another)."""
    try:
        import comfy.multigpu
    except ImportError:
        return None
    pool_class = getattr(comfy.multigpu, "MultiGPUThreadPool", None)
    return pool_class(list(devices)) if pool_class is not None else None


@contextlib.contextmanager
def device_context(device: torch.device) -> Iterator[None]:
    """The CUDA device made current while a member on it steps (0.28 runs each sampling
    under it, for kernels that read the current device); nothing on older releases."""
    context = getattr(comfy.model_management, "cuda_device_context", None)
    with (context(device) if context is not None else contextlib.nullcontext()):
        yield


# --- a copy of a model's weights ------------------------------------------------------------

def independent_copy(patcher: Any) -> Optional[Any]:
    """A patcher with the same patches and options on a torch module of its own; None when
    the model cannot be copied.

    Newer ComfyUI builds it from the checkpoint's loader (clone(force_deepcopy=True), where
    the loader recorded how: cached_patcher_init); otherwise the module is deep-copied while
    unpatched (ComfyUI restores a module's original weights when it unloads it)."""
    if _accepts(patcher.clone, "force_deepcopy") and getattr(patcher, "cached_patcher_init", None) is not None:
        own = patcher.clone(force_deepcopy=True)
    else:
        own = _deep_copy(patcher)
        if own is None:
            return None
    # The copy owns its module: no clone of the original for model management (a parent
    # link would also keep the original, the key it is cached under, alive), no shared
    # hook backup, a clone family of its own where ComfyUI tracks one.
    own.parent = None
    own.hook_backup = {}
    if hasattr(own, "clone_base_uuid"):
        own.clone_base_uuid = uuid.uuid4()
    return own


def unload(patcher: Any) -> None:
    """Give the weights of ``patcher``'s torch module (and of its clones) back to ComfyUI's
    model management: unloaded to the offload device, patches undone. Releases have no
    call for one model (0.28's unload_model_and_clones unloads a clone family on one
    device), so this does what ComfyUI's free_memory does to each entry it frees."""
    loaded = comfy.model_management.current_loaded_models
    for entry in [e for e in loaded if e.model is not None and e.model.model is patcher.model]:
        entry.model_unload()
        loaded.remove(entry)


def _deep_copy(patcher: Any) -> Optional[Any]:
    unload(patcher)
    module = patcher.model
    current, module.current_patcher = getattr(module, "current_patcher", None), None
    try:
        # The model config is shared, not copied: 0.28's configs answer every missing
        # attribute (deepcopy's __setstate__ among them) with None.
        copied = copy.deepcopy(module, {id(module.model_config): module.model_config})
    except Exception as error:  # a loader's module that deepcopy cannot handle
        logger.debug("no copy of %s: %s", type(module).__name__, error)
        return None
    finally:
        module.current_patcher = current
    own = patcher.clone()
    own.model = copied
    own.backup, own.object_patches_backup = {}, {}
    own.cached_hook_patches = {}
    return own


# --- declared support -----------------------------------------------------------------------

# The ComfyUI releases this pack declares (pyproject.toml [tool.comfy] requires-comfyui):
# run and tested on both ends.
SUPPORTED_COMFYUI = ">=0.3.64,<=0.28.0"
_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b, "==": lambda a, b: a == b}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def in_supported_range(version: str, spec: str = SUPPORTED_COMFYUI) -> bool:
    """Whether ``version`` satisfies every clause of ``spec`` (">=0.3.64,<=0.28.0")."""
    for clause in spec.split(","):
        operator, bound = re.match(r"\s*([<>=]=?)\s*(\S+)", clause).groups()
        if not _COMPARE[operator](_version_tuple(version), _version_tuple(bound)):
            return False
    return True


def running_comfyui_version() -> Optional[str]:
    try:
        import comfyui_version
    except ImportError:
        return None
    return getattr(comfyui_version, "__version__", None)


def warn_if_unsupported(version: Optional[str]) -> bool:
    """Log one warning when the running ComfyUI is outside the declared range; returns
    whether it warned."""
    if version is None or in_supported_range(version):
        return False
    logger.warning("comfyui-amdm declares ComfyUI %s and found %s: it may work, but it was "
                   "not tested there", SUPPORTED_COMFYUI, version)
    return True
