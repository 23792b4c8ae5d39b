"""Shared fixtures: ComfyUI in-process on the CPU, the pack, fixture models, a real server.

ComfyUI is made importable (and forced onto the CPU) before the first test module outside
``tests/core/`` is imported, so those modules may ``import comfy...``, ``import nodes``
(ComfyUI's) and ``import comfyui_amdm...`` (this repository, loaded as ComfyUI loads a custom
node) at the top level. The core tests (``tests/core/``, plain torch) never look for ComfyUI.
A missing ComfyUI is an error with instructions, never a skip.

Session-scoped models are shared by all tests: clone a ModelPatcher / CLIP before patching it
(as ComfyUI's own nodes do) instead of mutating the shared object.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from support import comfy_env, family_models, fixture_models
from support.comfy_server import ComfyServer

ARTIFACTS_DIR = comfy_env.ARTIFACTS_DIR
CORE_TESTS_DIR = Path(__file__).resolve().parent / "core"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``AMDM_FRONTENDS=pinned`` (or ``current``, or both, comma-separated): the browser tests run
    only with those frontend configurations (scripts/test.sh runs the current frontend once, on
    the newest ComfyUI release); the others are deselected, and pytest says how many."""
    selected = os.environ.get("AMDM_FRONTENDS")
    if not selected:
        return
    kinds = {kind.strip() for kind in selected.split(",")}

    def frontend_kind(item: pytest.Item) -> str | None:
        frontend = getattr(item, "callspec", None) and item.callspec.params.get("session")
        return None if frontend is None else str(frontend).split("-")[0]

    deselected = [item for item in items if frontend_kind(item) not in (None, *kinds)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


def pytest_collectstart(collector: pytest.Collector) -> None:
    """ComfyUI set up before a test module that may import it is imported (the core tests'
    modules need torch alone)."""
    if isinstance(collector, pytest.Module) and CORE_TESTS_DIR not in collector.path.resolve().parents:
        comfy_env.setup_comfy_in_process()


class ComfyInProcess:
    """ComfyUI imported in this process: its modules plus directories private to the session."""

    def __init__(self, base_dir: Path) -> None:
        import comfy
        import folder_paths
        import nodes

        self.path = comfy_env.setup_comfy_in_process()
        self.comfy = comfy
        self.nodes = nodes
        self.folder_paths = folder_paths
        self.models_dir = base_dir / "models"
        comfy_env.register_models_dir(self.models_dir)
        io_dirs = comfy_env.set_io_dirs(base_dir)
        self.input_dir = io_dirs["input"]
        self.output_dir = io_dirs["output"]
        self.temp_dir = io_dirs["temp"]

    def node(self, class_type: str) -> type:
        """The registered node class (core, comfy_extras, or the pack's once it is loaded)."""
        return comfy_env.node_class(class_type)

    def run(self, class_type: str, **inputs: Any) -> tuple:
        """Execute one node's FUNCTION with keyword inputs; returns its output tuple."""
        return comfy_env.run_node(class_type, **inputs)


class LoadedCheckpoint(NamedTuple):
    """CheckpointLoaderSimple's outputs: (MODEL, CLIP, VAE)."""

    model: Any
    clip: Any
    vae: Any


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyInProcess:
    """ComfyUI importable in-process on the CPU, with session-private models/input/output dirs."""
    return ComfyInProcess(tmp_path_factory.mktemp("comfy_in_process"))


@pytest.fixture(scope="session")
def pack(comfy: ComfyInProcess) -> types.ModuleType:
    """The repository imported as package ``comfyui_amdm`` (import errors propagate), after
    ComfyUI's own extra nodes, as ComfyUI loads custom nodes."""
    comfy_env.load_comfy_extra_nodes()
    return comfy_env.load_pack()


@pytest.fixture(scope="session")
def fixture_files(comfy: ComfyInProcess) -> dict[str, Any]:
    """Generated (cached) fixture model files, also linked into ``comfy.models_dir``.

    ``{"checkpoints": {file name: Path, ...} (3, in CHECKPOINT_NAMES order), "lora": Path,
    "controlnet": Path, "gligen": Path, "models_dir": Path}``; loader nodes take the file names
    (``fixture_models.CHECKPOINT_NAMES``, ``LORA_NAME``, ``CONTROLNET_NAME``, ``GLIGEN_NAME``).
    """
    files = fixture_models.ensure_fixture_models()
    fixture_models.populate_models_dir(comfy.models_dir)
    return {
        "checkpoints": dict(files.checkpoints),
        "lora": files.lora,
        "controlnet": files.controlnet,
        "gligen": files.gligen,
        "models_dir": comfy.models_dir,
    }


@pytest.fixture(scope="session")
def load_checkpoint(comfy: ComfyInProcess, fixture_files: dict[str, Any]) -> Callable[[str], LoadedCheckpoint]:
    """``load_checkpoint(name)``: (model, clip, vae) from nodes.CheckpointLoaderSimple, cached per
    name for the session. ``name`` is a file name or an index into CHECKPOINT_NAMES."""
    loaded: dict[str, LoadedCheckpoint] = {}

    def load(name: str | int) -> LoadedCheckpoint:
        if isinstance(name, int):
            name = fixture_models.CHECKPOINT_NAMES[name]
        if name not in loaded:
            model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
            loaded[name] = LoadedCheckpoint(model, clip, vae)
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def sd15(load_checkpoint: Callable[[str], LoadedCheckpoint]) -> LoadedCheckpoint:
    """(model, clip, vae) of the first fixture checkpoint (v1-5-pruned-emaonly-fp16)."""
    return load_checkpoint(fixture_models.CHECKPOINT_NAMES[0])


@pytest.fixture(scope="session")
def sd15_members(load_checkpoint: Callable[[str], LoadedCheckpoint]) -> list[LoadedCheckpoint]:
    """All three fixture checkpoints, loaded: distinct SD1.5 'fine-tunes' of one ecosystem."""
    return [load_checkpoint(name) for name in fixture_models.CHECKPOINT_NAMES]


@pytest.fixture(scope="session")
def encode(comfy: ComfyInProcess) -> Callable[[Any, str], list]:
    """``encode(clip, text)``: CONDITIONING from nodes.CLIPTextEncode."""

    def encode_text(clip: Any, text: str) -> list:
        return comfy.nodes.CLIPTextEncode().encode(clip, text)[0]

    return encode_text


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, fixture_files: dict[str, Any]) -> Iterator[ComfyServer]:
    """A real ComfyUI server (``main.py --cpu``) with this pack in custom_nodes and the fixture
    models in its models dir; log kept at ``test-artifacts/comfyui-server.log``.

    ``queue(prompt) -> prompt_id``, ``wait(prompt_id, timeout) -> history entry``,
    ``run(prompt)``, ``object_info()``, ``output_images(entry)``, ``url``, ``base_dir``,
    ``output_dir``, ``input_dir``; ``require_pack()`` fails with the pack's import traceback
    if its nodes did not register.
    """
    server = ComfyServer(tmp_path_factory.mktemp("comfy_server"), ARTIFACTS_DIR / "comfyui-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def family_files(comfy: ComfyInProcess) -> dict[str, dict[str, Path]]:
    """Tiny SDXL / SD3.5 / Flux / Wan 2.1 files (``family_models``), generated once and cached.

    Returns ``{models folder: {file name: Path}}``. The diffusion models, the CLIP-L text
    encoder and the VAEs are also linked into ``comfy.models_dir`` and registered with
    ComfyUI's folder_paths, so that UNETLoader, CLIPLoader and VAELoader find them in process.
    """
    import folder_paths

    files = family_models.ensure_family_models()
    linked = (family_models.DIFFUSION_MODELS, family_models.TEXT_ENCODERS, family_models.VAE)
    family_models.link_into(comfy.models_dir, linked)
    for folder in linked:
        folder_paths.add_model_folder_path(folder, str(comfy.models_dir / folder), is_default=True)
    return files


@pytest.fixture(scope="session")
def load_family_model(family_files: dict[str, dict[str, Path]]) -> Callable[[str], Any]:
    """``load_family_model(file name)``: the tiny model (``family_models.MODELS``) as a
    ModelPatcher, loaded once per session; clone it before patching."""
    loaded: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in loaded:
            loaded[name] = family_models.load_model(name)
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def family_clip(comfy: ComfyInProcess, family_files: dict[str, dict[str, Path]]) -> Callable[[str], Any]:
    """``family_clip(type)``: the CLIP-L stand-in text encoder from ComfyUI's CLIPLoader with
    that ``type`` (``sd3``: SD3/Flux/Wan shapes; ``stable_diffusion``: the tiny SDXL's), cached."""
    loaded: dict[str, Any] = {}

    def load(clip_type: str) -> Any:
        if clip_type not in loaded:
            loaded[clip_type] = comfy.run("CLIPLoader", clip_name=family_models.CLIP_L_NAME, type=clip_type)[0]
        return loaded[clip_type]

    return load


@pytest.fixture(scope="session")
def family_server(comfy_server: ComfyServer, family_files: dict[str, dict[str, Path]]) -> ComfyServer:
    """The real server, with the tiny family files linked into its models directory
    (ComfyUI rescans a models folder whose contents changed)."""
    family_models.link_into(comfy_server.models_dir)
    return comfy_server
