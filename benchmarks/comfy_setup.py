"""Make ComfyUI and this pack importable in-process, without pytest.

The search for ComfyUI ($COMFYUI_PATH, else the ComfyUI containing this checkout, else
${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/ComfyUI), the CPU selection and the import of
the repository as package `comfyui_amdm` are those of the test suite's
tests/support/comfy_env.py (plain stdlib, no pytest), loaded here by file path so that the
benchmark and the tests share one definition.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_ENV_PATH = REPO_ROOT / "tests" / "support" / "comfy_env.py"
COMFY_ENV_MODULE = "comfyui_amdm_support_comfy_env"
# The name the test suite imports it under (tests/ on sys.path).
TEST_SUITE_MODULE = "support.comfy_env"


def comfy_env() -> types.ModuleType:
    """The shared ComfyUI locator module: the test suite's instance when it is loaded,
    else one loaded here by path (once)."""
    for name in (TEST_SUITE_MODULE, COMFY_ENV_MODULE):
        if name in sys.modules:
            return sys.modules[name]
    if not COMFY_ENV_PATH.is_file():
        raise RuntimeError(f"{COMFY_ENV_PATH} is missing: the benchmark finds ComfyUI through it")
    spec = importlib.util.spec_from_file_location(COMFY_ENV_MODULE, COMFY_ENV_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[COMFY_ENV_MODULE] = module
    spec.loader.exec_module(module)
    return module


def setup_comfy(device: str = "cpu") -> types.ModuleType:
    """Put ComfyUI on sys.path (on the CPU, or with "gpu" on the GPU ComfyUI chooses),
    import the pack and return it. Idempotent; raises RuntimeError naming the places
    searched when ComfyUI is not found."""
    env = comfy_env()
    env.setup_comfy_in_process(device)
    return env.load_pack()
