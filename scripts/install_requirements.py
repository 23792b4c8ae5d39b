"""Install the Python requirements of several ComfyUI checkouts into one environment.

usage: python3 scripts/install_requirements.py COMFYUI_DIR [COMFYUI_DIR ...]
           [--extra NAME] [--also REQUIREMENT ...]

Every requirement of every checkout (and of this pack's optional dependencies NAME in
pyproject.toml, and each ``--also`` one) that the environment does not satisfy is installed
with one pip command, except torch, torchvision and torchaudio, which
``scripts/setup.sh`` installs as a matched set. Releases pin some packages to one version
each (the frontend, its workflow templates and docs): the first checkout that names a package
decides its version in the environment, and a later checkout's different pins go into a folder
of its own under the cache (``pip install --target``; tests/support/comfy_env.py's
``pinned_requirements_dir`` names it and puts it first on the import path of that ComfyUI).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: scripts/setup.sh installs tomli
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from benchmarks import comfy_setup  # noqa: E402  (the tests' ComfyUI locator, stdlib only)

# Installed by scripts/setup.sh as one set, so that pip never swaps torch for another build.
TORCH_SET = {"torch", "torchvision", "torchaudio"}


def _requirements(path: Path) -> list[Requirement]:
    requirements = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement:
            sys.exit(f"setup: cannot read the requirement {line!r} in {path}")
    return requirements


def _satisfied(requirement: Requirement) -> bool:
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    return not requirement.specifier or requirement.specifier.contains(installed, prereleases=True)


def _pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *arguments]
    print(f"setup: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui_dirs", nargs="+", type=Path)
    parser.add_argument("--extra", action="append", default=[],
                        help="this pack's optional dependencies of that name (pyproject.toml)")
    parser.add_argument("--also", nargs="*", default=[], help="further requirements")
    options = parser.parse_args()
    comfy_env = comfy_setup.comfy_env()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    also = [*options.also, *(line for extra in options.extra for line in project["optional-dependencies"][extra])]

    # The environment: every requirement, the first checkout's version of each pinned package.
    pinned_by: dict[str, str] = {}
    environment: list[Requirement] = []
    sources = [(directory, _requirements(directory / "requirements.txt")) for directory in options.comfyui_dirs]
    sources.append((None, [Requirement(line) for line in also]))
    for directory, requirements in sources:
        for requirement in requirements:
            name = comfy_env.normalized_name(requirement.name)
            if name in TORCH_SET or (requirement.marker and not requirement.marker.evaluate()):
                continue
            is_pin = any(spec.operator == "==" for spec in requirement.specifier)
            if is_pin and name in pinned_by and pinned_by[name] != str(directory):
                continue  # a later checkout's own pin: its pinned-requirements folder
            if is_pin:
                pinned_by[name] = str(directory)
            environment.append(requirement)
    missing = sorted({str(requirement) for requirement in environment if not _satisfied(requirement)})
    if missing:
        print(f"setup: installing {' '.join(missing)}", flush=True)
        _pip(*missing)
    else:
        print("setup: Python requirements satisfied", flush=True)

    # Each checkout's pins that the environment does not satisfy, in their own folder.
    for directory in options.comfyui_dirs:
        unsatisfied = comfy_env.unsatisfied_pins(directory)
        if not unsatisfied:
            continue
        target = comfy_env.pinned_requirements_dir(directory)
        provided = comfy_env.distributions_in(target)
        pins = [f"{name}=={version}" for name, version in sorted(unsatisfied.items())]
        if all(provided.get(name) == version for name, version in unsatisfied.items()):
            print(f"setup: {' '.join(pins)} for ComfyUI {comfy_env.comfyui_version(directory)} present in {target}")
            continue
        print(f"setup: installing {' '.join(pins)} for ComfyUI {comfy_env.comfyui_version(directory)} "
              f"into {target} (the environment has other versions)", flush=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _pip("--target", str(partial), *pins)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
