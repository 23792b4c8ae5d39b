"""The shipped example workflows: each API file runs on tiny models of its family, and each UI
file is the same graph as its API twin.

The shipped files use real-world sizes (512x512 to 1024x1024, 20-30 steps); the runs here use
small variants derived from them (at most 64 pixels a side, 4 steps, 5 video frames), so that
the CPU runs take seconds.

Where ComfyUI's stock loaders accept the tiny files (SD1.5 fixtures, SD3.5, Wan; Flux on
releases after 0.3.64) a workflow runs through ``/prompt`` on the real server; the others
(SDXL, which ComfyUI detects only at full size; Flux on 0.3.64) run in process with the loader
nodes replaced. Which is which is found by loading the files
(``family_models.stock_loader_accepts``). Text encoders that cannot
be made small (CLIP-G, T5-XXL, UMT5-XXL) are replaced by the CLIP-L stand-in of
``support.family_models``.
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
from typing import Any, Callable, Iterator, Optional

import pytest
import torch
from PIL import Image

from support import family_models
from support.comfy_env import find_comfyui, run_node

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
WORKFLOW_NAMES = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))

# Nodes that exist only in the frontend and never reach /prompt.
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# The small variants: pixel geometry shrinks so that the longest side is 64 (512 -> 64 for
# SD1.5, so latents are 8x8), in multiples of 16 (the flow models' 2x2 patches of 8x latents).
SMALL_STEPS = 4
SMALL_SIDE = 64
GEOMETRY_SCALE = 512 // SMALL_SIDE
SMALL_VIDEO_LENGTH = 5  # frames: two Wan latent frames
LATENT_SIZE_NODES = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "ImageScale")
TEXT_ENCODER_LOADERS = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader")


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api_workflow(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


def small_value(input_name: str, value: Any, scale: float = GEOMETRY_SCALE) -> Any:
    """The small-run value of one widget input; unchanged if the input is not a size knob.
    ``scale``: how many times smaller the pixel geometry gets."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if input_name == "steps":
        return SMALL_STEPS
    if input_name == "batch_size":
        return 1
    if input_name == "length":
        return SMALL_VIDEO_LENGTH
    if input_name in ("width", "height"):
        return max(16, round(value / scale / 16) * 16)
    if input_name in ("x", "y"):
        return round(value / scale / 8) * 8
    return value


def latent_sizes(api_prompt: dict) -> list[tuple[int, int]]:
    """(width, height) of every node that sets the size of the latent."""
    return [(node["inputs"]["width"], node["inputs"]["height"]) for node in api_prompt.values()
            if node["class_type"] in LATENT_SIZE_NODES]


def small_variant(api_prompt: dict, keep_steps: bool = False) -> dict:
    """An API prompt with every size knob (steps unless ``keep_steps``, image and box geometry,
    batch, frames) shrunk."""
    prompt = copy.deepcopy(api_prompt)
    scale = max(max(size) for size in latent_sizes(api_prompt)) / SMALL_SIDE
    for node in prompt.values():
        for input_name, value in node["inputs"].items():
            if not isinstance(value, list) and not (keep_steps and input_name == "steps"):
                node["inputs"][input_name] = small_value(input_name, value, scale)
    return prompt


def model_names(api_prompt: dict) -> list[str]:
    """The diffusion-model files the prompt's loader nodes name."""
    return [node["inputs"][key] for node in api_prompt.values()
            for key in ("ckpt_name", "unet_name") if key in node["inputs"]]


def runs_on_the_server(api_prompt: dict) -> bool:
    """Whether ComfyUI's stock loaders accept the tiny stand-ins of every model the prompt names."""
    return all(name not in family_models.MODELS or family_models.stock_loader_accepts(name)
               for name in model_names(api_prompt))


def with_text_encoder_stand_in(api_prompt: dict) -> dict:
    """Every text-encoder loader replaced by CLIPLoader on the CLIP-L stand-in, type sd3 (the
    context and pooled shapes of SD3, Flux and Wan)."""
    prompt = copy.deepcopy(api_prompt)
    for node in prompt.values():
        if node["class_type"] in TEXT_ENCODER_LOADERS:
            node["class_type"] = "CLIPLoader"
            node["inputs"] = {"clip_name": family_models.CLIP_L_NAME, "type": "sd3", "device": "default"}
    return prompt


def run_in_process(api_prompt: dict, replaced: dict[str, Callable[..., tuple]],
                   outputs_of: Optional[list[str]] = None) -> dict[str, tuple]:
    """Execute an API prompt node by node in this process; a node whose class_type is in
    ``replaced`` gets that function's outputs instead of running. Runs the nodes that
    ``outputs_of`` (default: every node) need; returns the outputs of every node that ran."""
    outputs: dict[str, tuple] = {}

    def evaluate(node_id: str) -> tuple:
        if node_id not in outputs:
            node = api_prompt[node_id]
            inputs = {name: evaluate(value[0])[value[1]] if isinstance(value, list) else value
                      for name, value in node["inputs"].items()}
            run = replaced.get(node["class_type"])
            outputs[node_id] = run(**inputs) if run else run_node(node["class_type"], **inputs)
        return outputs[node_id]

    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        for node_id in api_prompt if outputs_of is None else outputs_of:
            evaluate(node_id)
    return outputs


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
    """The shipped files are for real use (512x512 and up, Wan's 832x480 video); only the test
    runs shrink them."""
    prompt = load_api_workflow(name)
    sizes = latent_sizes(prompt)
    assert sizes and all(min(size) >= 480 and size[0] * size[1] >= 512 * 512 for size in sizes)
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


SERVER_WORKFLOWS = [name for name in WORKFLOW_NAMES if runs_on_the_server(load_api_workflow(name))]
IN_PROCESS_WORKFLOWS = [name for name in WORKFLOW_NAMES if name not in SERVER_WORKFLOWS]


def test_every_family_example_runs_somewhere() -> None:
    """Only the families whose tiny files some ComfyUI detects only at full size leave the
    server; the split follows what this ComfyUI's loaders accept."""
    assert set(IN_PROCESS_WORKFLOWS) <= {"amdm_sdxl", "amdm_flux_dev_schnell"}
    assert {"amdm_two_members", "amdm_sd35_guider", "amdm_wan21_t2v"} <= set(SERVER_WORKFLOWS)


@pytest.mark.parametrize("name", SERVER_WORKFLOWS)
def test_api_workflow_runs(family_server, name: str) -> None:
    prompt = with_text_encoder_stand_in(small_variant(load_api_workflow(name)))
    assert any(node["class_type"] in ("AMDMSampler", "AMDMGuider") for node in prompt.values())
    provide_input_images(family_server.url, prompt)
    [(width, height)] = latent_sizes(prompt)

    entry = family_server.wait(family_server.queue(prompt), timeout=900)

    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    images = saved_images(entry)
    assert len(images) == 1
    path = Path(family_server.output_dir) / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file()
    with Image.open(path) as image:
        assert image.size == (width, height)
        videos = [node["inputs"]["length"] for node in prompt.values() if "length" in node["inputs"]]
        assert getattr(image, "n_frames", 1) == (videos[0] if videos else 1)


@pytest.fixture(scope="module")
def tiny_loaders(comfy, pack, load_checkpoint, load_family_model, family_clip) -> dict[str, Callable[..., tuple]]:
    """Loader nodes for in-process runs: every diffusion model becomes the tiny one of the same
    name (SD1.5 fixtures, family models), every text encoder the CLIP-L stand-in (type sd3; for
    SDXL checkpoints type stable_diffusion, the tiny SDXL's width), SDXL's VAE the SD1.5
    fixture's (the same architecture)."""
    def checkpoint(ckpt_name: str) -> tuple:
        if ckpt_name in family_models.MODELS:
            return (load_family_model(ckpt_name), family_clip("stable_diffusion"),
                    load_checkpoint(0).vae)
        return tuple(load_checkpoint(ckpt_name))

    return {
        "CheckpointLoaderSimple": checkpoint,
        "UNETLoader": lambda unet_name, weight_dtype: (load_family_model(unet_name),),
        **{loader: lambda **_: (family_clip("sd3"),) for loader in TEXT_ENCODER_LOADERS},
    }


@pytest.mark.parametrize("name", IN_PROCESS_WORKFLOWS)
def test_api_workflow_runs_in_process_with_tiny_loaders(comfy, tiny_loaders, name: str) -> None:
    """The whole graph runs as shipped (small sizes) except its loader nodes."""
    prompt = small_variant(load_api_workflow(name))
    [(width, height)] = latent_sizes(prompt)
    saved_before = set(Path(comfy.output_dir).rglob("*.png"))

    outputs = run_in_process(prompt, tiny_loaders)

    [decoded] = [outputs[node_id][0] for node_id, node in prompt.items() if node["class_type"] == "VAEDecode"]
    assert decoded.shape == (1, height, width, 3)
    assert torch.isfinite(decoded).all()
    [saved] = set(Path(comfy.output_dir).rglob("*.png")) - saved_before
    with Image.open(saved) as image:
        assert image.size == (width, height)


# Sampler steps of each member at the example's shipped settings, in chain order: the target
# takes every step, the others the window's. The README and the examples' notes quote them.
EXAMPLE_STEPS = {
    "amdm_two_members": [25, 10],
    "amdm_sdxl": [25, 10],
    "amdm_flux_dev_schnell": [20, 6],
    "amdm_sd35_guider": [28, 12],
    "amdm_wan21_t2v": [30, 11],
}


@pytest.mark.parametrize("name", list(EXAMPLE_STEPS))
def test_example_costs_the_steps_its_notes_say(tiny_loaders, name: str) -> None:
    """Each member's model is watched (ComfyUI's unet function wrapper) where it enters its
    ModelStack; the shipped steps run on small latents up to the sampler."""
    prompt = small_variant(load_api_workflow(name), keep_steps=True)
    sigmas: list[list[float]] = []

    def watched_member(model: Any, **inputs: Any) -> tuple:
        seen: list[float] = []
        watched = model.clone()

        def wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
            seen.append(float(args["timestep"][0]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        watched.set_model_unet_function_wrapper(wrapper)
        sigmas.append(seen)
        return run_node("ModelStack", model=watched, **inputs)

    samplers = [node_id for node_id, node in prompt.items()
                if node["class_type"] in ("AMDMSampler", "SamplerCustomAdvanced")]
    run_in_process(prompt, {**tiny_loaders, "ModelStack": watched_member}, outputs_of=samplers)

    # A step evaluates its positive and negative prompt at one sigma, in one call or two.
    steps = [sum(1 for i, t in enumerate(seen) if i == 0 or t != seen[i - 1]) for seen in sigmas]
    assert steps == EXAMPLE_STEPS[name]
