# Sourced by scripts/setup.sh, scripts/test.sh and benchmarks/gpu_check.sh.
#
# comfyui_releases: one line per release of scripts/comfyui-releases.txt, lowest first:
#   VERSION COMMIT DIR VARIABLE URL...
# DIR is where the release is taken from: $VARIABLE (COMFYUI_PATH_<version, dots as
# underscores>) when set, else ${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/ComfyUI for the
# lowest release (where plain `python3 -m pytest` finds it) and .../ComfyUI-<version> for the
# others. DIR may not exist yet: scripts/setup.sh clones it there.
comfyui_releases() {
    local root cache version commit urls variable dir lowest=1
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cache="${COMFYUI_AMDM_CACHE:-$HOME/.cache/comfyui-amdm}"
    while read -r version commit urls; do
        variable="COMFYUI_PATH_${version//./_}"
        if [[ $lowest -eq 1 ]]; then dir="$cache/ComfyUI"; else dir="$cache/ComfyUI-$version"; fi
        lowest=0
        echo "$version $commit ${!variable:-$dir} $variable $urls"
    done < <(grep -Ev '^[[:space:]]*(#|$)' "$root/scripts/comfyui-releases.txt")
}
