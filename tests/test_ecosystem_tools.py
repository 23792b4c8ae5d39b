"""The ComfyUI ecosystem's own checks pass, offline: comfy-cli's ``comfy node validate`` (what
the registry checks before publishing: pyproject.toml's fields, ``requires-comfyui`` in the
major.minor.patch form, ruff's exec/eval rules), comfy-test's ``comfy-test lint`` (syntax,
and the frontend rules that keep packs from colliding in the shared page: extension names under
the pack's DisplayName namespace, no globals) and comfy-lint on every API workflow against the
real server's /object_info (node types, required inputs, combo values, links and their types).

``scripts/setup.sh --tests`` installs the three tools beside this Python. They run with a
private HOME and every proxy variable pointing at a closed port, so that a tool that reached
for the network would fail here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.comfy_env import REPO_ROOT
from test_workflows import provide_input_images

API_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "api").glob("*.json"))
PACK_NODE_TYPES = {"ModelStack", "AggregationSchedule", "AMDMGuider", "AMDMSampler"}
CLOSED_PORT = "http://127.0.0.1:9"


def run_tool(name: str, *arguments: str, home: Path) -> subprocess.CompletedProcess:
    executable = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert executable, f"{name} is not installed: run `bash scripts/setup.sh --tests`"
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.update(HOME=str(home), RUFF_CACHE_DIR=str(home / "ruff"), NO_COLOR="1",
               **{variable: CLOSED_PORT for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                         "https_proxy", "ALL_PROXY")})
    return subprocess.run([executable, *arguments], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_accepts_the_pack(tmp_path: Path) -> None:
    result = run_tool("comfy", "--skip-prompt", "--no-enable-telemetry", "node", "validate", home=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "Warning" not in output and "Security warnings" not in output, output


def test_comfy_test_lint_passes(tmp_path: Path) -> None:
    result = run_tool("comfy-test", "lint", str(REPO_ROOT), home=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[SYNTAX] PASSED" in output and "[JAVASCRIPT] PASSED" in output, output
    assert "[WARN" not in output, output


@pytest.fixture(scope="module")
def object_info_file(family_server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real server's /object_info, with the tiny family files in its model lists and the
    examples' input images in its input folder."""
    for workflow in API_WORKFLOWS:
        provide_input_images(family_server.url, json.loads(workflow.read_text(encoding="utf-8")))
    path = tmp_path_factory.mktemp("comfy_lint") / "object_info.json"
    path.write_text(json.dumps(family_server.object_info(refresh=True)), encoding="utf-8")
    return path


def test_comfy_lint_finds_nothing_in_the_api_workflows(object_info_file: Path, tmp_path: Path) -> None:
    """Every node's inputs, links and types are as the server declares them. The only finding
    allowed is a model file the test server does not have (the large text encoders) on a
    loader of ComfyUI's own; on the pack's nodes nothing at all."""
    result = run_tool("comfy-lint", "--json", "--strict", "--schema-cache", str(object_info_file),
                      *map(str, API_WORKFLOWS), home=tmp_path)
    report = json.loads(result.stdout)
    assert report["summary"]["files"] == len(API_WORKFLOWS) and not report["unreadable"], report
    findings = [dict(diagnostic, path=file["path"]) for file in report["files"]
                for diagnostic in file["diagnostics"]]
    assert [finding for finding in findings if finding["class_type"] in PACK_NODE_TYPES] == []

    def names_a_missing_model_file(finding: dict) -> bool:
        workflow = json.loads((REPO_ROOT / finding["path"]).read_text(encoding="utf-8"))
        value = workflow[str(finding["node_id"])]["inputs"].get(finding["field"])
        return finding["rule"] == "invalid-enum" and str(value).endswith(".safetensors")

    assert [finding for finding in findings if not names_a_missing_model_file(finding)] == []
