#!/usr/bin/env bash
# The whole test suite on every ComfyUI release of scripts/comfyui-releases.txt, after
# `bash scripts/setup.sh --browser` (or --tests, without the browser tests):
#
#   bash scripts/test.sh [pytest arguments, given to every run: -x, -k ..., --durations=20]
#
# 1. the core tests (tests/core/, plain torch) once, with COMFYUI_PATH naming no ComfyUI, so
#    that they prove to need none;
# 2. everything else once per release, with COMFYUI_PATH set to it (where scripts/setup.sh put
#    it). The browser tests drive each release's pinned frontend (1.27.10 on 0.3.64, 1.45.21 on
#    0.28.0) and, on the newest release only, the current one (1.58.1, classic canvas and
#    Nodes 2.0): a frontend configuration runs once, on the newest server it pairs with, which
#    saves the current frontend's second server and half the browser time on the older release
#    (AMDM_FRONTENDS=pinned there, see tests/conftest.py).
#
# The releases' runs go side by side (one run keeps about one core busy: it waits on servers
# and browsers, and the tiny test models' ops gain little from a second thread; on a 2-core
# machine both ended within 21 minutes so in .ci/run), each with its own artifacts folder,
# test-artifacts/<run>/, where its output goes (pytest.log, printed when both have ended),
# its servers' logs and screenshots. OMP_WAIT_POLICY=PASSIVE keeps torch's idle threads from
# spinning on cores the other run needs; it changes no result.
#
# Every run runs; the script ends with one line per run and the totals, and exits non-zero if
# any run failed. JUnit reports land in test-artifacts/junit-<run>.xml.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
artifacts="$repo_root/test-artifacts"
mkdir -p "$artifacts"
cd "$repo_root" || exit 1
# shellcheck source=scripts/comfyui_releases.sh
source "$repo_root/scripts/comfyui_releases.sh"

runs=()
status=0
run_pytest() {  # NAME COMFYUI_PATH PYTEST_ARGUMENTS...
    local name="$1" comfy_path="$2"
    shift 2
    echo "test.sh: $name: COMFYUI_PATH=$comfy_path AMDM_FRONTENDS=${AMDM_FRONTENDS:-} $python -m pytest $*"
    COMFYUI_PATH="$comfy_path" AMDM_TEST_ARTIFACTS="$artifacts/$name" \
        "$python" -m pytest --junitxml="$artifacts/junit-$name.xml" "$@"
}

run_pytest core "$repo_root/tests/core/no-comfyui-here" -q tests/core "$@" || status=1
runs+=(core)
newest="$(comfyui_releases | tail -n 1 | cut -d' ' -f1)"
pids=()
while read -r version _commit dir _variable _urls <&3; do
    if [[ "$version" == "$newest" ]]; then frontends="pinned,current"; else frontends="pinned"; fi
    name="comfyui-$version"
    mkdir -p "$artifacts/$name"
    AMDM_FRONTENDS="$frontends" OMP_WAIT_POLICY=PASSIVE \
        run_pytest "$name" "$dir" -q --ignore=tests/core "$@" > "$artifacts/$name/pytest.log" 2>&1 &
    pids+=($!)
    runs+=("$name")
    echo "test.sh: $name started (output: test-artifacts/$name/pytest.log)"
done 3< <(comfyui_releases)
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
    name="${runs[$((i + 1))]}"
    echo "test.sh: ===== $name ====="
    cat "$artifacts/$name/pytest.log"
done

"$python" - "$artifacts" "${runs[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

artifacts, runs = Path(sys.argv[1]), sys.argv[2:]
totals = {"passed": 0, "failed": 0, "skipped": 0}
for run in runs:
    report = artifacts / f"junit-{run}.xml"
    if not report.is_file():
        print(f"test.sh: {run}: no report (pytest did not start)")
        totals["failed"] += 1
        continue
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for suite in ElementTree.parse(report).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += float(suite.get(key, 0))
    run_totals = {"passed": int(counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]),
                  "failed": int(counts["failures"] + counts["errors"]), "skipped": int(counts["skipped"])}
    for key, value in run_totals.items():
        totals[key] += value
    print(f"test.sh: {run}: {run_totals['passed']} passed, {run_totals['failed']} failed or errors, "
          f"{run_totals['skipped']} skipped in {counts['time'] / 60:.1f} min")
print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
EOF
exit $status
