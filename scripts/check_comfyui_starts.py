"""Start each ComfyUI with this pack installed and fail, printing the lines, if anything did
not import.

usage: python3 scripts/check_comfyui_starts.py COMFYUI_DIR [COMFYUI_DIR ...]

Each runs ``main.py --cpu --quick-test-for-ci`` (ComfyUI loads its own nodes, its API nodes and
the custom nodes, then exits) in a throw-away base directory whose custom_nodes/ holds a link
to this repository, with the import path the tests give it (tests/support/comfy_env.py:
``server_environment``). A start passes when it exits 0, lists the pack under "Import times for
custom nodes", and prints none of the lines below.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from benchmarks import comfy_setup  # noqa: E402  (the tests' ComfyUI locator, stdlib only)

# What ComfyUI prints when one of its files, or a custom node, fails to import, or when a
# pinned package (the frontend, its templates) is older than it asks for.
PROBLEMS = re.compile(r"IMPORT FAILED|Cannot import|lower than the recommended version|Please do a: pip install")
START_TIMEOUT_S = 600


def check(comfy_dir: Path, comfy_env) -> bool:
    version = comfy_env.comfyui_version(comfy_dir)
    with tempfile.TemporaryDirectory(prefix="comfyui-start-") as base:
        (Path(base) / "custom_nodes").mkdir()
        (Path(base) / "custom_nodes" / comfy_env.PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        command = [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", base,
                   "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=comfy_dir, env=comfy_env.server_environment(comfy_dir),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=START_TIMEOUT_S)
        seconds = time.perf_counter() - started
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if PROBLEMS.search(line)]
    pack_listed = any(line.rstrip().endswith(f"custom_nodes/{comfy_env.PACK_DIR_NAME}")
                      and "IMPORT FAILED" not in line for line in lines)
    if result.returncode == 0 and not problems and pack_listed:
        print(f"setup: ComfyUI {version} starts with the pack, every module imported ({seconds:.0f}s)")
        return True
    print(f"setup: ComfyUI {version} at {comfy_dir} did not start cleanly with the pack "
          f"(exit code {result.returncode}; pack listed under the custom nodes' import times: "
          f"{'yes' if pack_listed else 'no'}). Command, run in {comfy_dir}:\n  {' '.join(command)}",
          file=sys.stderr)
    if problems:
        print("The lines that say what failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    print("The end of its output:\n  " + "\n  ".join(lines[-60:]), file=sys.stderr)
    return False


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    comfy_env = comfy_setup.comfy_env()
    results = [check(Path(directory).resolve(), comfy_env) for directory in sys.argv[1:]]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
