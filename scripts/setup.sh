#!/usr/bin/env bash
# Prepare a machine for this pack: torch, the ComfyUI releases it is tested on and their
# Python requirements, checked to start with the pack; the test set-up adds the test tools and
# generated test models. Idempotent: every install step checks first and does nothing when
# already done; the start check runs every time. pip shows what it downloads (torch and
# ComfyUI's requirements are a few GB on a fresh machine).
#
#   bash scripts/setup.sh            # torch, both ComfyUI releases and their requirements
#   bash scripts/setup.sh --tests    # ... plus the test tools (pyproject.toml's `test` extra:
#                                    #     pytest, playwright, gguf, and the ecosystem's comfy-cli,
#                                    #     comfy-test, comfy-lint), the generated test models and
#                                    #     ComfyUI-GGUF at its pinned commit (scripts/fetch_comfyui_gguf.sh)
#   bash scripts/setup.sh --browser  # ... --tests plus Debian's chromium and the current frontend
#
# The releases are those of scripts/comfyui-releases.txt. Each is taken from
# $COMFYUI_PATH_<version, dots as underscores> (COMFYUI_PATH_0_3_64, COMFYUI_PATH_0_28_0), else
# from ${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/ComfyUI (the lowest release) or
# .../ComfyUI-<version>; where it is in neither place, it is cloned there at its commit when
# GitHub is reachable. Plain `python3 -m pytest` and the benchmarks use $COMFYUI_PATH, else the
# ComfyUI containing this checkout (<ComfyUI>/custom_nodes/<this repo>), else the lowest
# release; where that is another ComfyUI, its requirements are installed and checked too.
set -euo pipefail

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# torchaudio for a torch that PyPI has no torchaudio build of: one built for an earlier torch,
# installed without its dependencies (which would replace torch), used only where it imports.
# ComfyUI 0.28 imports torchaudio at start (comfy/sd.py); 0.3.64's audio nodes need it.
TORCHAUDIO_FALLBACK="torchaudio==2.11.1"
# Not in ComfyUI 0.3.64's requirements, but imported at its start (app/frontend_management.py).
EXTRA_REQUIREMENTS=(requests)
# The current ComfyUI frontend: the browser tests also run the pack in it, served with
# `--front-end-root`. Installed under the cache, not into ComfyUI's environment.
CURRENT_FRONTEND_VERSION="1.58.1"

want_tests=0
want_browser=0
for arg in "$@"; do
    case "$arg" in
        --tests) want_tests=1 ;;
        --browser) want_tests=1; want_browser=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${COMFYUI_AMDM_CACHE:-$HOME/.cache/comfyui-amdm}"
python="${PYTHON:-python3}"
log() { echo "setup: $*"; }
fail() { echo "setup: $*" >&2; exit 1; }

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

# --- ComfyUI releases --------------------------------------------------------------------
is_comfyui() { [[ -f "$1/main.py" && -d "$1/comfy" ]]; }
comfyui_version_of() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null; }

# clone_release VERSION COMMIT DEST URL...: DEST holds that commit afterwards, or return 1.
clone_release() {
    local version="$1" commit="$2" dest="$3" url
    shift 3
    command -v git >/dev/null || return 1
    for url in "$@"; do
        timeout 30 git ls-remote --exit-code "$url" HEAD >/dev/null 2>&1 || continue
        log "cloning ComfyUI $version (commit $commit) from $url into $dest"
        rm -rf "$dest.partial"
        mkdir -p "$dest.partial"
        if git -C "$dest.partial" init --quiet \
            && { git -C "$dest.partial" fetch --quiet --depth 1 "$url" "$commit" \
                 || git -C "$dest.partial" fetch --quiet "$url"; } \
            && git -C "$dest.partial" -c advice.detachedHead=false checkout --quiet "$commit" \
            && [[ "$(comfyui_version_of "$dest.partial")" == "$version" ]]; then
            mv "$dest.partial" "$dest"
            return 0
        fi
        rm -rf "$dest.partial"
    done
    return 1
}

# shellcheck source=scripts/comfyui_releases.sh
source "$repo_root/scripts/comfyui_releases.sh"
release_dirs=()
while read -r version commit dir variable urls <&3; do
    if ! is_comfyui "$dir"; then
        if [[ -n "${!variable:-}" ]]; then
            fail "$variable=$dir is not a ComfyUI checkout (no main.py and comfy/ there)"
        fi
        mkdir -p "$(dirname "$dir")"
        # shellcheck disable=SC2086  # $urls: one or more repository addresses
        clone_release "$version" "$commit" "$dir" $urls || fail "ComfyUI $version is not at $dir and could not be cloned (GitHub unreachable?). Provide commit $commit of ComfyUI ($urls) by
  - setting $variable to a checkout of it, or
  - placing a checkout of it at $dir
and run this again."
    fi
    found_version="$(comfyui_version_of "$dir")"
    if [[ "$found_version" != "$version" ]]; then
        fail "$dir holds ComfyUI ${found_version:-of an unknown version}, not $version (commit $commit): set $variable to a checkout of $version, or move $dir away"
    fi
    dir="$(cd "$dir" && pwd -P)"
    log "ComfyUI $version at $dir"
    release_dirs+=("$dir")
done 3< <(comfyui_releases)

# The ComfyUI that plain pytest and the benchmarks find (tests/support/comfy_env.py).
default_comfy="$("$python" -c '
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks.comfy_setup import comfy_env
print(comfy_env().find_comfyui())' "$repo_root")" || fail "no ComfyUI for plain pytest and the benchmarks (see above)"
comfy_dirs=("$default_comfy")
for dir in "${release_dirs[@]}"; do
    [[ "$dir" == "$default_comfy" ]] || comfy_dirs+=("$dir")
done
log "plain pytest and the benchmarks use ComfyUI $(comfyui_version_of "$default_comfy") at $default_comfy"

# --- Python requirements -----------------------------------------------------------------
# Every checkout's requirements (the first's pinned frontend packages in the environment, the
# others' in folders of their own under the cache), plus the test tools with --tests.
"$python" -c "import packaging" 2>/dev/null || pip_install packaging
"$python" -c "import tomllib" 2>/dev/null || "$python" -c "import tomli" 2>/dev/null || pip_install tomli
extras=()
if [[ $want_tests -eq 1 ]]; then extras=(--extra test); fi
"$python" "$repo_root/scripts/install_requirements.py" "${comfy_dirs[@]}" "${extras[@]}" \
    --also "${EXTRA_REQUIREMENTS[@]}"

torch_version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
if "$python" -c "import torchaudio" 2>/dev/null; then
    log "torchaudio $("$python" -c 'import torchaudio; print(torchaudio.__version__)') present"
elif "$python" -m pip install --disable-pip-version-check --quiet --dry-run --no-deps \
        "torchaudio==$torch_version" >/dev/null 2>&1; then
    log "installing torchaudio==$torch_version"
    pip_install "torchaudio==$torch_version"
else
    log "the package index has no torchaudio $torch_version: installing $TORCHAUDIO_FALLBACK without its dependencies"
    pip_install --no-deps "$TORCHAUDIO_FALLBACK"
    "$python" -c "import torchaudio" \
        || fail "$TORCHAUDIO_FALLBACK does not import beside torch $torch_version: install a torch that PyPI has a torchaudio for (${TORCH_PINS[*]} works)"
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

# --- every ComfyUI starts with the pack --------------------------------------------------
"$python" "$repo_root/scripts/check_comfyui_starts.py" "${comfy_dirs[@]}"

# --- test models -------------------------------------------------------------------------
# Random-weight stand-ins of SD1.5 and of the SDXL/SD3.5/Flux/Wan families (about 2 GB),
# generated once and cached; the tests would also generate them on first use.
if [[ $want_tests -eq 1 ]]; then
    log "test models: generated where missing (about 2 GB, a few minutes the first time)"
    COMFYUI_PATH="${release_dirs[0]}" "$python" -c '
import logging, sys, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.ERROR, format="%(message)s")
from support import family_models, fixture_models
started = time.perf_counter()
fixture_models.ensure_fixture_models()
family_models.ensure_family_models()
print(f"setup: test models ready in {family_models.fixtures_dir().parent} ({time.perf_counter() - started:.1f}s)")
' "$repo_root/tests"
    # The GGUF loader pack that tests/test_gguf.py runs beside this one.
    bash "$repo_root/scripts/fetch_comfyui_gguf.sh"
fi
log "done in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
