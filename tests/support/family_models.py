"""Tiny, deterministic, randomly initialised models of the families people run today.

SDXL (eps, and a v-prediction zsnr variant) with its refiner, SD3.5, Flux (dev, with a guidance
embedding, and schnell, without) and Wan 2.1 text-to-video (also the architecture of Wan 2.2
A14B's high-noise and low-noise experts). Every model is a real ComfyUI model of its family
(its ``supported_models`` class, ``model_base`` wrapper, latent format and model_sampling) at a
width of about one million parameters, so that a sampling step takes milliseconds on a CPU.

How ComfyUI recognises them (:func:`stock_loader_accepts` finds out by loading each file
with the loader of its models folder, since releases differ):

* SD3 and Wan: ComfyUI's detection reads every width from the weights, so the tiny files
  load through the stock UNETLoader (``comfy.sd.load_diffusion_model``), on a server too.
* Flux: detection reads the layout (double/single blocks, guidance embedding) from the keys
  and picks ``Flux`` or ``FluxSchnell``. ComfyUI 0.3.64 hard-codes the full width (hidden
  size 3072, 24 heads); later releases read it from the weights, and their UNETLoader takes
  the tiny files. Where the stock loader refuses them, :func:`load_model` runs the same
  detection, replaces the hard-coded width with the one the weights have, and loads the model
  the way ``load_diffusion_model_state_dict`` does.
* SDXL: ``supported_models.SDXL`` is matched on full-size numbers (model_channels 320,
  transformer depths [0, 0, 2, 2, 10, 10], context 2048); the tiny UNet's config is read from
  its keys by ComfyUI's ``detect_unet_config`` and the SDXL class is named explicitly. The
  v-prediction/zsnr variant carries the ``v_pred`` and ``ztsnr`` marker keys of real
  checkpoints, which ``SDXL.model_type`` reads. The refiner likewise (``SDXLRefiner``: four
  levels with attention only in the middle two, as the real refiner's [0, 0, 4, 4, 4, 4, 0, 0]).

Text: the families' text encoders (CLIP-G, T5-XXL, UMT5-XXL) cannot be made small for
ComfyUI's loaders, whose configs are fixed. One CLIP-L at its real shape (``clip_l.safetensors``)
stands in for all of them through the stock CLIPLoader: type ``sd3`` gives the SD3/Flux/Wan
shapes (context 4096 wide, pooled 2048, of which Flux reads the first 768), type
``stable_diffusion`` gives 768-wide context and pooled output, and the tiny SDXL UNets take
exactly those (context_dim 768; adm_in_channels 768 + 6 * 256 for the base, whose size
embeddings are height, width, crop and target size, 768 + 5 * 256 for the refiner, whose are
height, width, crop and aesthetic score).

VAEs: the stock VAELoader builds them at their real (fixed) sizes: the 16-channel SD3/Flux
autoencoder and the Wan 2.1 video VAE are generated at full size. SDXL's VAE has the SD1.5 VAE's
architecture; the SD1.5 fixture checkpoints' VAE serves it.

Files are generated once (a few seconds) into
``${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/fixtures/families-v<VERSION>/<models folder>/``
under the names the example workflows use. Change ``VERSION`` whenever generated content changes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import comfy_env
from .fixture_models import _exclusive_lock, _save_atomically

logger = logging.getLogger(__name__)

VERSION = 1

# ComfyUI's models folders the files go to (folder_paths names).
DIFFUSION_MODELS, CHECKPOINTS, TEXT_ENCODERS, VAE = "diffusion_models", "checkpoints", "text_encoders", "vae"


@dataclass(frozen=True)
class Family:
    """One model family: the ComfyUI class that represents it and the tiny model's config."""

    name: str
    config_class: str  # comfy.supported_models class
    unet_config: dict[str, Any]  # what the tiny network is built from
    folder: str  # models folder of its files
    markers: tuple[str, ...] = ()  # marker keys of real checkpoints (SDXL v-prediction, zsnr)
    # Config entries that ComfyUI's detection hard-codes at full size, read from the weights
    # instead: {config key: function of the state dict}.
    widths: dict[str, Callable[[dict], Any]] = field(default_factory=dict)


_TINY_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 768 + 6 * 256, "in_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 768, "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
_TINY_SDXL_REFINER_UNET = {
    **_TINY_SDXL_UNET, "adm_in_channels": 768 + 5 * 256, "num_res_blocks": [1, 1, 1, 1],
    "channel_mult": [1, 2, 2, 2], "transformer_depth": [0, 1, 1, 0],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1, 0, 0],
}
_FLUX_HEAD_DIM = 128  # sum of the rope axes (16, 56, 56): fixed by Flux's position encoding


def _flux_config(guidance_embed: bool) -> dict[str, Any]:
    return {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16,
            "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": _FLUX_HEAD_DIM, "mlp_ratio": 4.0,
            "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
            "theta": 10000, "qkv_bias": True, "guidance_embed": guidance_embed}


_FLUX_WIDTHS: dict[str, Callable[[dict], Any]] = {
    "hidden_size": lambda sd: sd["img_in.weight"].shape[0],
    "num_heads": lambda sd: sd["img_in.weight"].shape[0] // _FLUX_HEAD_DIM,
    "context_in_dim": lambda sd: sd["txt_in.weight"].shape[1],
}

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("sdxl", "SDXL", _TINY_SDXL_UNET, CHECKPOINTS),
    Family("sdxl_vpred_zsnr", "SDXL", _TINY_SDXL_UNET, CHECKPOINTS, markers=("v_pred", "ztsnr")),
    Family("sdxl_refiner", "SDXLRefiner", _TINY_SDXL_REFINER_UNET, CHECKPOINTS),
    Family("sd3", "SD3", {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
        "adm_in_channels": 2048, "num_patches": 1024, "pos_embed_max_size": 32, "qk_norm": "rms",
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": 128}},
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
    }, DIFFUSION_MODELS),
    Family("flux_dev", "Flux", _flux_config(guidance_embed=True), DIFFUSION_MODELS, widths=_FLUX_WIDTHS),
    Family("flux_schnell", "FluxSchnell", _flux_config(guidance_embed=False), DIFFUSION_MODELS,
           widths=_FLUX_WIDTHS),
    Family("wan21", "WAN21_T2V", {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "out_dim": 16, "num_heads": 1,
        "ffn_dim": 256, "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 256,
        "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16,
    }, DIFFUSION_MODELS),
)}


@dataclass(frozen=True)
class TinyModel:
    file_name: str
    family: Family
    seed: int


# Models per family (a base and a fine-tune; Wan 2.2's two experts; the SDXL refiner), named as
# the example workflows name them.
MODELS: dict[str, TinyModel] = {model.file_name: model for model in (
    TinyModel("sd_xl_base_1.0.safetensors", FAMILIES["sdxl"], 3101),
    TinyModel("RealVisXL_V5.0_fp16.safetensors", FAMILIES["sdxl"], 3102),
    TinyModel("sdxl_vpred_zsnr_a.safetensors", FAMILIES["sdxl_vpred_zsnr"], 3111),
    TinyModel("sdxl_vpred_zsnr_b.safetensors", FAMILIES["sdxl_vpred_zsnr"], 3112),
    TinyModel("sd_xl_refiner_1.0.safetensors", FAMILIES["sdxl_refiner"], 3121),
    TinyModel("sd3.5_large.safetensors", FAMILIES["sd3"], 3201),
    TinyModel("sd3.5_large_turbo.safetensors", FAMILIES["sd3"], 3202),
    TinyModel("flux1-dev.safetensors", FAMILIES["flux_dev"], 3301),
    TinyModel("flux1-dev-finetune.safetensors", FAMILIES["flux_dev"], 3302),
    TinyModel("flux1-schnell.safetensors", FAMILIES["flux_schnell"], 3311),
    TinyModel("wan2.1_t2v_1.3B_fp16.safetensors", FAMILIES["wan21"], 3401),
    TinyModel("wan2.1_t2v_14B_fp8_e4m3fn.safetensors", FAMILIES["wan21"], 3402),
    TinyModel("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", FAMILIES["wan21"], 3403),
    TinyModel("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", FAMILIES["wan21"], 3404),
)}

CLIP_L_NAME = "clip_l.safetensors"
FLOW_VAE_NAMES = ("ae.safetensors", "sd3.5_vae.safetensors")  # Flux's and SD3's: one architecture
WAN_VAE_NAME = "wan_2.1_vae.safetensors"
CLIP_L_SEED, FLOW_VAE_SEED, WAN_VAE_SEED = 3501, 3502, 3503


def family_models(family: str) -> list[str]:
    """File names of a family's tiny models, in MODELS order."""
    return [name for name, model in MODELS.items() if model.family.name == family]


def fixtures_dir() -> Path:
    return comfy_env.cache_dir() / "fixtures" / f"families-v{VERSION}"


def file_paths() -> dict[str, dict[str, Path]]:
    """``{models folder: {file name: path}}`` of every file (whether generated yet or not).
    The two flow-VAE names are one file."""
    root = fixtures_dir()
    paths: dict[str, dict[str, Path]] = {DIFFUSION_MODELS: {}, CHECKPOINTS: {}, TEXT_ENCODERS: {}, VAE: {}}
    for name, model in MODELS.items():
        paths[model.family.folder][name] = root / model.family.folder / name
    paths[TEXT_ENCODERS][CLIP_L_NAME] = root / TEXT_ENCODERS / CLIP_L_NAME
    for name in FLOW_VAE_NAMES:
        paths[VAE][name] = root / VAE / FLOW_VAE_NAMES[0]
    paths[VAE][WAN_VAE_NAME] = root / VAE / WAN_VAE_NAME
    return paths


def ensure_family_models() -> dict[str, dict[str, Path]]:
    """Generate whatever files are missing; returns :func:`file_paths`."""
    paths = file_paths()
    builders: dict[Path, Callable[[], dict[str, torch.Tensor]]] = {
        path: _model_builder(MODELS[name])
        for folder in (DIFFUSION_MODELS, CHECKPOINTS) for name, path in paths[folder].items()
    }
    builders[paths[TEXT_ENCODERS][CLIP_L_NAME]] = _clip_l_state_dict
    builders[paths[VAE][FLOW_VAE_NAMES[0]]] = _flow_vae_state_dict
    builders[paths[VAE][WAN_VAE_NAME]] = _wan_vae_state_dict
    if all(path.is_file() for path in builders):
        return paths
    comfy_env.setup_comfy_in_process()
    fixtures_dir().mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(fixtures_dir() / ".lock"):
        for path, build in builders.items():
            if not path.is_file():
                started = time.perf_counter()
                _save_atomically(path, build())
                logger.info("generated %s in %.1fs", path, time.perf_counter() - started)
    return paths


def link_into(models_dir: Path, folders: tuple[str, ...] = (DIFFUSION_MODELS, TEXT_ENCODERS, VAE)) -> None:
    """Symlink the files of ``folders`` into ``models_dir/<folder>/``, where a ComfyUI server
    with that models directory (or the in-process folder_paths) finds them."""
    for folder, entries in ensure_family_models().items():
        if folder not in folders:
            continue
        target_dir = Path(models_dir) / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        for name, target in entries.items():
            link = target_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)


# ----------------------------------------------------------------------------- loading

# ComfyUI's loader node for each models folder of the tiny files, and its input naming the file.
STOCK_LOADER_NODES = {DIFFUSION_MODELS: ("UNETLoader", "unet_name"),
                      CHECKPOINTS: ("CheckpointLoaderSimple", "ckpt_name")}


def _stock_load(file_name: str) -> Any:
    """The tiny model loaded by the call of its folder's loader node (UNETLoader:
    ``comfy.sd.load_diffusion_model``; CheckpointLoaderSimple: ``load_checkpoint_guess_config``),
    or None where that loader refuses it or takes it for another family."""
    comfy_env.setup_comfy_in_process()
    import comfy.sd

    model = MODELS[file_name]
    path = str(ensure_family_models()[model.family.folder][file_name])
    try:
        if model.family.folder == CHECKPOINTS:
            patcher = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
        else:
            patcher = comfy.sd.load_diffusion_model(path)
    except RuntimeError as error:  # "Could not detect model type", or a full-size guess's shapes
        logger.debug("the stock loader refuses %s: %s", file_name, str(error).splitlines()[0])
        return None
    return patcher if type(patcher.model.model_config).__name__ == model.family.config_class else None


@functools.cache
def stock_loader_accepts(file_name: str) -> bool:
    """Whether this ComfyUI's own loader node for the file's models folder
    (:data:`STOCK_LOADER_NODES`) loads the tiny file as its family: found by loading it."""
    return _stock_load(file_name) is not None


def load_model(file_name: str) -> Any:
    """The tiny model as a ComfyUI ModelPatcher.

    Where the stock loader of its folder accepts the file (:func:`stock_loader_accepts`), through
    that loader's own call. Otherwise (SDXL; Flux on ComfyUI 0.3.64) through ComfyUI's detection
    with the width taken from the weights (see the module docstring), then the steps of
    ``load_diffusion_model_state_dict``.
    """
    comfy_env.setup_comfy_in_process()
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    model = MODELS[file_name]
    path = ensure_family_models()[model.family.folder][file_name]
    if stock_loader_accepts(file_name):
        return _stock_load(file_name)

    state_dict = comfy.utils.load_torch_file(str(path))
    prefix = comfy.model_detection.unet_prefix_from_state_dict(state_dict)
    # As load_diffusion_model_state_dict: checkpoint-style files carry a prefix, others none.
    unet = comfy.utils.state_dict_prefix_replace(state_dict, {prefix: ""}, filter_keys=True) or dict(state_dict)
    unet_config = comfy.model_detection.detect_unet_config(unet, "")
    unet_config.update({key: read(unet) for key, read in model.family.widths.items()})
    if model.family.widths:  # detection proper: the family follows from the layout
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config, unet)
    else:
        model_config = getattr(comfy.supported_models, model.family.config_class)(unet_config)
    if type(model_config).__name__ != model.family.config_class:
        raise RuntimeError(f"{file_name}: ComfyUI detected {type(model_config).__name__}, "
                           f"expected {model.family.config_class}")

    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    unet_dtype = comfy.model_management.unet_dtype(
        model_params=comfy.utils.calculate_parameters(unet),
        supported_dtypes=list(model_config.supported_inference_dtypes),
        weight_dtype=comfy.utils.weight_dtype(unet))
    model_config.set_inference_dtype(unet_dtype, comfy.model_management.unet_manual_cast(
        unet_dtype, load_device, model_config.supported_inference_dtypes))
    # The whole file: SDXL's model_type() reads the checkpoint's v_pred / ztsnr markers.
    base_model = model_config.get_model(state_dict, prefix).to(offload_device)
    base_model.load_model_weights(unet, "")
    return comfy.model_patcher.ModelPatcher(base_model, load_device=load_device, offload_device=offload_device)


# ----------------------------------------------------------------------------- random weights

def _meta_module(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    comfy_env.setup_comfy_in_process()
    with torch.device("meta"):
        return build()


def _random_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """fp32 values for every parameter of ``module``, drawn in a fixed order from ``seed``.

    Matrices, convolutions, embeddings and modulation tables ~ N(0, 1/fan_in) (variance
    preserving); vectors named like biases 0; norm scales (1-D weights, ``scale``, ``gamma``) 1.
    """
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "scale") or (leaf == "weight" and parameter.dim() == 1):
            value = torch.ones(parameter.shape)
        elif parameter.dim() <= 1:
            value = torch.zeros(parameter.shape)
        else:
            fan_in = math.prod(parameter.shape[1:])
            value = torch.randn(parameter.shape, generator=generator).mul_(1.0 / math.sqrt(fan_in))
        weights[name] = value
    return weights


def _family_network(family: Family) -> torch.nn.Module:
    """The diffusion network of a family at the tiny config, built by ComfyUI's own classes."""
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, family.config_class)(_unet_config(family))
    model_config.set_inference_dtype(torch.float32, None)
    return _meta_module(lambda: model_config.get_model({}).diffusion_model)


def _unet_config(family: Family) -> dict[str, Any]:
    """The family's tiny config, plus the entries this ComfyUI's model class requires beyond
    it: later releases' FluxParams has a required ``txt_ids_dims`` (none for Flux 1, as their
    detection sets it). No weights depend on it."""
    config = dict(family.unet_config)
    if config.get("image_model") == "flux":
        import comfy.ldm.flux.model

        if "txt_ids_dims" in {entry.name for entry in fields(comfy.ldm.flux.model.FluxParams)}:
            config.setdefault("txt_ids_dims", [])
    return config


def _model_builder(model: TinyModel) -> Callable[[], dict[str, torch.Tensor]]:
    def build() -> dict[str, torch.Tensor]:
        weights = _random_state_dict(_family_network(model.family), model.seed)
        if model.family.folder == CHECKPOINTS:  # laid out as a single-file checkpoint
            weights = {f"model.diffusion_model.{k}": v for k, v in weights.items()}
        weights.update({marker: torch.tensor([]) for marker in model.family.markers})
        return weights

    return build


def _fp16(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float16) for k, v in state_dict.items()}


def _clip_l_state_dict() -> dict[str, torch.Tensor]:
    import comfy.sd1_clip

    return _fp16(_random_state_dict(_meta_module(lambda: comfy.sd1_clip.SDClipModel(device="meta").transformer),
                                    CLIP_L_SEED))


def _flow_vae_state_dict() -> dict[str, torch.Tensor]:
    """The 16-channel autoencoder of SD3 and Flux, as ComfyUI's VAE builds it from such a file
    (no quant convolutions)."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0}
    vae = _meta_module(lambda: AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig}))
    return _fp16(_random_state_dict(vae, FLOW_VAE_SEED))


def _wan_vae_state_dict() -> dict[str, torch.Tensor]:
    import comfy.ldm.wan.vae

    vae = _meta_module(lambda: comfy.ldm.wan.vae.WanVAE(
        dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0))
    return _fp16(_random_state_dict(vae, WAN_VAE_SEED))
