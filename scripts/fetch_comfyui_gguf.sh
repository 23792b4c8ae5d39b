#!/usr/bin/env bash
# ComfyUI-GGUF (city96's GGUF loader node pack) at the commit the tests pin, for tests/test_gguf.py,
# and its Python requirement `gguf`. Idempotent.
#
#   bash scripts/fetch_comfyui_gguf.sh
#
# It goes to $COMFYUI_GGUF_PATH if set, else ${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/ComfyUI-GGUF.
# The commit is COMFYUI_GGUF_COMMIT in tests/support/gguf_models.py.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${COMFYUI_AMDM_CACHE:-$HOME/.cache/comfyui-amdm}"
python="${PYTHON:-python3}"
log() { echo "fetch_comfyui_gguf: $*"; }

support="$repo_root/tests/support/gguf_models.py"
repo_url="$(sed -n 's/^COMFYUI_GGUF_REPO = "\(.*\)"/\1/p' "$support")"
commit="$(sed -n 's/^COMFYUI_GGUF_COMMIT = "\(.*\)"/\1/p' "$support")"
dest="${COMFYUI_GGUF_PATH:-$cache_dir/ComfyUI-GGUF}"

current_commit() {
    if [[ -e "$1/.git" ]]; then
        git -C "$1" rev-parse HEAD 2>/dev/null || true
    elif [[ -f "$1/.snapshot-commit" ]]; then
        cat "$1/.snapshot-commit"
    fi
}

if [[ "$(current_commit "$dest")" == "$commit" ]]; then
    log "ComfyUI-GGUF ${commit:0:12} present at $dest"
elif [[ -e "$dest" && ! -e "$dest/.git" ]]; then
    echo "fetch_comfyui_gguf: $dest exists but is not a git checkout of $commit; remove it" \
         "or set COMFYUI_GGUF_PATH elsewhere" >&2
    exit 1
elif ! timeout 30 git ls-remote --exit-code "$repo_url" HEAD >/dev/null 2>&1; then
    cat >&2 <<EOF
fetch_comfyui_gguf: $repo_url is not reachable. Provide ComfyUI-GGUF at commit $commit by
  - placing a checkout of it at $dest, or
  - setting COMFYUI_GGUF_PATH to one.
EOF
    exit 1
else
    log "fetching ComfyUI-GGUF ${commit:0:12} into $dest"
    if [[ ! -e "$dest/.git" ]]; then
        mkdir -p "$(dirname "$dest")"
        rm -rf "$dest.partial"
        git init --quiet "$dest.partial"
        git -C "$dest.partial" remote add origin "$repo_url"
        git -C "$dest.partial" fetch --quiet --depth 1 origin "$commit"
        git -C "$dest.partial" checkout --quiet --detach FETCH_HEAD
        mv "$dest.partial" "$dest"
    else
        git -C "$dest" fetch --quiet --depth 1 origin "$commit"
        git -C "$dest" checkout --quiet --detach FETCH_HEAD
    fi
fi

# ComfyUI-GGUF's requirements.txt: gguf, plus sentencepiece and protobuf for GGUF text
# encoders' tokenizers, which the tests do not load.
if "$python" -c "import gguf" 2>/dev/null; then
    log "gguf $("$python" -c 'from importlib.metadata import version; print(version("gguf"))') present"
else
    log "installing gguf"
    "$python" -m pip install --disable-pip-version-check "gguf>=0.13.0"
fi
