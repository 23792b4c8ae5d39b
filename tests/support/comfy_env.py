"""Locate ComfyUI and make it (and this pack) importable in-process, the way ComfyUI does.

ComfyUI is found, in order, at:
1. ``$COMFYUI_PATH``;
2. the ComfyUI that contains this checkout (``<ComfyUI>/custom_nodes/<this repo>``);
3. ``$COMFYUI_AMDM_CACHE/ComfyUI``, then ``~/.cache/comfyui-amdm/ComfyUI`` (where
   ``scripts/setup.sh`` puts it).

ComfyUI owns the top-level module names ``nodes``, ``utils``, ``server``, ``execution`` and
others; this repository has a ``nodes/`` package of its own, so ComfyUI's directory always goes
first on ``sys.path`` and a wrongly resolved ``nodes`` module is evicted before ComfyUI is used.
ComfyUI's ``nodes.py`` (0.3.x) also puts its ``comfy/`` folder first on ``sys.path``, where
``comfy/utils.py`` would shadow the ``utils`` package; ``main.py`` imports ``utils`` before
``nodes``, and so does :func:`setup_comfy_in_process`.

Releases of ComfyUI pin some packages exactly (``name==version`` in requirements.txt: the
frontend, its templates and docs). Where one environment serves several releases, the pins of
a release that the environment does not satisfy live in a folder of their own under the cache
(:func:`pinned_requirements_dir`, filled by ``scripts/setup.sh``), which goes first on
``sys.path`` in process and on ``PYTHONPATH`` for a server; a server without them is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# Server logs, screenshots and reports; scripts/test.sh gives each concurrent run its own.
ARTIFACTS_DIR = Path(os.environ.get("AMDM_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
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
        "  - run `bash scripts/setup.sh` (puts the ComfyUI releases of scripts/comfyui-releases.txt "
        f"under {cache_dir()}, the lowest at {fallbacks[0]});\n"
        "  - set COMFYUI_PATH to an existing ComfyUI directory;\n"
        "  - place this repository at <ComfyUI>/custom_nodes/<dir>."
    )


def comfyui_version(comfy_dir: Path) -> str:
    """The version a ComfyUI checkout declares (its comfyui_version.py), or "unknown"."""
    version_file = Path(comfy_dir) / "comfyui_version.py"
    text = version_file.read_text(encoding="utf-8") if version_file.is_file() else ""
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else "unknown"


def normalized_name(name: str) -> str:
    """A package name as pip compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def exact_pins(comfy_dir: Path) -> dict[str, str]:
    """The packages ComfyUI's requirements.txt pins to one version (``name==version``)."""
    pins = {}
    for line in (Path(comfy_dir) / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?$", line)
        if match:
            pins[normalized_name(match.group(1))] = match.group(2)
    return pins


def pinned_requirements_dir(comfy_dir: Path) -> Path:
    """Where ``scripts/setup.sh`` installs the pins of this ComfyUI that the environment does
    not satisfy (``pip install --target``): one folder per release and set of pins."""
    pins = "\n".join(f"{name}=={version}" for name, version in sorted(exact_pins(comfy_dir).items()))
    digest = hashlib.sha256(pins.encode("utf-8")).hexdigest()[:10]
    return cache_dir() / "pinned-requirements" / f"ComfyUI-{comfyui_version(comfy_dir)}-{digest}"


def distributions_in(directory: Path) -> dict[str, str]:
    """{normalized name: version} of the packages installed in a ``pip --target`` folder."""
    found = {}
    for info in directory.glob("*.dist-info") if directory.is_dir() else ():
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[normalized_name(name)] = version
    return found


def unsatisfied_pins(comfy_dir: Path) -> dict[str, str]:
    """The exact pins of this ComfyUI that the Python environment does not satisfy (ignoring
    :func:`pinned_requirements_dir`, which is where they go)."""
    directory = pinned_requirements_dir(comfy_dir)
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != directory.resolve()]
    unsatisfied = {}
    for name, version in exact_pins(comfy_dir).items():
        installed = next((dist.version for dist in importlib.metadata.distributions(name=name, path=path)), None)
        if installed != version:
            unsatisfied[name] = version
    return unsatisfied


def pinned_import_paths(comfy_dir: Path) -> list[Path]:
    """Folders that must precede the environment's packages for this ComfyUI: its pinned
    requirements folder when it holds pins the environment does not satisfy, else nothing."""
    directory = pinned_requirements_dir(comfy_dir)
    provided = distributions_in(directory)
    unsatisfied = unsatisfied_pins(comfy_dir)
    return [directory] if any(provided.get(name) == version for name, version in unsatisfied.items()) else []


def missing_pins(comfy_dir: Path) -> list[str]:
    """This ComfyUI's exact pins that neither the environment nor its pinned requirements
    folder satisfies (a server warns about an old frontend; in process nothing imports it)."""
    provided = distributions_in(pinned_requirements_dir(comfy_dir))
    return [f"{name}=={version}" for name, version in unsatisfied_pins(comfy_dir).items()
            if provided.get(name) != version]


def server_environment(comfy_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables for a ComfyUI process of ``comfy_dir``: ``base`` (default: this
    process's) with :func:`pinned_import_paths` first on PYTHONPATH. Raises RuntimeError, saying
    how to install them, when the packages ComfyUI pins are missing (:func:`missing_pins`)."""
    missing = missing_pins(comfy_dir)
    if missing:
        raise RuntimeError(
            f"ComfyUI {comfyui_version(comfy_dir)} at {comfy_dir} pins {', '.join(missing)}, which this "
            f"Python environment does not have: run `bash scripts/setup.sh` (installs them into "
            f"{pinned_requirements_dir(comfy_dir)}), or `pip install -r {Path(comfy_dir) / 'requirements.txt'}`."
        )
    env = dict(os.environ if base is None else base)
    paths = [str(path) for path in pinned_import_paths(comfy_dir)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


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
    for position, path in enumerate(pinned_import_paths(comfy_dir), start=2):
        if str(path) not in sys.path:
            sys.path.insert(position, str(path))
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
        if device == "gpu":
            _start_dynamic_vram()

    # Before `nodes`, as main.py does: nodes.py puts comfy/ first on sys.path, and a later
    # `import utils` (server.py's `from utils.install_util import ...`) would find comfy/utils.py.
    import utils
    import nodes

    for module, expected in ((utils, comfy_dir / "utils" / "__init__.py"), (nodes, comfy_dir / "nodes.py")):
        if Path(module.__file__).resolve() != expected:
            raise RuntimeError(f"`{module.__name__}` resolved to {module.__file__}, expected ComfyUI's {expected}")
    _comfy_dir = comfy_dir
    return comfy_dir


def _start_dynamic_vram() -> None:
    """ComfyUI's default memory management on an NVIDIA GPU where the release has it
    (DynamicVRAM: comfy-aimdo's allocator and ``model_patcher.ModelPatcherDynamic``, 0.28),
    started with the calls main.py makes at start-up; elsewhere nothing changes."""
    import comfy.cli_args

    if not getattr(comfy.cli_args, "enables_dynamic_vram", lambda: False)():
        return
    try:
        import comfy_aimdo.control
    except ImportError:
        return
    args = comfy.cli_args.args
    comfy_aimdo.control.init(simple_vram_headroom=None if args.reserve_vram is None
                             else int(args.reserve_vram * 1024 ** 3))
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher

    if not comfy.model_management.is_nvidia() or comfy.model_management.is_wsl():
        return
    headroom = int(args.vram_headroom * 1024 ** 3)
    if comfy_aimdo.control.init_devices((device.index, headroom)
                                        for device in comfy.model_management.get_all_torch_devices()):
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True


_extra_nodes_failed: list[str] | None = None  # None: not loaded yet


class _LoggedMessages(logging.Handler):
    """Keeps the messages logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_comfy_extra_nodes() -> None:
    """Register ComfyUI's built-in extra nodes (comfy_extras: SamplerCustomAdvanced, ...). Idempotent.

    Custom nodes and API nodes are not loaded. A file of comfy_extras that fails to import is
    an error naming it (ComfyUI itself only logs "IMPORT FAILED"): ``scripts/setup.sh``
    installs everything they import. Files that register with the running server
    (``PromptServer.instance``; 0.28's node replacements) cannot load without one; the test
    server and the set-up's start check load them.
    """
    global _extra_nodes_failed
    if _extra_nodes_failed is None:
        setup_comfy_in_process()
        import nodes

        root, logged = logging.getLogger(), _LoggedMessages()
        level = root.level
        root.addHandler(logged)
        root.setLevel(min(level, logging.WARNING) or logging.WARNING)  # ComfyUI warns why
        try:
            failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        finally:
            root.removeHandler(logged)
            root.setLevel(level)
        _extra_nodes_failed = [name for name in failed if not any(
            name in message and "PromptServer" in message for message in logged.messages)]
    if _extra_nodes_failed:
        raise RuntimeError(f"ComfyUI's {', '.join(_extra_nodes_failed)} failed to import (its log says "
                           "why); run `bash scripts/setup.sh` to install what ComfyUI imports")


def node_class(class_type: str) -> type:
    """The node class ComfyUI registers under ``class_type`` (core, comfy_extras or the pack's)."""
    setup_comfy_in_process()
    import nodes

    if class_type not in nodes.NODE_CLASS_MAPPINGS and class_type not in _pack_mappings():
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
    return its output tuple; under torch.inference_mode(), as ComfyUI's executor runs nodes
    (a tensor made in inference mode, cached by one node, cannot enter autograd in another)."""
    import torch

    cls = node_class(class_type)
    with torch.inference_mode():
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
