"""ComfyUI-GGUF (city96's GGUF loader node pack) and a tiny SD1.5 UNet quantised to Q8_0 for it.

The node pack is not part of this repository: the tests install it into their server's
``custom_nodes`` from, in order, ``$COMFYUI_GGUF_PATH``, ``$COMFYUI_AMDM_CACHE/ComfyUI-GGUF``
and ``~/.cache/comfyui-amdm/ComfyUI-GGUF`` (where ``scripts/fetch_comfyui_gguf.sh`` puts it),
at the commit ``COMFYUI_GGUF_COMMIT``.

The GGUF file is the UNet of the first SD1.5 fixture checkpoint
(``fixture_models.CHECKPOINT_NAMES[0]``) written as ComfyUI-GGUF's own tools make an SD1.5
Q8_0 file: ``tools/convert.py`` (architecture ``sd1``; every tensor of 512 or more elements
whose last dimension is not a multiple of 256 is stored as rows of 256 with its shape in a
``comfy.gguf.orig_shape.<name>`` field; fp16 stays F16), then llama-quantize with
``tools/lcpp.patch`` (Q8_0 for the 2-D weights, except the time embedding and the first and
last convolutions). It is generated on first use, next to the fixture it comes from
(``fixtures/v<FIXTURE_VERSION>/gguf-v<GGUF_FIXTURE_VERSION>/``), written to a temporary name
and renamed into place.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import comfy_env, fixture_models

logger = logging.getLogger(__name__)

COMFYUI_GGUF_REPO = "https://github.com/city96/ComfyUI-GGUF"
COMFYUI_GGUF_COMMIT = "795e45156ece99afbc3efef911e63fcb46e6a20d"
COMFYUI_GGUF_DIR_NAME = "ComfyUI-GGUF"

GGUF_FIXTURE_VERSION = 1
SOURCE_CHECKPOINT = fixture_models.CHECKPOINT_NAMES[0]
GGUF_UNET_NAME = "v1-5-pruned-emaonly-Q8_0.gguf"
# UnetLoaderGGUF lists the .gguf files of ComfyUI's diffusion_models folders.
GGUF_MODELS_FOLDER = "diffusion_models"

_ARCHITECTURE = "sd1"
_UNET_PREFIX = "model.diffusion_model."
# tools/convert.py: tensors reshaped into rows of 256 (ModelSD1.shape_fix).
_REARRANGE_THRESHOLD = 512
_ROW = 256
# tools/lcpp.patch: SD1 tensors that llama-quantize leaves unquantised.
_KEPT_NAME_PARTS = ("class_embedding.", "time_embedding.", "add_embedding.", "time_embed.",
                    "label_emb.", "conv_in.", "conv_out.")
_KEPT_NAMES = ("input_blocks.0.0.weight", "out.2.weight")


def find_comfyui_gguf() -> Path:
    """The ComfyUI-GGUF directory at the pinned commit, or RuntimeError saying how to provide it."""
    configured = os.environ.get("COMFYUI_GGUF_PATH")
    if configured:
        candidates = [Path(configured).expanduser()]
    else:
        candidates = list(dict.fromkeys([comfy_env.cache_dir() / COMFYUI_GGUF_DIR_NAME,
                                         Path.home() / ".cache" / "comfyui-amdm" / COMFYUI_GGUF_DIR_NAME]))
    how = (f"Provide {COMFYUI_GGUF_REPO} at commit {COMFYUI_GGUF_COMMIT}:\n"
           "  - run `bash scripts/fetch_comfyui_gguf.sh` (clones it into "
           f"{comfy_env.cache_dir() / COMFYUI_GGUF_DIR_NAME}), or\n"
           "  - set COMFYUI_GGUF_PATH to a checkout of that commit;\n"
           "and install its requirement: pip install 'gguf>=0.13.0'.")
    for path in candidates:
        if (path / "nodes.py").is_file() and (path / "loader.py").is_file():
            commit = _commit_of(path)
            if commit != COMFYUI_GGUF_COMMIT:
                raise RuntimeError(f"{path} holds ComfyUI-GGUF at commit {commit or 'unknown'}, "
                                   f"not the tested {COMFYUI_GGUF_COMMIT}. {how}")
            return path.resolve()
    raise RuntimeError(f"ComfyUI-GGUF was not found at {', '.join(map(str, candidates))}. {how}")


def _commit_of(path: Path) -> str | None:
    """The commit of a git checkout, or of a snapshot written out with its commit recorded
    in ``.snapshot-commit``."""
    if (path / ".git").exists():
        result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=False)
        return result.stdout.strip() or None
    recorded = path / ".snapshot-commit"
    return recorded.read_text().strip() if recorded.is_file() else None


def gguf_unet_path() -> Path:
    return fixture_models.fixtures_dir() / f"gguf-v{GGUF_FIXTURE_VERSION}" / GGUF_MODELS_FOLDER / GGUF_UNET_NAME


def ensure_gguf_unet() -> Path:
    """The Q8_0 GGUF file, generated from its fixture checkpoint when missing."""
    path = gguf_unet_path()
    if path.is_file():
        return path
    source = fixture_models.ensure_fixture_models().checkpoints[SOURCE_CHECKPOINT]
    path.parent.mkdir(parents=True, exist_ok=True)
    with fixture_models._exclusive_lock(path.parent / ".lock"):
        if not path.is_file():
            started = time.perf_counter()
            _write_q8_0_unet(source, path)
            logger.info("generated %s in %.1fs", path, time.perf_counter() - started)
    return path


def link_into(models_dir: Path) -> Path:
    """Symlink the GGUF file into ``models_dir/diffusion_models/``; returns the link."""
    folder = Path(models_dir) / GGUF_MODELS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / GGUF_UNET_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ensure_gguf_unet())
    return link


def is_quantised(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama-quantize (with ComfyUI-GGUF's patch) makes tensor ``name`` of the
    stored ``shape`` (rows last, as written) Q8_0 for an SD1 model."""
    return (name.endswith(".weight") and len(shape) == 2 and shape[-1] % 32 == 0
            and not any(part in name for part in _KEPT_NAME_PARTS) and name not in _KEPT_NAMES)


def _write_q8_0_unet(source: Path, path: Path) -> None:
    import safetensors.torch

    try:
        import gguf
    except ImportError:
        raise RuntimeError("the GGUF fixture is written with the `gguf` package, ComfyUI-GGUF's "
                           "requirement: pip install 'gguf>=0.13.0' "
                           "(or run `bash scripts/fetch_comfyui_gguf.sh`)") from None

    unet = {key[len(_UNET_PREFIX):]: value for key, value in safetensors.torch.load_file(str(source)).items()
            if key.startswith(_UNET_PREFIX)}
    writer = gguf.GGUFWriter(path=None, arch=_ARCHITECTURE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, tensor in unet.items():
        data = tensor.to(torch.float16).numpy()
        if (data.ndim > 1 and data.size >= _REARRANGE_THRESHOLD and data.size % _ROW == 0
                and data.shape[-1] % _ROW != 0):
            writer.add_array(f"comfy.gguf.orig_shape.{name}", [int(d) for d in data.shape])
            data = data.reshape(data.size // _ROW, _ROW)
        if is_quantised(name, data.shape):
            qtype = gguf.GGMLQuantizationType.Q8_0
            data = gguf.quants.quantize(data.astype(np.float32), qtype)
        else:
            qtype = gguf.GGMLQuantizationType.F16
        writer.add_tensor(name, data, raw_dtype=qtype)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
