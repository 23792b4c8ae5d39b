"""Locate ComfyUI and make it (and this pack) importable in-process, the way ComfyUI does.

ComfyUI is found, in order, at:
1. ``$COMFYUI_PATH``;
2. the ComfyUI that contains this checkout (``<ComfyUI>/custom_nodes/<this repo>``);
3. ``$COMFYUI_AMDM_CACHE/ComfyUI``, then ``~/.cache/comfyui-amdm/ComfyUI`` (where
   ``scripts/setup.sh`` puts it).

ComfyUI owns the top-level module names ``nodes``, ``utils``, ``server``, ``execution`` and
others; this repository has a ``nodes/`` package of its own, so ComfyUI's directory always goes
first on ``sys.path`` and a wrongly resolved ``nodes`` module is evicted before ComfyUI is used.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_MODULE_NAME = "comfyui_amdm"
PACK_DIR_NAME = "comfyui-amdm"

# ComfyUI options used both in-process and by the test server. On the CPU ComfyUI keeps the
# text encoder in fp16, whose matmuls run ~2.5x slower there than fp32 ones.
COMFY_TEST_FLAGS = ("--cpu", "--fp32-text-enc")

# Top-level modules that ComfyUI provides and that other directories on sys.path could shadow.
_COMFY_TOP_LEVEL_MODULES = ("nodes", "utils", "server", "execution", "folder_paths", "node_helpers",
                            "latent_preview", "protocol", "comfyui_version")


def cache_dir() -> Path:
    """Directory for generated files that must live outside the repository."""
    return Path(os.environ.get("COMFYUI_AMDM_CACHE", Path.home() / ".cache" / "comfyui-amdm")).expanduser()


def default_comfyui_dirs() -> list[Path]:
    """Fallback locations, in order: under the configured cache, then under the default cache."""
    candidates = [cache_dir() / "ComfyUI", Path.home() / ".cache" / "comfyui-amdm" / "ComfyUI"]
    return list(dict.fromkeys(candidates))


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def find_comfyui() -> Path:
    """Return the ComfyUI directory to use, or raise RuntimeError explaining how to provide one."""
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        path = Path(configured).expanduser().resolve()
        if _is_comfyui(path):
            return path
        raise RuntimeError(
            f"COMFYUI_PATH={configured!r} is not a ComfyUI checkout (no main.py and comfy/ there). "
            "Point it at a ComfyUI directory, or unset it to use the default location."
        )
    if REPO_ROOT.parent.name == "custom_nodes" and _is_comfyui(REPO_ROOT.parent.parent):
        return REPO_ROOT.parent.parent
    fallbacks = default_comfyui_dirs()
    for fallback in fallbacks:
        if _is_comfyui(fallback):
            return fallback.resolve()
    raise RuntimeError(
        "ComfyUI was not found. Provide it in one of these ways:\n"
        "  - run `bash scripts/setup.sh` (clones ComfyUI v0.3.64 into "
        f"{fallbacks[0]});\n"
        "  - set COMFYUI_PATH to an existing ComfyUI directory;\n"
        "  - place this repository at <ComfyUI>/custom_nodes/<dir>."
    )


def _evict_shadowing_modules(comfy_dir: Path) -> None:
    """Drop already-imported top-level modules that resolved somewhere other than ComfyUI."""
    for name in _COMFY_TOP_LEVEL_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        origin = getattr(module, "__file__", None) or ""
        if not Path(origin).resolve().is_relative_to(comfy_dir):
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]


_comfy_dir: Path | None = None


def setup_comfy_in_process(device: str = "cpu") -> Path:
    """Make ComfyUI importable in this process, forced onto the CPU (``device`` "cpu", as the
    tests run) or on the GPU ComfyUI chooses ("gpu", for benchmarks). Idempotent: the first
    call chooses.

    Must run before anything imports ``comfy.model_management``: that module fixes the device
    when it is first imported.
    """
    global _comfy_dir
    if _comfy_dir is not None:
        return _comfy_dir
    comfy_dir = find_comfyui()
    comfy_str = str(comfy_dir)
    sys.path[:] = [p for p in sys.path if p != comfy_str]
    sys.path.insert(0, comfy_str)
    # The repository root too (after ComfyUI, whose `nodes` must win over the pack's `nodes/`),
    # so that the torch-only `amdm_core` is importable as a top-level package.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(1, str(REPO_ROOT))
    _evict_shadowing_modules(comfy_dir)
    install_pack_finder()

    if "comfy.model_management" in sys.modules:
        import comfy.model_management

        if device == "cpu" and comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
            raise RuntimeError("comfy.model_management was imported before the CPU was selected; "
                               "call setup_comfy_in_process() first")
    else:
        import comfy.options  # noqa: F401  (argument parsing stays disabled: pytest owns argv)
        from comfy.cli_args import args

        for flag in COMFY_TEST_FLAGS if device == "cpu" else ():
            setattr(args, flag.lstrip("-").replace("-", "_"), True)
        # The default database lives inside the ComfyUI tree; nothing in-process needs it.
        args.database_url = "sqlite:///:memory:"

    import nodes

    if Path(nodes.__file__).resolve() != comfy_dir / "nodes.py":
        raise RuntimeError(f"`nodes` resolved to {nodes.__file__}, expected ComfyUI's {comfy_dir / 'nodes.py'}")
    _comfy_dir = comfy_dir
    return comfy_dir


_extra_nodes_loaded = False


def load_comfy_extra_nodes() -> None:
    """Register ComfyUI's built-in extra nodes (comfy_extras: SamplerCustomAdvanced, ...). Idempotent.

    Custom nodes and API nodes are not loaded; extras whose optional dependencies are missing
    are logged by ComfyUI and skipped, as in the server.
    """
    global _extra_nodes_loaded
    if _extra_nodes_loaded:
        return
    setup_comfy_in_process()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _extra_nodes_loaded = True


def node_class(class_type: str) -> type:
    """The node class ComfyUI registers under ``class_type`` (core, comfy_extras or the pack's)."""
    setup_comfy_in_process()
    import nodes

    if class_type not in nodes.NODE_CLASS_MAPPINGS:
        load_comfy_extra_nodes()
    if class_type not in nodes.NODE_CLASS_MAPPINGS and class_type not in _pack_mappings():
        raise KeyError(f"no ComfyUI node named {class_type!r}")
    return nodes.NODE_CLASS_MAPPINGS.get(class_type) or _pack_mappings()[class_type]


def _pack_mappings() -> dict[str, type]:
    """The pack's nodes by id, as ComfyUI registers a V3 extension's."""
    pack = sys.modules.get(PACK_MODULE_NAME)
    entrypoint = getattr(pack, "comfy_entrypoint", None)
    if entrypoint is None:
        return {}
    nodes = asyncio.run(asyncio.run(entrypoint()).get_node_list())
    return {node.GET_SCHEMA().node_id: node for node in nodes}


def run_node(class_type: str, **inputs: Any) -> tuple:
    """Call a node's FUNCTION with keyword inputs (no hidden inputs, no list expansion) and
    return its output tuple."""
    cls = node_class(class_type)
    result = getattr(cls(), cls.FUNCTION)(**inputs)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    if isinstance(result, dict):  # V1 output node: {"ui": ..., "result": (...)}
        result = result.get("result", ())
    elif not isinstance(result, tuple) and hasattr(result, "result"):  # V3 io.NodeOutput
        result = result.result
    return tuple(result)


class _PackFinder(importlib.abc.MetaPathFinder):
    """Resolves ``import comfyui_amdm`` to the repository root, with the spec ComfyUI builds for
    a custom-node directory (``spec_from_file_location`` on its ``__init__.py``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACK_MODULE_NAME:
            return None
        return importlib.util.spec_from_file_location(
            PACK_MODULE_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )


def install_pack_finder() -> None:
    """Let ``import comfyui_amdm`` (and its submodules) work anywhere in the test process."""
    if not any(isinstance(finder, _PackFinder) for finder in sys.meta_path):
        sys.meta_path.append(_PackFinder())


def load_pack() -> types.ModuleType:
    """Import the repository root as package ``comfyui_amdm``, as ComfyUI imports a custom node.

    Import errors from the pack are not caught: they are what a test needs to see. A failed
    import leaves nothing behind in sys.modules, so the next call tries again.
    """
    setup_comfy_in_process()
    return importlib.import_module(PACK_MODULE_NAME)


def register_models_dir(models_dir: Path) -> None:
    """Make ComfyUI's in-process loaders find model files under ``models_dir/<category>/``."""
    setup_comfy_in_process()
    import folder_paths

    for category in ("checkpoints", "loras", "controlnet", "gligen", "vae", "embeddings"):
        path = models_dir / category
        path.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(category, str(path), is_default=True)


def set_io_dirs(base: Path) -> dict[str, Path]:
    """Point ComfyUI's input/output/temp directories at ``base`` so nothing lands in the ComfyUI tree."""
    setup_comfy_in_process()
    import folder_paths

    dirs = {name: base / name for name in ("input", "output", "temp")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    return dirs
