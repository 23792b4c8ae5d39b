"""Small, deterministic, randomly initialised model files that ComfyUI's own loaders accept.

Real SD1.5 weights cannot be fetched here, so the tests run on stand-ins with the same file
formats and key layouts:

* three SD1.5 single-file checkpoints: a one-level UNet (model_channels 320, context_dim 768,
  channel_mult (1,), one res block and one transformer per level; ~26M parameters) that
  ComfyUI detects as ``supported_models.SD15``, plus a CLIP-L text encoder and the SD VAE at
  their real shapes. Weights are stored in fp16.
* a kohya-format LoRA for that UNet and for CLIP-L,
* a ControlNet (``control_model.*`` layout) for that UNet configuration,
* a GLIGEN text-box file whose fusers sit in the UNet's four transformer blocks.

The UNet is random but shaped to behave like a denoiser, so that sampling yields latents of
ordinary size (not noise blown up by CFG): an exact channel path carries the input latent from
``conv_in`` through the last output block's skip connection to ``out``, giving
``eps ~= a * c_in * x`` with ``a = ln(sigma_max) / asinh(sigma_max)`` (so a sampling run ends
at unit scale, about 5.5 in unscaled SD1.5 latent units), and the random rest of the network,
which depends on the timestep, the conditioning and the checkpoint's seed, adds a term about
5% of that size. LoRA, ControlNet and GLIGEN act on that random part and leave the latent
path alone.

Files are generated once and cached under ``${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/
fixtures/v<FIXTURE_VERSION>/``; each is written to a temporary name and renamed into place, so
an interrupted run never leaves a partial file. Change ``FIXTURE_VERSION`` whenever the
generated content changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import comfy_env

logger = logging.getLogger(__name__)

FIXTURE_VERSION = 2

CHECKPOINT_SEEDS: dict[str, int] = {
    "v1-5-pruned-emaonly-fp16.safetensors": 1501,
    "dreamshaper_8.safetensors": 1508,
    "realisticVisionV60B1_v51VAE.safetensors": 1560,
}
CHECKPOINT_NAMES: tuple[str, ...] = tuple(CHECKPOINT_SEEDS)
LORA_NAME = "sd15_detail_lora.safetensors"
CONTROLNET_NAME = "control_v11p_sd15_scribble_fp16.safetensors"
GLIGEN_NAME = "gligen_sd14_textbox_pruned.safetensors"

VAE_SEED = 1700
LORA_SEED = 1800
CONTROLNET_SEED = 1900
GLIGEN_SEED = 2000

# What ComfyUI's detection (model_detection.detect_unet_config + SD15.unet_extra_config)
# produces for the tiny UNet; UNetModel is built from exactly this.
TINY_SD15_UNET_CONFIG: dict = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "channel_mult": [1], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
SD_VAE_DDCONFIG: dict = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}

# Denoiser shaping of the UNet (see module docstring). With eps = a * c_in * x, the
# probability-flow ODE dx/dsigma = a * x / sqrt(sigma^2 + 1) shrinks x by exp(-a * asinh(sigma))
# between sigma and 0: a = ln(sigma_max) / asinh(sigma_max) takes SD1.5's initial noise
# (scale sigma_max = 14.6146) to unit scale.
_SD15_SIGMA_MAX = 14.6146
_EPS_INPUT_GAIN = math.log(_SD15_SIGMA_MAX) / math.asinh(_SD15_SIGMA_MAX)
# +/- constant in out's first GroupNorm group: keeps that group's normalisation near a fixed
# scale, so the latent path stays linear.
_GROUP_ANCHOR = 8.0
# Scale of the random (checkpoint-, prompt- and timestep-dependent) part of ``out``: eps gets
# a term about 5% the size of the latent path.
_UNET_RANDOM_OUT_SCALE = 0.12
_LORA_RANK = 4
_LORA_UP_STD = {"lora_unet": 0.05, "lora_te": 0.01}
_CONTROLNET_ZERO_CONV_SCALE = 0.35
_CONTROLNET_HINT_GAIN = 2.0
# Channels of the latent path (+x, -x) and of out's first GroupNorm group (see _shape_as_denoiser).
_CARRIED_CHANNELS = 8
_FIRST_GROUP_CHANNELS = 10
_GLIGEN_GATE = 0.6


@dataclass(frozen=True)
class FixtureFiles:
    """Paths of the cached fixture files, keyed the way a ComfyUI models dir is laid out."""

    checkpoints: dict[str, Path]
    lora: Path
    controlnet: Path
    gligen: Path

    def by_category(self) -> dict[str, dict[str, Path]]:
        return {
            "checkpoints": dict(self.checkpoints),
            "loras": {LORA_NAME: self.lora},
            "controlnet": {CONTROLNET_NAME: self.controlnet},
            "gligen": {GLIGEN_NAME: self.gligen},
        }


def fixtures_dir() -> Path:
    return comfy_env.cache_dir() / "fixtures" / f"v{FIXTURE_VERSION}"


def fixture_paths() -> FixtureFiles:
    """Where the fixture files live (whether or not they exist yet)."""
    root = fixtures_dir()
    return FixtureFiles(
        checkpoints={name: root / "checkpoints" / name for name in CHECKPOINT_NAMES},
        lora=root / "loras" / LORA_NAME,
        controlnet=root / "controlnet" / CONTROLNET_NAME,
        gligen=root / "gligen" / GLIGEN_NAME,
    )


def ensure_fixture_models() -> FixtureFiles:
    """Generate whatever fixture files are missing and return their paths."""
    files = fixture_paths()
    wanted: list[tuple[Path, Callable[[], dict[str, torch.Tensor]]]] = [
        *((path, _checkpoint_builder(CHECKPOINT_SEEDS[name])) for name, path in files.checkpoints.items()),
        (files.lora, _lora_state_dict),
        (files.controlnet, _controlnet_state_dict),
        (files.gligen, _gligen_state_dict),
    ]
    if all(path.is_file() for path, _ in wanted):
        return files
    comfy_env.setup_comfy_in_process()
    fixtures_dir().mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(fixtures_dir() / ".lock"):
        for path, build in wanted:
            if not path.is_file():
                started = time.perf_counter()
                _save_atomically(path, build())
                logger.info("generated %s in %.1fs", path, time.perf_counter() - started)
        _shared_vae_weights.clear()
    return files


def populate_models_dir(models_dir: Path) -> dict[str, dict[str, Path]]:
    """Symlink the fixtures into ``models_dir/{checkpoints,loras,controlnet,gligen}/``.

    Returns ``{category: {file name: link path}}``.
    """
    links: dict[str, dict[str, Path]] = {}
    for category, entries in ensure_fixture_models().by_category().items():
        folder = Path(models_dir) / category
        folder.mkdir(parents=True, exist_ok=True)
        links[category] = {}
        for name, target in entries.items():
            link = folder / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
            links[category][name] = link
    return links


# ----------------------------------------------------------------------------- file handling

@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save_atomically(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in state_dict.items()}, str(tmp),
            metadata={"format": "pt", "comfyui_amdm_fixture_version": str(FIXTURE_VERSION)},
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- random weights

def _meta_module(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Instantiate a ComfyUI module without allocating memory: only names and shapes are needed."""
    comfy_env.setup_comfy_in_process()
    with torch.device("meta"):
        return build()


def _random_weights(module: torch.nn.Module, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """fp32 weights for every parameter of ``module``, drawn in a fixed order from ``seed``.

    Linear/conv weights ~ N(0, 1/fan_in) (variance preserving), biases 0, norms identity,
    embeddings N(0, 0.02^2) as in CLIP.
    """
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for module_name, submodule in module.named_modules():
        for param_name, param in submodule.named_parameters(recurse=False):
            key = f"{prefix}{module_name}.{param_name}" if module_name else f"{prefix}{param_name}"
            if isinstance(submodule, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                value = torch.ones(param.shape) if param_name == "weight" else torch.zeros(param.shape)
            elif isinstance(submodule, torch.nn.Embedding):
                value = torch.randn(param.shape, generator=generator).mul_(0.02)
            elif isinstance(submodule, (torch.nn.Linear, torch.nn.Conv2d)):
                if param_name == "bias":
                    value = torch.zeros(param.shape)
                else:
                    fan_in = math.prod(param.shape[1:])
                    value = torch.randn(param.shape, generator=generator).mul_(1.0 / math.sqrt(fan_in))
            else:
                continue  # e.g. CLIP's logit_scale: real SD1.5 checkpoints do not carry it either
            weights[key] = value
    return weights


def _fp16(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float16) for k, v in state_dict.items()}


def _tiny_unet_meta() -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return _meta_module(lambda: UNetModel(**TINY_SD15_UNET_CONFIG, operations=comfy.ops.disable_weight_init))


def _unet_weights(seed: int) -> dict[str, torch.Tensor]:
    weights = _random_weights(_tiny_unet_meta(), seed)
    _shape_as_denoiser(weights)
    return weights


def _shape_as_denoiser(unet: dict[str, torch.Tensor]) -> None:
    """Add the exact linear input path described in the module docstring (in place).

    Channels 0..3 of conv_in carry +x and channels 4..7 carry -x. In the last output block the
    skip connection copies them from the first skip tensor (concatenated after the 320 current
    channels), its bias puts the constants +C / -C into channels 8 / 9, and nothing else writes
    to channels 0..9. ``out``'s first GroupNorm group (channels 0..9) thus holds
    [+x, -x, +C, -C]: zero mean and a spread dominated by C, so the normalisation is nearly a
    fixed scale and the path stays linear in x. ``out`` reads silu(z) - silu(-z) = z, which
    undoes the SiLU.
    """
    latent_channels = 4
    carried = _CARRIED_CHANNELS
    model_channels = TINY_SD15_UNET_CONFIG["model_channels"]
    first_group = _FIRST_GROUP_CHANNELS  # GroupNorm(32, 320) in ``out``

    conv_in = unet["input_blocks.0.0.weight"]
    conv_in[:carried].zero_()
    unet["input_blocks.0.0.bias"][:carried].zero_()
    for c in range(latent_channels):
        conv_in[c, c, 1, 1] = 1.0
        conv_in[latent_channels + c, c, 1, 1] = -1.0

    for writer in ("output_blocks.1.0.skip_connection", "output_blocks.1.0.out_layers.3",
                   "output_blocks.1.1.proj_out"):
        unet[f"{writer}.weight"][:first_group].zero_()
        unet[f"{writer}.bias"][:first_group].zero_()
    skip = unet["output_blocks.1.0.skip_connection.weight"]
    for c in range(carried):
        skip[c, model_channels + c, 0, 0] = 1.0
    skip_bias = unet["output_blocks.1.0.skip_connection.bias"]
    skip_bias[carried] = _GROUP_ANCHOR
    skip_bias[carried + 1] = -_GROUP_ANCHOR

    # For unit-scale x the group's standard deviation is sqrt((8 + 2 C^2) / 10).
    group_std = math.sqrt((carried + 2 * _GROUP_ANCHOR**2) / first_group)
    out = unet["out.2.weight"]
    out.mul_(_UNET_RANDOM_OUT_SCALE)
    out[:, :first_group].zero_()
    for c in range(latent_channels):
        out[c, c, 1, 1] = _EPS_INPUT_GAIN * group_std
        out[c, latent_channels + c, 1, 1] = -_EPS_INPUT_GAIN * group_std


def _clip_l_meta() -> torch.nn.Module:
    import comfy.sd1_clip

    return _meta_module(lambda: comfy.sd1_clip.SDClipModel(device="meta").transformer)


def _vae_meta() -> torch.nn.Module:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return _meta_module(lambda: AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4))


# Fine-tunes usually ship the base VAE unchanged: all checkpoints share one, drawn once per run.
_shared_vae_weights: dict[str, torch.Tensor] = {}


def _checkpoint_builder(seed: int) -> Callable[[], dict[str, torch.Tensor]]:
    def build() -> dict[str, torch.Tensor]:
        if not _shared_vae_weights:
            _shared_vae_weights.update(_fp16(_random_weights(_vae_meta(), VAE_SEED, "first_stage_model.")))
        state_dict = {f"model.diffusion_model.{k}": v for k, v in _fp16(_unet_weights(seed)).items()}
        state_dict.update(_fp16(_random_weights(_clip_l_meta(), seed + 1, "cond_stage_model.transformer.")))
        state_dict.update(_shared_vae_weights)
        return state_dict

    return build


def _lora_state_dict() -> dict[str, torch.Tensor]:
    """Kohya-style LoRA (rank 4, alpha = rank) over every transformer linear of the UNet and
    the q/k/v/out projections of CLIP-L, using ComfyUI's own diffusers key map."""
    import comfy.utils

    generator = torch.Generator().manual_seed(LORA_SEED)
    unet_shapes = {k: v.shape for k, v in _tiny_unet_meta().state_dict().items()}
    targets: list[tuple[str, torch.Size]] = []
    diffusers_to_ldm = comfy.utils.unet_to_diffusers(TINY_SD15_UNET_CONFIG)
    linear_suffixes = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight",
                       "ff.net.0.proj.weight", "ff.net.2.weight", "proj_in.weight", "proj_out.weight")
    for diffusers_key, ldm_key in sorted(diffusers_to_ldm.items()):
        if ldm_key in unet_shapes and diffusers_key.endswith(linear_suffixes):
            lora_name = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
            targets.append((lora_name, unet_shapes[ldm_key]))
    clip_shapes = {k: v.shape for k, v in _clip_l_meta().state_dict().items()}
    for layer in range(12):
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shape = clip_shapes[f"text_model.encoder.layers.{layer}.self_attn.{projection}.weight"]
            targets.append((f"lora_te_text_model_encoder_layers_{layer}_self_attn_{projection}", shape))

    # The last transformer's proj_out writes into out's first GroupNorm group: the LoRA leaves
    # those rows alone so that the latent path of the denoiser stays exact.
    last_proj_out = "lora_unet_" + next(
        d for d, ldm in diffusers_to_ldm.items() if ldm == "output_blocks.1.1.proj_out.weight"
    )[: -len(".weight")].replace(".", "_")
    state_dict: dict[str, torch.Tensor] = {}
    for name, shape in targets:
        out_features, in_features = shape[0], math.prod(shape[1:])
        down = torch.randn((_LORA_RANK, in_features), generator=generator) / math.sqrt(in_features)
        up_std = _LORA_UP_STD["lora_te" if name.startswith("lora_te_") else "lora_unet"]
        up = torch.randn((out_features, _LORA_RANK), generator=generator) * up_std
        if name == last_proj_out:
            up[:_FIRST_GROUP_CHANNELS] = 0.0
        if len(shape) == 4:  # 1x1 conv proj_in/proj_out
            down = down.reshape(_LORA_RANK, in_features, 1, 1)
            up = up.reshape(out_features, _LORA_RANK, 1, 1)
        state_dict[f"{name}.lora_down.weight"] = down
        state_dict[f"{name}.lora_up.weight"] = up
        state_dict[f"{name}.alpha"] = torch.tensor(float(_LORA_RANK))
    return _fp16(state_dict)


def _controlnet_state_dict() -> dict[str, torch.Tensor]:
    """ControlNet for the tiny UNet, in the original ``control_model.*`` layout.

    The zero convolutions are not zero (a trained ControlNet's are not either), so applying
    it changes the UNet's output.
    """
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in TINY_SD15_UNET_CONFIG.items() if k != "out_channels"}
    control = _meta_module(lambda: comfy.cldm.cldm.ControlNet(
        hint_channels=3, operations=comfy.ops.disable_weight_init, **config))
    weights = _random_weights(control, CONTROLNET_SEED)
    for key, value in weights.items():
        if key.startswith(("zero_convs.", "middle_block_out.")) and key.endswith(".weight"):
            value.mul_(_CONTROLNET_ZERO_CONV_SCALE)
    # Each SiLU of the 8-conv hint encoder drops much of the signal; without a gain a
    # variance-preserving init leaves the hint's contribution at ~1e-3 and the hint is ignored.
    hint_convs = sorted((k for k in weights if k.startswith("input_hint_block.") and k.endswith(".weight")),
                        key=lambda k: int(k.split(".")[1]))
    for key in hint_convs[:-1]:
        weights[key].mul_(_CONTROLNET_HINT_GAIN)
    # zero_convs.0 feeds the skip tensor that carries the latent path into the last output
    # block; those channels stay untouched so that the denoiser's latent path stays exact.
    weights["zero_convs.0.0.weight"][:_CARRIED_CHANNELS].zero_()
    return _fp16({f"control_model.{k}": v for k, v in weights.items()})


# GLIGEN fusers go into the UNet's transformer blocks, in ComfyUI's transformer_index order.
_GLIGEN_FUSER_BLOCKS = ("input_blocks.1.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1")


def _gligen_state_dict() -> dict[str, torch.Tensor]:
    """GLIGEN text-box model for the tiny UNet: one gated self-attention fuser per transformer
    block (query_dim 320, CLIP-L key_dim 768) plus the box PositionNet.

    The gates (alpha_attn, alpha_dense) are non-zero: at zero, tanh(0) would switch GLIGEN off.
    """
    import comfy.gligen

    model_channels = TINY_SD15_UNET_CONFIG["model_channels"]
    context_dim = TINY_SD15_UNET_CONFIG["context_dim"]
    heads = TINY_SD15_UNET_CONFIG["num_heads"]
    state_dict: dict[str, torch.Tensor] = {}
    for index, block in enumerate(_GLIGEN_FUSER_BLOCKS):
        fuser = _meta_module(lambda: comfy.gligen.GatedSelfAttentionDense(
            model_channels, context_dim, heads, model_channels // heads))
        weights = _random_weights(fuser, GLIGEN_SEED + index)
        weights["alpha_attn"] = torch.tensor(_GLIGEN_GATE)
        weights["alpha_dense"] = torch.tensor(_GLIGEN_GATE)
        state_dict.update({f"{block}.transformer_blocks.0.fuser.{k}": v for k, v in weights.items()})
    position_net = _meta_module(lambda: comfy.gligen.PositionNet(context_dim, context_dim))
    weights = _random_weights(position_net, GLIGEN_SEED + len(_GLIGEN_FUSER_BLOCKS))
    generator = torch.Generator().manual_seed(GLIGEN_SEED - 1)
    weights["null_positive_feature"] = torch.randn(position_net.null_positive_feature.shape, generator=generator) * 0.02
    weights["null_position_feature"] = torch.randn(position_net.null_position_feature.shape, generator=generator) * 0.02
    state_dict.update({f"position_net.{k}": v for k, v in weights.items()})
    return _fp16(state_dict)
