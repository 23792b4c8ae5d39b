#!/usr/bin/env bash
# Prepare a machine for this pack: Python dependencies and ComfyUI; the test set-up adds the
# test tools and generated test models. Idempotent: every step checks first and does nothing
# when already done. pip shows what it downloads (torch and ComfyUI's requirements are a few
# GB on a fresh machine).
#
#   bash scripts/setup.sh            # torch, ComfyUI and its requirements (all the benchmarks need)
#   bash scripts/setup.sh --tests    # ... plus pytest, playwright and the generated test models
#   bash scripts/setup.sh --browser  # ... --tests plus Debian's chromium for the browser tests
#
# ComfyUI is looked for, in order, at $COMFYUI_PATH, the ComfyUI containing this checkout
# (<ComfyUI>/custom_nodes/<this repo>), $COMFYUI_AMDM_CACHE/ComfyUI and
# ~/.cache/comfyui-amdm/ComfyUI; if none exists it is cloned (tag v0.3.64) when GitHub is
# reachable. Generated files live under ${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}.
set -euo pipefail

COMFYUI_TAG="v0.3.64"
COMFYUI_REPO="https://github.com/Comfy-Org/ComfyUI"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
TEST_TOOLS="pytest playwright"

want_tests=0
want_browser=0
for arg in "$@"; do
    case "$arg" in
        --tests) want_tests=1 ;;
        --browser) want_tests=1; want_browser=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${COMFYUI_AMDM_CACHE:-$HOME/.cache/comfyui-amdm}"
python="${PYTHON:-python3}"
log() { echo "setup: $*"; }

pip_install() {
    "$python" -m pip install --disable-pip-version-check "$@"
}

# --- torch -------------------------------------------------------------------------------
if "$python" -c "import torch, torchvision" 2>/dev/null; then
    log "torch $("$python" -c 'import torch; print(torch.__version__)') present"
else
    log "installing ${TORCH_PINS[*]}"
    pip_install "${TORCH_PINS[@]}"
fi

# --- ComfyUI -----------------------------------------------------------------------------
is_comfyui() { [[ -f "$1/main.py" && -d "$1/comfy" ]]; }

locate_comfyui() {
    if [[ -n "${COMFYUI_PATH:-}" ]]; then
        if is_comfyui "$COMFYUI_PATH"; then echo "$COMFYUI_PATH"; return 0; fi
        echo "setup: COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py, comfy/)" >&2
        return 2
    fi
    local parent
    parent="$(dirname "$repo_root")"
    if [[ "$(basename "$parent")" == "custom_nodes" ]] && is_comfyui "$(dirname "$parent")"; then
        dirname "$parent"; return 0
    fi
    local candidate
    for candidate in "$cache_dir/ComfyUI" "$HOME/.cache/comfyui-amdm/ComfyUI"; do
        if is_comfyui "$candidate"; then echo "$candidate"; return 0; fi
    done
    return 1
}

status=0
comfy_dir="$(locate_comfyui)" || status=$?
if [[ $status -eq 2 ]]; then
    exit 1
elif [[ $status -ne 0 ]]; then
    comfy_dir="$cache_dir/ComfyUI"
    if command -v git >/dev/null && timeout 30 git ls-remote --exit-code --tags "$COMFYUI_REPO" "$COMFYUI_TAG" >/dev/null 2>&1; then
        log "cloning ComfyUI $COMFYUI_TAG into $comfy_dir"
        mkdir -p "$cache_dir"
        rm -rf "$comfy_dir.partial"
        git clone --quiet --depth 1 --branch "$COMFYUI_TAG" "$COMFYUI_REPO" "$comfy_dir.partial"
        mv "$comfy_dir.partial" "$comfy_dir"
    else
        cat >&2 <<EOF
setup: ComfyUI not found and $COMFYUI_REPO is not reachable. Provide ComfyUI $COMFYUI_TAG by
  - setting COMFYUI_PATH to a ComfyUI directory, or
  - placing it at $comfy_dir, or
  - putting this repository in <ComfyUI>/custom_nodes/.
EOF
        exit 1
    fi
fi
log "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy_dir/comfyui_version.py" 2>/dev/null) at $comfy_dir"

# --- Python requirements -----------------------------------------------------------------
# ComfyUI's own requirements (its pins, not ours), plus the test tools with --tests. torchaudio
# comes separately, in the build that matches the installed torch: for any other, pip would
# replace torch with the one that torchaudio build pins.
"$python" -c "import packaging" 2>/dev/null || pip_install packaging
extra_requirements=""
if [[ $want_tests -eq 1 ]]; then extra_requirements="$TEST_TOOLS"; fi
missing="$("$python" - "$comfy_dir/requirements.txt" "$extra_requirements" <<'EOF'
import sys
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

requirements_file, extra = sys.argv[1], sys.argv[2].split()
lines = [line.split("#", 1)[0].strip() for line in open(requirements_file, encoding="utf-8")]
for line in filter(None, lines + extra):
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        print(line)
        continue
    if requirement.name.lower() == "torchaudio":
        continue
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        print(line)
        continue
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        print(line)
EOF
)"
if [[ -n "$missing" ]]; then
    log "installing: $(echo "$missing" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    pip_install $missing
else
    log "Python requirements satisfied"
fi

torch_version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
if "$python" -c "import torchaudio" 2>/dev/null; then
    log "torchaudio present"
elif "$python" -m pip install --disable-pip-version-check --quiet --dry-run --no-deps \
        "torchaudio==$torch_version" >/dev/null 2>&1; then
    log "installing torchaudio==$torch_version (ComfyUI's audio nodes)"
    pip_install "torchaudio==$torch_version"
else
    log "the package index has no torchaudio $torch_version: ComfyUI will list its two audio" \
        "node files as IMPORT FAILED at start (harmless here; the README lists the lines)"
fi

# --- browser -----------------------------------------------------------------------------
if [[ $want_browser -eq 1 ]]; then
    if [[ -x /usr/bin/chromium ]]; then
        log "chromium present"
    else
        log "installing Debian chromium (apt-get)"
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    fi
    # The current ComfyUI frontend: the browser tests also run the pack in it, served with
    # `--front-end-root`. Installed under the cache, not into ComfyUI's environment.
    CURRENT_FRONTEND_VERSION="1.58.1"
    frontend_dir="$cache_dir/frontend/$CURRENT_FRONTEND_VERSION"
    if [[ -f "$frontend_dir/comfyui_frontend_package/static/index.html" ]]; then
        log "comfyui-frontend-package $CURRENT_FRONTEND_VERSION present"
    else
        log "installing comfyui-frontend-package $CURRENT_FRONTEND_VERSION into $frontend_dir"
        mkdir -p "$cache_dir/frontend"
        rm -rf "$frontend_dir.partial"
        pip_install --no-deps --target "$frontend_dir.partial" "comfyui-frontend-package==$CURRENT_FRONTEND_VERSION"
        mv "$frontend_dir.partial" "$frontend_dir"
    fi
fi

# --- test models -------------------------------------------------------------------------
# Random-weight stand-ins of SD1.5 and of the SDXL/SD3.5/Flux/Wan families (about 2 GB),
# generated once and cached; the tests would also generate them on first use.
if [[ $want_tests -eq 1 ]]; then
    log "test models: generated where missing (about 2 GB, a few minutes the first time)"
    COMFYUI_PATH="$comfy_dir" "$python" -c '
import logging, sys, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.ERROR, format="%(message)s")
from support import family_models, fixture_models
started = time.perf_counter()
fixture_models.ensure_fixture_models()
family_models.ensure_family_models()
print(f"setup: test models ready in {family_models.fixtures_dir().parent} ({time.perf_counter() - started:.1f}s)")
' "$repo_root/tests"
fi
