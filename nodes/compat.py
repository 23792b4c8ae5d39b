"""Every use of ComfyUI that is not a public node or a documented extension point.

The rest of the pack imports nothing from ComfyUI: it calls these functions, so that a
change in ComfyUI's internals is mended here, once. Differences between ComfyUI versions
are found by feature detection (signatures, attributes), never by version numbers.
Tested against ComfyUI 0.3.64; the branches for newer ComfyUI follow its sources
(multi-GPU clones and thread pool, deep clones, latents with spatial/temporal ratios).

Official extension points are used where they give the same result: a CFGGuider subclass
(the GUIDER API, as ComfyUI's own Guider_DualModel drives a second model) and its set_cfg,
and the ``sampler_calc_cond_batch_function`` model option for batched members. ComfyUI's
WrappersMP wrappers (OUTER_SAMPLE, SAMPLER_SAMPLE, PREDICT_NOISE) are not: each wraps the
sampling of one ModelPatcher, while the window steps several members' samplers in turn,
each inside its own CFGGuider.sample, from one loop; a member's wrappers and hooks still
run, since its sampling is ComfyUI's own.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import os
import re
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

import psutil
import safetensors
import torch

import comfy.conds
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.supported_models
import comfy.utils
import folder_paths
import latent_preview
import nodes as comfy_nodes

logger = logging.getLogger(__name__)

CFGGuider = comfy.samplers.CFGGuider
KSAMPLER = comfy.samplers.KSAMPLER
SAMPLER_NAMES: list[str] = comfy.samplers.KSampler.SAMPLERS
SCHEDULER_NAMES: list[str] = comfy.samplers.KSampler.SCHEDULERS
InterruptError = comfy.model_management.InterruptProcessingException


def _accepts(function: Callable, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


# --- samplers ---------------------------------------------------------------------------

def is_plain_ksampler(sampler: Any) -> bool:
    """A k-diffusion SAMPLER that ComfyUI runs as ``sampler_function(model, x, sigmas,
    ...)``: the only kind that can be driven one step at a time."""
    return isinstance(sampler, KSAMPLER) and type(sampler).sample is KSAMPLER.sample


def sampler_parts(sampler: Any) -> tuple[Callable, dict, dict]:
    """(sampler_function, extra_options, inpaint_options) of a plain KSAMPLER."""
    return sampler.sampler_function, sampler.extra_options, sampler.inpaint_options


def sampler_function(name: str) -> Callable:
    """The k-diffusion function ComfyUI runs for the sampler ``name``."""
    return comfy.samplers.ksampler(name).sampler_function


def sampler_object(name: str) -> Any:
    return comfy.samplers.sampler_object(name)


def make_ksampler(function: Callable, inpaint_options: dict) -> Any:
    return KSAMPLER(function, inpaint_options=inpaint_options)


# --- models -----------------------------------------------------------------------------

def model_sampling(patcher: Any) -> Any:
    return patcher.get_model_object("model_sampling")


def latent_format(patcher: Any) -> Any:
    return patcher.get_model_object("latent_format")


def latent_format_signature(patcher: Any) -> tuple:
    """What makes two models' latents the same kind: the latent format's class, channels,
    dimensions, scale and shift."""
    latent = latent_format(patcher)
    return (type(latent).__name__, latent.latent_channels, latent.latent_dimensions,
            latent.scale_factor, getattr(latent, "shift_factor", None))


def sigma_table(sampling: Any) -> torch.Tensor:
    """A sigma-space model_sampling's noise levels: its discrete table, else its range."""
    table = getattr(sampling, "sigmas", None)
    if isinstance(table, torch.Tensor):
        return table.detach().float().cpu()
    return torch.tensor([float(sampling.sigma_min), float(sampling.sigma_max)])


def guider_model(guider: Any) -> Any:
    """The MODEL a GUIDER samples (its target's)."""
    return guider.model_patcher


def is_flow_matching(sampling: Any) -> bool:
    return isinstance(sampling, comfy.model_sampling.CONST)


def clone_patcher(patcher: Any) -> Any:
    return patcher.clone()


def load_device(patcher: Any) -> torch.device:
    """Where the MODEL is evaluated (cpu:N is the one CPU)."""
    device = torch.device(patcher.load_device)
    return torch.device("cpu") if device.type == "cpu" else device


def shares_weights_storage(a: Any, b: Any) -> bool:
    """Whether two MODELs are patchers of one torch module (clones of one checkpoint)."""
    return a.model is b.model


# --- latents, noise, sigmas ---------------------------------------------------------------

def fix_empty_latent_channels(patcher: Any, latent: dict) -> torch.Tensor:
    """The LATENT's samples with the channels the model expects (an empty latent made for
    another family), passing the spatial/temporal ratios where ComfyUI takes them."""
    function = comfy.sample.fix_empty_latent_channels
    extra = {key: latent.get(key) for key in ("downscale_ratio_spacial", "downscale_ratio_temporal")
             if _accepts(function, key)}
    return function(patcher, latent["samples"], **extra)


def prepare_noise(latent: torch.Tensor, seed: int,
                  batch_index: Optional[Sequence[int]] = None) -> torch.Tensor:
    return comfy.sample.prepare_noise(latent, seed, batch_index)


def scheduler_sigmas(patcher: Any, steps: int, sampler_name: str, scheduler: str,
                     denoise: float) -> torch.Tensor:
    """The sigmas KSampler would run with these settings."""
    return comfy.samplers.KSampler(patcher, steps=steps, device=patcher.load_device,
                                   sampler=sampler_name, scheduler=scheduler, denoise=denoise,
                                   model_options=patcher.model_options).sigmas


def scheduler_step_count(steps: int, denoise: float) -> int:
    """At most how many steps KSampler and BasicScheduler schedule for these settings: with
    denoise < 1 they compute steps / denoise of them and run the last ``steps``."""
    if denoise >= 1.0:
        return steps
    return 0 if denoise <= 0.0 else int(steps / denoise)


def is_nested(latent: torch.Tensor) -> bool:
    """Nested latents (several latents packed, as audio-video models use) in newer ComfyUI."""
    return bool(getattr(latent, "is_nested", False))


# --- progress, previews, interrupt --------------------------------------------------------

def preview_callback(patcher: Any, steps: int) -> Callable:
    return latent_preview.prepare_callback(patcher, steps)


def progress_bar_enabled() -> bool:
    return comfy.utils.PROGRESS_BAR_ENABLED


def intermediate_device() -> torch.device:
    return comfy.model_management.intermediate_device()


def throw_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


# --- a guider's live state while its sample() runs ----------------------------------------

def estimate_memory(guider: Any, shape: Sequence[int]) -> tuple[int, int]:
    """What ComfyUI reserves when it loads this guider's model for latents of ``shape``
    (conds' extra models, a ControlNet's inference memory included)."""
    patcher, conds = guider.model_patcher, guider.original_conds
    memory, minimum = comfy.sampler_helpers.estimate_memory(patcher, shape, conds)
    _, inference_memory = comfy.sampler_helpers.get_additional_models(conds, patcher.model_dtype())
    return memory + inference_memory, minimum + inference_memory


def guider_patchers(guider: Any) -> list[Any]:
    """The patchers a guider's evaluation runs on: its model's, and the multi-GPU clones
    newer ComfyUI prepares for it (model_options["multigpu_clones"])."""
    clones = guider.model_options.get("multigpu_clones", {}) if guider.model_options else {}
    return [guider.model_patcher, *clones.values()]


def ensure_loaded(guider: Any, memory_required: int, minimum_memory_required: int) -> None:
    """Load the guider's model (and the models its conds need) if another member's load
    evicted it, reserving what ComfyUI's own sampling prepare reserves; then make each of
    its patchers the current one of its torch module (clones of one checkpoint share the
    module, and its current_patcher decides whose hooks and patches apply)."""
    patchers = guider_patchers(guider)
    loaded = comfy.model_management.loaded_models()
    if any(p not in loaded for p in [*patchers, *guider.loaded_models]):
        comfy.model_management.load_models_gpu(
            [*patchers, *guider.loaded_models], memory_required=memory_required,
            minimum_memory_required=minimum_memory_required)
    for patcher in patchers:
        if patcher.model.current_patcher is not patcher:
            patcher.pre_run()


def prepare_controls_again(guider: Any) -> None:
    """Prepare the guider's ControlNets again (another guider's cleanup reset a ControlNet
    object both share)."""
    for conds in guider.conds.values():
        comfy.samplers.pre_run_control(guider.inner_model, conds)


# --- several devices ----------------------------------------------------------------------

def device_pool(devices: Iterable[torch.device]) -> Optional[Any]:
    """ComfyUI's multi-GPU thread pool over ``devices`` (one worker per device), where the
    installed ComfyUI has one; None otherwise (members then run one after another)."""
    try:
        import comfy.multigpu
    except ImportError:
        return None
    pool_class = getattr(comfy.multigpu, "MultiGPUThreadPool", None)
    return pool_class(list(devices)) if pool_class is not None else None


# --- the schedule chart's server route ------------------------------------------------------

def running_prompt_server() -> Optional[Any]:
    """The PromptServer of a running ComfyUI, to add routes to. main.py creates it before it
    imports custom nodes; imported any other way (a script, tests in one process) the pack
    finds none, and importing ComfyUI's `server` module there would start nothing."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)


def node_class(class_type: str) -> Optional[type]:
    """The node class ComfyUI registers under ``class_type``; None if there is none."""
    return comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)


class _SamplingOnly(torch.nn.Module):
    """A torch module with nothing but ``model_sampling`` and its model config."""

    def __init__(self, model_config: Any, model_sampling: Any) -> None:
        super().__init__()
        self.model_config = model_config
        self.model_sampling = model_sampling


def _sampling_model(model_config: Any, model_sampling: Any) -> Any:
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(_SamplingOnly(model_config, model_sampling),
                                            load_device=device, offload_device=device)


# Loader nodes whose model file the chart can read: node -> (file input, models folder).
MODEL_FILE_LOADERS = {"CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
                      "UNETLoader": ("unet_name", "diffusion_models")}


def loaded_model_file(class_type: str, inputs: dict) -> Optional[tuple[str, str]]:
    """The path of the file a MODEL_FILE_LOADERS node loads and its models folder; None if
    it is another node or the file does not exist."""
    if class_type not in MODEL_FILE_LOADERS:
        return None
    name_input, folder = MODEL_FILE_LOADERS[class_type]
    name = inputs.get(name_input)
    path = folder_paths.get_full_path(folder, name) if isinstance(name, str) else None
    return None if path is None else (path, folder)


@functools.lru_cache(maxsize=16)
def _detected_sampling(path: str, modified: float,
                       diffusion_model_only: bool) -> Optional[tuple[Any, Any]]:
    # ComfyUI's detection looks at tensor names and shapes, so meta tensors stand in for the
    # weights, and the model is built on the meta device (its model_base class decides the
    # prediction type). A few checks read values of small tensors (SD2's v-prediction from
    # a norm bias, CosXL's sigma range): those are read for real.
    with safetensors.safe_open(path, framework="pt", device="cpu") as file:
        metadata = file.metadata()
        state = {}
        for key in file.keys():
            piece = file.get_slice(key)
            shape = piece.get_shape()
            state[key] = file.get_tensor(key) if math.prod(shape) <= _READ_VALUES_UP_TO else \
                torch.empty(shape, device="meta",
                            dtype=_SAFETENSORS_DTYPES.get(piece.get_dtype(), torch.float32))
    prefix = comfy.model_detection.unet_prefix_from_state_dict(state)
    if diffusion_model_only:  # as ComfyUI's diffusion-model loader reads a file
        state = comfy.utils.state_dict_prefix_replace(state, {prefix: ""}, filter_keys=True) or state
        prefix, metadata = "", None
    config = comfy.model_detection.model_config_from_unet(state, prefix, metadata=metadata)
    if config is None:
        return None
    return config, config.get_model(state, prefix, device=torch.device("meta")).model_sampling


# Tensors of at most this many elements are read with their values (biases, norms, scalars).
_READ_VALUES_UP_TO = 4096
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def sampling_model_of_file(path: str, folder: str) -> Optional[tuple[Any, str]]:
    """A MODEL carrying only the model_sampling that ComfyUI's detection gives the
    checkpoint or diffusion model at ``path`` (loaded from models ``folder``; only its
    header and its smallest tensors are read), and the name of its model config; None when
    the file is not safetensors or ComfyUI does not recognise it."""
    if not path.endswith((".safetensors", ".sft")):
        return None
    try:
        detected = _detected_sampling(path, os.path.getmtime(path), folder == "diffusion_models")
    except Exception as error:  # a file ComfyUI's detection cannot read: the chart assumes
        logger.debug("no model family detected for %s: %s", path, error)
        return None
    if detected is None:
        return None
    config, sampling = detected
    return _sampling_model(config, sampling), type(config).__name__


def discrete_sampling_model() -> Any:
    """A MODEL that carries only the model_sampling of a discrete SD1.x / SDXL checkpoint
    (one sigma table): all that schedulers, SIGMAS nodes and ModelSampling nodes read from a
    MODEL, with no weights."""
    config = comfy.supported_models.SD15(comfy.supported_models.SD15.unet_config)
    return _sampling_model(config, comfy.model_base.model_sampling(config, comfy.model_base.ModelType.EPS))


# --- declared support -----------------------------------------------------------------------

# The ComfyUI versions this pack declares (pyproject.toml [tool.comfy] requires-comfyui):
# run and tested on both ends.
SUPPORTED_COMFYUI = ">=0.3.64,<=0.28.0"
_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b, "==": lambda a, b: a == b}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def in_supported_range(version: str, spec: str = SUPPORTED_COMFYUI) -> bool:
    """Whether ``version`` satisfies every clause of ``spec`` (">=0.3.64,<0.39")."""
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


# --- members that share weights ---------------------------------------------------------------

# The model_options key of ComfyUI's hook for replacing calc_cond_batch inside
# sampling_function (each member's CFG path stays ComfyUI's own).
CALC_COND_BATCH_HOOK = "sampler_calc_cond_batch_function"

# evaluate(model, conds, x, sigma, model_options) -> one prediction per cond list.
CondBatchFn = Callable[[Any, list, torch.Tensor, torch.Tensor, dict], list]


def calc_cond_batch(model: Any, conds: list, x: torch.Tensor, timestep: torch.Tensor,
                    model_options: dict) -> list[torch.Tensor]:
    """ComfyUI's batched evaluation of several cond lists at one latent; it splits the
    batch by its own free-memory estimate."""
    return comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)


def has_calc_cond_batch_hook(extra_args: dict) -> bool:
    """Whether a sampler's extra_args already carry a calc_cond_batch hook (another pack's)."""
    return CALC_COND_BATCH_HOOK in extra_args["model_options"]


def with_calc_cond_batch_hook(extra_args: dict, evaluate: CondBatchFn) -> dict:
    """A copy of a sampler's extra_args whose sampling_function evaluates its cond lists
    through ``evaluate`` instead of calc_cond_batch."""
    def hook(args: dict) -> list:
        return evaluate(args["model"], args["conds"], args["input"], args["sigma"],
                        args["model_options"])
    return {**extra_args, "model_options": {**extra_args["model_options"], CALC_COND_BATCH_HOOK: hook}}


def same_weights(a: Any, b: Any) -> bool:
    """Patchers of one torch module whose weight patches are the same (ComfyUI's own
    test of clones that share their weights)."""
    return shares_weights_storage(a, b) and bool(a.clone_has_same_weights(b))


def _same_inputs(a: Any, b: Any) -> bool:
    """Structural equality of what a model is given: dicts, lists and tuples item by item,
    tensors (and ComfyUI's cond wrappers) by value, plain values by ==, anything else (a
    patch function, a ControlNet) by identity."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and \
            bool(torch.equal(a, b))
    if isinstance(a, comfy.conds.CONDRegular):
        return _same_inputs(a.cond, b.cond)
    if isinstance(a, dict):
        # Every processed cond gets a uuid of its own; it names the cond, it is not an input.
        keys = a.keys() - {"uuid"}
        return keys == b.keys() - {"uuid"} and all(_same_inputs(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    return isinstance(a, (str, int, float, bool)) and a == b


def same_model_options(a: Any, b: Any) -> bool:
    """Whether two MODELs evaluate alike apart from weights: the same attention patches,
    wrappers and options (patch objects compared by identity; copies count as different)."""
    return _same_inputs(a.model_options, b.model_options)


def same_processed_conds(a: Optional[list], b: Optional[list]) -> bool:
    """Whether two of the guiders' processed cond lists (as calc_cond_batch takes them)
    are the same input to the model: equal tensors and model conds, the same objects for
    anything else (a ControlNet, a GLIGEN model)."""
    return a is not None and b is not None and _same_inputs(a, b)


def conds_have_hooks(guider: Any) -> bool:
    return any("hooks" in cond for conds in guider.original_conds.values() for cond in conds)


def guider_conds(guider: Any, cfg1_optimised: bool) -> list[Optional[list]]:
    """[positive, negative] as the guider's sampling_function passes them to
    calc_cond_batch (negative None at cfg 1 unless the sampler disables that shortcut)."""
    negative = None if cfg1_optimised and math.isclose(guider.cfg, 1.0) else \
        guider.conds.get("negative")
    return [guider.conds.get("positive"), negative]


def cfg1_optimised(model_options: dict) -> bool:
    return not model_options.get("disable_cfg1_optimization", False)


def model_bytes(patcher: Any) -> int:
    return patcher.model_size()


def can_hold_resident_copy(patcher: Any, window_bytes: int) -> tuple[bool, str]:
    """Whether one more copy of ``patcher``'s weights fits beside ``window_bytes`` of
    other weights the window keeps on the same device, by ComfyUI's memory state and its
    inference reserve; when not, the reason."""
    state = comfy.model_management.vram_state
    if state in (comfy.model_management.VRAMState.LOW_VRAM,
                 comfy.model_management.VRAMState.NO_VRAM):
        return False, f"ComfyUI runs in {state.name} mode"
    device = patcher.load_device
    size = patcher.model_size()
    needed = window_bytes + size + comfy.model_management.minimum_inference_memory()
    total = comfy.model_management.get_total_memory(device)
    if needed > total:
        return False, (f"{needed / 2**30:.1f} GiB of weights and inference memory exceed "
                       f"the {total / 2**30:.1f} GiB of {device}")
    available = psutil.virtual_memory().available
    if size > available:
        return False, f"{size / 2**30:.1f} GiB more exceed the {available / 2**30:.1f} GiB of free RAM"
    return True, ""


def independent_copy(patcher: Any) -> Any:
    """A patcher with the same patches and options on a torch module of its own.

    Newer ComfyUI builds it from the checkpoint's loader (clone(force_deepcopy=True));
    older ones get a deep copy of the module taken while it is unpatched (ComfyUI
    restores a module's original weights when it unloads it, as it does for clones)."""
    own = _copy_of_module(patcher)
    # clone() names the original as the copy's parent; the copy owns its module, so it is
    # no clone of the original for model management, and the link would keep the original
    # (the key the copy is cached under, weakly) alive for as long as the copy.
    own.parent = None
    return own


def _copy_of_module(patcher: Any) -> Any:
    if _accepts(patcher.clone, "force_deepcopy") and \
            getattr(patcher, "cached_patcher_init", None) is not None:
        return patcher.clone(force_deepcopy=True)
    loaded = comfy.model_management.current_loaded_models
    for entry in [e for e in loaded if e.model is not None and e.model.model is patcher.model]:
        entry.model_unload()
        loaded.remove(entry)
    module = patcher.model
    current, module.current_patcher = getattr(module, "current_patcher", None), None
    try:
        copied = copy.deepcopy(module)
    finally:
        module.current_patcher = current
    own = patcher.clone()
    own.model = copied
    own.backup, own.object_patches_backup, own.hook_backup = {}, {}, {}
    own.cached_hook_patches = {}
    return own
