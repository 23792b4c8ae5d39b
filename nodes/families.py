"""What the schedule chart needs from ComfyUI besides its nodes: the model family of the
file a loader node loads (its model_sampling, as ComfyUI's detection gives it), without
loading the weights, and a model that carries nothing but a model_sampling."""
from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Optional

import safetensors
import torch

import comfy.model_base
import comfy.model_detection
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import folder_paths

logger = logging.getLogger(__name__)


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
