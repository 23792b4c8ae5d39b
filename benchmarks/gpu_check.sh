#!/usr/bin/env bash
# The shared-checkpoint benchmark on a CUDA GPU, in one command: ComfyUI 0.28.0 (the newest
# release of scripts/comfyui-releases.txt) under its default memory management on NVIDIA GPUs
# (DynamicVRAM: comfy-aimdo's allocator and ModelPatcherDynamic, started as main.py starts
# them), SD1.5-size UNets in fp16, 512 px (4x64x64 latent), S = 20 steps, window |W| = 8 steps:
#
#   python3 -m benchmarks.shared_checkpoints --device cuda --steps 20 --window 8 --repeats 2
#
# Every row of that benchmark (plain KSampler against AMDM with two distinct checkpoints, a LoRA
# clone with its resident copy, the same clone re-patched, one checkpoint batched, three
# members), one table; a line before it names the GPU, torch, ComfyUI and the model patcher.
#
# Made for a bare GPU machine with no network, Python 3.12 and torch 2.11 (with torchvision,
# torchaudio, transformers, numpy, safetensors, aiohttp, scipy, ... but none of ComfyUI's own
# packages), sent the repository's working tree and at most 64 MiB in all.
#
# 1. Here, on a machine where `bash scripts/setup.sh` ran (it needs ComfyUI 0.28.0 and PyPI):
#
#      bash benchmarks/gpu_check.sh --prepare
#
#    writes into .gpu/ (ignored by git): ComfyUI-0.28.0.tar.xz, ComfyUI's source without its
#    tests, blueprints, API nodes and model folders; and site-py312.tar.xz, the packages that
#    ComfyUI 0.28 and the pack import in process and such a machine lacks (PACKAGES below, at
#    the versions installed here), from their py3.12 manylinux wheels, installed and
#    xz-compressed (the wheels themselves, av's and comfy-kitchen's above all, exceed the
#    64 MiB). It prints what the device call will carry and fails above 64 MiB.
#
# 2. The device call (about 1 minute to start, 3 to 5 to run; under 8 in all):
#
#      command:   bash benchmarks/gpu_check.sh
#      carry:     [".gpu"]
#      timeout_s: 540
#
#    It unpacks both archives under /tmp/gpu-check, generates the random UNets and LoRA there
#    (COMFYUI_AMDM_CACHE), checks that ComfyUI and the pack import, and runs the benchmark.
#
# Test the steps on a CPU first (with Python 3.12 and torch, as on the GPU machine):
#
#      PYTHON=python3.12 bash benchmarks/gpu_check.sh --dry-run
#
#    the same, with `--device cpu --steps 1 --window 1 --repeats 1 --rows distinct` (the
#    smallest run; SD1.5-size UNets are generated in ${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}).
set -euo pipefail

# What ComfyUI 0.28 with the pack imports in process (no server, no comfy_extras: the benchmark
# runs core and pack nodes only) that the GPU machine's Python lacks.
PACKAGES=(av comfy-kitchen comfy-aimdo torchsde trampoline)
WHEEL_PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
                 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64
                 manylinux1_x86_64)
CARRY_LIMIT_BYTES=$((64 * 1024 * 1024))
BENCHMARK=(--steps 20 --window 8 --repeats 2)
DRY_RUN_BENCHMARK=(--steps 1 --window 1 --repeats 1 --rows distinct)
BENCHMARK_TIMEOUT_S=450

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carried="$repo_root/.gpu"
python="${PYTHON:-python3}"
log() { echo "gpu_check: $*"; }
fail() { echo "gpu_check: $*" >&2; exit 1; }
cd "$repo_root"

# shellcheck source=scripts/comfyui_releases.sh
source "$repo_root/scripts/comfyui_releases.sh"
read -r comfy_version _commit comfy_dir _variable _urls < <(comfyui_releases | tail -n 1)
comfy_archive="$carried/ComfyUI-$comfy_version.tar.xz"
site_archive="$carried/site-py312.tar.xz"

prepare() {
    [[ -f "$comfy_dir/comfyui_version.py" ]] || fail "ComfyUI $comfy_version is not at $comfy_dir: run bash scripts/setup.sh"
    local scratch platform_options=() pins=() name version
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' RETURN
    mkdir -p "$carried"
    log "packing ComfyUI $comfy_version from $comfy_dir into $comfy_archive"
    tar -C "$(dirname "$comfy_dir")" -cf - \
        --exclude=.git --exclude=.github --exclude=.ci --exclude=tests --exclude=tests-unit \
        --exclude=blueprints --exclude=comfy_api_nodes --exclude=__pycache__ \
        --exclude="$(basename "$comfy_dir")/models" --exclude="$(basename "$comfy_dir")/input" \
        --exclude="$(basename "$comfy_dir")/output" --exclude="$(basename "$comfy_dir")/user" \
        --exclude="$(basename "$comfy_dir")/custom_nodes" \
        --transform="s|^$(basename "$comfy_dir")|ComfyUI-$comfy_version|" "$(basename "$comfy_dir")" \
        | xz -8 -T1 > "$comfy_archive"
    for name in "${PACKAGES[@]}"; do
        version="$("$python" -c 'import sys; from importlib import metadata; print(metadata.version(sys.argv[1]))' "$name")" \
            || fail "$name is not installed here: run bash scripts/setup.sh"
        pins+=("$name==$version")
    done
    for platform in "${WHEEL_PLATFORMS[@]}"; do platform_options+=(--platform "$platform"); done
    log "downloading the py3.12 wheels of ${pins[*]}"
    "$python" -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${platform_options[@]}" -d "$scratch/wheels" "${pins[@]}"
    "$python" -m pip install --disable-pip-version-check --quiet --no-deps --no-index --no-compile \
        --only-binary=:all: --python-version 3.12 --implementation cp "${platform_options[@]}" \
        --target "$scratch/site" "$scratch"/wheels/*.whl
    log "compressing them into $site_archive (xz -8: a few minutes)"
    tar -C "$scratch/site" -cf - . | xz -8 -T1 > "$site_archive"
    local tree_bytes carried_bytes
    tree_bytes="$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)"
    carried_bytes="$(du -cb "$comfy_archive" "$site_archive" | tail -n 1 | cut -f1)"
    log "$(du -h "$comfy_archive" | cut -f1) ComfyUI, $(du -h "$site_archive" | cut -f1) packages; with the working tree" \
        "$(( (tree_bytes + carried_bytes) / 1024 / 1024 )) MiB of the 64 MiB a device call carries"
    (( tree_bytes + carried_bytes <= CARRY_LIMIT_BYTES )) || fail "that is over 64 MiB"
}

run() {  # DEVICE WORK_DIR BENCHMARK_ARGUMENTS...
    local device="$1" work="$2"
    shift 2
    [[ -f "$comfy_archive" && -f "$site_archive" ]] || fail "$comfy_archive or $site_archive is missing: run bash benchmarks/gpu_check.sh --prepare here first, and carry .gpu"
    rm -rf "$work/ComfyUI-$comfy_version" "$work/site"
    mkdir -p "$work/site"
    tar -xJf "$comfy_archive" -C "$work"
    tar -xJf "$site_archive" -C "$work/site"
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$work/ComfyUI-$comfy_version" \
        PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    log "unpacked ComfyUI $comfy_version and ${#PACKAGES[@]} packages under $work; COMFYUI_AMDM_CACHE=${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}"
    if [[ "$device" == "cuda" ]]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    "$python" - "$device" <<'EOF'
import sys

import torch

from benchmarks.comfy_setup import comfy_env, setup_comfy

setup_comfy("gpu" if sys.argv[1] == "cuda" else "cpu")
import comfy.model_management
import comfy.model_patcher
import comfyui_version

device = comfy.model_management.get_torch_device()
print(f"gpu_check: ComfyUI {comfyui_version.__version__} at {comfy_env().find_comfyui()}, Python "
      f"{sys.version.split()[0]}, torch {torch.__version__}, device {comfy.model_management.get_torch_device_name(device)}, "
      f"model patcher {comfy.model_patcher.CoreModelPatcher.__name__}", flush=True)
EOF
    timeout "$BENCHMARK_TIMEOUT_S" "$python" -m benchmarks.shared_checkpoints --device "$device" "$@"
}

case "${1:-}" in
    --prepare)
        prepare ;;
    --dry-run)
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        run cpu "$work" "${DRY_RUN_BENCHMARK[@]}" ;;
    "")
        export COMFYUI_AMDM_CACHE="${COMFYUI_AMDM_CACHE:-/tmp/gpu-check/cache}"
        run cuda /tmp/gpu-check "${BENCHMARK[@]}" ;;
    *)
        sed -n '2,42p' "$0"; exit 2 ;;
esac
