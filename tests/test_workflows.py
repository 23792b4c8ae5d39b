"""The shipped example workflows: each API file runs on the real server, and each UI file is
the same graph as its API twin.

The shipped files use real-world sizes (512x512, 20-30 steps); the runs here use small
variants derived from them (64x64 images, 4 steps), so that the CPU runs take seconds.
"""
from __future__ import annotations

import copy
import io
import json
import math
import mimetypes
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from support.comfy_env import find_comfyui

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
WORKFLOW_NAMES = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))

# Nodes that exist only in the frontend and never reach /prompt.
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# The small variants: pixel geometry shrinks 8x (512 -> 64, so latents are 8x8).
SMALL_STEPS = 4
GEOMETRY_SCALE = 8
SMALL_IMAGE_SIZE = 512 // GEOMETRY_SCALE


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api_workflow(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


def small_value(input_name: str, value: Any) -> Any:
    """The small-run value of one widget input; unchanged if the input is not a size knob."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if input_name == "steps":
        return SMALL_STEPS
    if input_name == "batch_size":
        return 1
    if input_name in ("width", "height"):
        return max(8, round(value / GEOMETRY_SCALE / 8) * 8)
    if input_name in ("x", "y"):
        return round(value / GEOMETRY_SCALE / 8) * 8
    return value


def small_variant(api_prompt: dict) -> dict:
    """An API prompt with every size knob (steps, image and box geometry, batch) shrunk."""
    prompt = copy.deepcopy(api_prompt)
    for node in prompt.values():
        for input_name, value in node["inputs"].items():
            if not isinstance(value, list):
                node["inputs"][input_name] = small_value(input_name, value)
    return prompt


def input_images(api_prompt: dict) -> set[str]:
    return {node["inputs"]["image"] for node in api_prompt.values() if node["class_type"] == "LoadImage"}


def _widget_kind(spec: list) -> str | None:
    """'COMBO', 'INT', ... for an input shown as a widget; None for a socket-only input."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return None
    if isinstance(kind, list):
        return "COMBO"
    return kind if kind in WIDGET_TYPES else None


def _has_control_widget(name: str, kind: str, options: dict) -> bool:
    """Whether the frontend adds a 'control after generate' widget after this one."""
    if kind == "INT":
        return bool(options.get("control_after_generate", name in ("seed", "noise_seed")))
    return kind == "COMBO" and bool(options.get("control_after_generate", False))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow to API form using the server's input definitions.

    widgets_values are matched, in order, to the inputs that are widgets (a control-after-
    generate value follows its seed and is skipped); links fill the inputs they connect.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY_TYPES:
            continue
        assert node.get("mode", 0) == 0, f"node {node['id']} ({node_type}) is muted or bypassed"
        assert node_type in object_info, f"node {node['id']}: the server has no node type {node_type!r}"
        definition = object_info[node_type]["input"]
        specs = [*definition.get("required", {}).items(), *definition.get("optional", {}).items()]
        values: Iterator = iter(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        uploads = False
        for name, spec in specs:
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            uploads = uploads or any(key.endswith("_upload") for key in options)
            kind = _widget_kind(spec)
            if kind is None:
                continue
            try:
                inputs[name] = next(values)
                if _has_control_widget(name, kind, options):
                    next(values)
            except StopIteration:
                raise AssertionError(f"node {node['id']} ({node_type}): too few widgets_values "
                                     f"for widget {name!r}") from None
        leftover = list(values)
        # An upload button (LoadImage) stores its own value after the widgets it serves.
        assert not leftover or (uploads and len(leftover) == 1), \
            f"node {node['id']} ({node_type}): unused widgets_values {leftover}"
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs}
    return prompt


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def graph_differences(converted: dict, api_prompt: dict) -> list[str]:
    """Human-readable differences between two API prompts (class types, inputs, links)."""
    problems = []
    for node_id in sorted(set(converted) | set(api_prompt), key=int):
        if node_id not in api_prompt:
            problems.append(f"node {node_id} is only in the UI workflow")
            continue
        if node_id not in converted:
            problems.append(f"node {node_id} is only in the API workflow")
            continue
        ui_node, api_node = converted[node_id], api_prompt[node_id]
        if ui_node["class_type"] != api_node["class_type"]:
            problems.append(f"node {node_id}: {ui_node['class_type']} vs {api_node['class_type']}")
            continue
        for name in sorted(set(ui_node["inputs"]) | set(api_node["inputs"])):
            ui_value = ui_node["inputs"].get(name, "<missing>")
            api_value = api_node["inputs"].get(name, "<missing>")
            if not _same_value(ui_value, api_value):
                problems.append(f"node {node_id} ({ui_node['class_type']}).{name}: "
                                f"UI {ui_value!r} vs API {api_value!r}")
    return problems


def upload_input_image(server_url: str, path: Path) -> dict:
    """Put an image into the server's input folder through ComfyUI's /upload/image route."""
    boundary = uuid.uuid4().hex
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = io.BytesIO()
    body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
               f"filename=\"{path.name}\"\r\nContent-Type: {content_type}\r\n\r\n".encode())
    body.write(path.read_bytes())
    body.write(f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\n"
               f"true\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{server_url}/upload/image", data=body.getvalue(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def provide_input_images(server_url: str, api_prompt: dict) -> None:
    """Upload the images a workflow's LoadImage nodes name, from ComfyUI's own input folder."""
    for image_name in input_images(api_prompt):
        source = find_comfyui() / "input" / image_name
        assert source.is_file(), f"{image_name} is not in ComfyUI's input folder ({source})"
        upload_input_image(server_url, source)


def saved_images(history_entry: dict) -> list[dict]:
    return [image for output in history_entry["outputs"].values() for image in output.get("images", [])]


def test_every_example_has_both_forms() -> None:
    assert len(WORKFLOW_NAMES) >= 4
    api_names = sorted(path.stem for path in API_DIR.glob("*.json"))
    assert api_names == WORKFLOW_NAMES


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_examples_use_real_world_sizes(name: str) -> None:
    """The shipped files are for real use; only the test runs shrink them."""
    prompt = load_api_workflow(name)
    latents = [node["inputs"] for node in prompt.values() if node["class_type"] in ("EmptyLatentImage", "ImageScale")]
    assert latents and all(inputs["width"] >= 512 and inputs["height"] >= 512 for inputs in latents)
    steps = [node["inputs"]["steps"] for node in prompt.values() if "steps" in node["inputs"]]
    assert steps and all(20 <= s <= 30 for s in steps)


def test_template_listing_shows_only_ui_workflows(comfy_server) -> None:
    with urllib.request.urlopen(f"{comfy_server.url}/workflow_templates", timeout=30) as response:
        templates = json.load(response)
    packs = [pack for pack, names in templates.items() if WORKFLOW_NAMES[0] in names]
    assert len(packs) == 1, templates
    listed = templates[packs[0]]
    # API twins share their UI file's name: a listing that included them would repeat names.
    assert sorted(listed) == WORKFLOW_NAMES
    base = f"{comfy_server.url}/api/workflow_templates/{urllib.request.quote(packs[0])}"
    for name in WORKFLOW_NAMES:
        with urllib.request.urlopen(f"{base}/{name}.json", timeout=30) as response:
            assert json.load(response) == load_ui_workflow(name)
        # The template browser shows <name>.jpg as the card's picture.
        with urllib.request.urlopen(f"{base}/{name}.jpg", timeout=30) as response:
            with Image.open(io.BytesIO(response.read())) as thumbnail:
                assert thumbnail.format == "JPEG" and thumbnail.width >= 300


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_is_its_api_twin(comfy_server, name: str) -> None:
    converted = ui_to_api(load_ui_workflow(name), comfy_server.object_info())
    assert graph_differences(converted, load_api_workflow(name)) == []


def test_comparison_sees_a_changed_widget_and_a_moved_link(comfy_server) -> None:
    """The UI/API comparison is only worth something if it notices edits."""
    name = WORKFLOW_NAMES[0]
    object_info = comfy_server.object_info()
    edited = load_ui_workflow(name)
    schedule = next(node for node in edited["nodes"] if node["type"] == "AggregationSchedule")
    schedule["widgets_values"][1] = 0.9
    link = next(link for link in edited["links"] if link[5] == "AMDM_SCHEDULE")
    link[2] = 1
    problems = graph_differences(ui_to_api(edited, object_info), load_api_workflow(name))
    assert any(".end_percent" in problem for problem in problems)
    assert any(".schedule" in problem for problem in problems)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_runs(comfy_server, name: str) -> None:
    prompt = small_variant(load_api_workflow(name))
    assert any(node["class_type"] in ("AMDMSampler", "AMDMGuider") for node in prompt.values())
    provide_input_images(comfy_server.url, prompt)

    entry = comfy_server.wait(comfy_server.queue(prompt), timeout=900)

    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    images = saved_images(entry)
    assert len(images) == 1
    path = Path(comfy_server.output_dir) / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file()
    with Image.open(path) as image:
        assert image.size == (SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE)
