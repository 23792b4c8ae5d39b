"""The shipped example workflows: each API file runs on tiny models of its family, and each UI
file is the same graph as its API twin.

The shipped files use real-world sizes (512x512 to 1024x1024, 20-30 steps, 8 for a distilled
LoRA); the runs here use small variants derived from them (at most 64 pixels a side, 4 steps, 5
video frames), so that the CPU runs take seconds.

Where ComfyUI's stock loaders accept the tiny files (SD1.5 fixtures, SD3.5, Wan; Flux on
releases after 0.3.64) a workflow runs through ``/prompt`` on the real server; the others
(SDXL, which ComfyUI detects only at full size; Flux on 0.3.64) run in process with the loader
nodes replaced. Which is which is found by loading the files
(``family_models.stock_loader_accepts``). Text encoders that cannot
be made small (CLIP-G, T5-XXL, UMT5-XXL) are replaced by the CLIP-L stand-in of
``support.family_models``, and every LoRA by the SD1.5 fixture LoRA.
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

from support import family_models, fixture_models
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
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
# Examples with a distillation LoRA sample in few steps, as their LoRA is made to.
FEW_STEP_EXAMPLES = {"amdm_sd15_hyper_stages": 8}
WAN22 = "amdm_wan22_t2v_experts"
# The Wan 2.2 example with the overlap its notes describe: a soft handoff.
SOFT_HANDOFF = {"AMDMExpertBoundary": {"overlap": 0.1}}


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


def has_step_ranges(api_prompt: dict) -> bool:
    """Whether a member's range counts steps (start_step / end_step), which are for the
    shipped step count."""
    return any(node["class_type"] == "ModelStack" and
               any(node["inputs"].get(key, 0) != 0 for key in ("start_step", "end_step"))
               for node in api_prompt.values())


def small_variant(api_prompt: dict, keep_steps: bool = False) -> dict:
    """An API prompt with every size knob (steps unless ``keep_steps`` or members' ranges count
    steps, image and box geometry, batch, frames) shrunk."""
    prompt = copy.deepcopy(api_prompt)
    scale = max(max(size) for size in latent_sizes(api_prompt)) / SMALL_SIDE
    keep_steps = keep_steps or has_step_ranges(api_prompt)
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


def with_inputs(api_prompt: dict, changes: dict[str, dict[str, Any]]) -> dict:
    """An API prompt with the inputs ``changes`` names set on every node of each class type."""
    prompt = copy.deepcopy(api_prompt)
    for class_type, inputs in changes.items():
        nodes = [node for node in prompt.values() if node["class_type"] == class_type]
        assert nodes, f"the prompt has no {class_type} node"
        for node in nodes:
            node["inputs"].update(inputs)
    return prompt


def with_fixture_lora(api_prompt: dict) -> dict:
    """Every LoRA loader on the SD1.5 fixture LoRA, the one LoRA the test models have."""
    prompt = copy.deepcopy(api_prompt)
    for node in prompt.values():
        if node["class_type"] in LORA_LOADERS:
            node["inputs"]["lora_name"] = fixture_models.LORA_NAME
    return prompt


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
    if name in FEW_STEP_EXAMPLES:
        assert steps == [FEW_STEP_EXAMPLES[name]]
    else:
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
    assert set(IN_PROCESS_WORKFLOWS) <= {"amdm_sdxl", "amdm_sdxl_refiner", "amdm_flux_dev_schnell"}
    assert {"amdm_two_members", "amdm_sd35_guider", "amdm_wan21_t2v", WAN22, "amdm_sd15_hyper_stages"} \
        <= set(SERVER_WORKFLOWS)


# Each example as shipped, and the Wan 2.2 one with an overlap too.
SERVER_RUNS = [pytest.param(name, {}, id=name) for name in SERVER_WORKFLOWS] + \
    [pytest.param(WAN22, SOFT_HANDOFF, id=f"{WAN22}-overlap")]


@pytest.mark.parametrize("name, changes", SERVER_RUNS)
def test_api_workflow_runs(family_server, name: str, changes: dict) -> None:
    prompt = with_inputs(load_api_workflow(name), changes)
    prompt = with_fixture_lora(with_text_encoder_stand_in(small_variant(prompt)))
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
    fixture's (the same architecture), every LoRA the fixture LoRA."""
    def checkpoint(ckpt_name: str) -> tuple:
        if ckpt_name in family_models.MODELS:
            return (load_family_model(ckpt_name), family_clip("stable_diffusion"),
                    load_checkpoint(0).vae)
        return tuple(load_checkpoint(ckpt_name))

    return {
        "CheckpointLoaderSimple": checkpoint,
        "UNETLoader": lambda unet_name, weight_dtype: (load_family_model(unet_name),),
        **{loader: lambda **_: (family_clip("sd3"),) for loader in TEXT_ENCODER_LOADERS},
        **{loader: lambda loader=loader, **inputs: run_node(loader, **{**inputs, "lora_name": fixture_models.LORA_NAME})
           for loader in LORA_LOADERS},
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
# takes every step, the others the window's; members with ranges of their own, their ranges'
# steps. The README and the examples' notes quote them.
EXAMPLE_STEPS = {
    "amdm_two_members": [25, 10],
    "amdm_sdxl": [25, 10],
    "amdm_flux_dev_schnell": [20, 6],
    "amdm_sd35_guider": [28, 12],
    "amdm_wan21_t2v": [30, 11],
    WAN22: [11, 9],
    "amdm_sd15_hyper_stages": [2, 2, 4],
    "amdm_sdxl_refiner": [20, 5],
}
COST_RUNS = [pytest.param(name, {}, steps, id=name) for name, steps in EXAMPLE_STEPS.items()] + \
    [pytest.param(WAN22, SOFT_HANDOFF, [12, 10], id=f"{WAN22}-overlap")]


def member_sigmas(prompt: dict, loaders: dict[str, Callable[..., tuple]]) -> list[list[float]]:
    """The sigmas of the steps each member evaluated, in chain order: each member's model is
    watched (ComfyUI's unet function wrapper) where it enters its ModelStack, and the prompt
    runs in process up to its sampler. A step evaluates its positive and negative prompt at
    one sigma, in one call or two."""
    seen: list[list[float]] = []

    def watched_member(model: Any, **inputs: Any) -> tuple:
        calls: list[float] = []
        watched = model.clone()

        def wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
            calls.append(float(args["timestep"][0]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        watched.set_model_unet_function_wrapper(wrapper)
        seen.append(calls)
        return run_node("ModelStack", model=watched, **inputs)

    samplers = [node_id for node_id, node in prompt.items()
                if node["class_type"] in ("AMDMSampler", "SamplerCustomAdvanced")]
    run_in_process(prompt, {**loaders, "ModelStack": watched_member}, outputs_of=samplers)
    return [[sigma for i, sigma in enumerate(calls) if i == 0 or sigma != calls[i - 1]] for calls in seen]


@pytest.mark.parametrize("name, changes, steps", COST_RUNS)
def test_example_costs_the_steps_its_notes_say(tiny_loaders, name: str, changes: dict, steps: list[int]) -> None:
    """The shipped steps run on small latents up to the sampler."""
    prompt = with_inputs(small_variant(load_api_workflow(name), keep_steps=True), changes)
    assert [len(sigmas) for sigmas in member_sigmas(prompt, tiny_loaders)] == steps


def node_ids(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def reference_switch_step(model: Any, scheduler: str, steps: int, boundary: float) -> int:
    """Where the Wan 2.2 reference hands over to the low-noise expert: the high-noise expert
    takes every step whose timestep t is at least ``boundary`` of the training timesteps
    (``t >= boundary * 1000``, its generate loop's test), on ComfyUI's sigmas of the shifted
    model; returns the first step that fails it."""
    sampling = model.get_model_object("model_sampling")
    sigmas = run_node("BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)[0]
    timesteps = sampling.timestep(sigmas[:-1]).tolist()
    largest = float(sampling.timestep(sampling.sigma_max))
    return next(k for k, t in enumerate(timesteps) if t < boundary * largest)


def test_wan22_example_is_the_ksampleradvanced_chain_bit_for_bit(tiny_loaders) -> None:
    """At overlap 0 the example samples exactly what the two-KSamplerAdvanced graph users wire
    for Wan 2.2 (high-noise expert from step 0 with the noise, low-noise expert from the
    switch step on the leftover noise), on the same tiny experts, at the shipped 20 steps."""
    prompt = small_variant(load_api_workflow(WAN22), keep_steps=True)
    [sampler_id] = node_ids(prompt, "AMDMSampler")
    amdm = run_in_process(prompt, tiny_loaders, outputs_of=[sampler_id])[sampler_id][0]["samples"]

    sampler = prompt[sampler_id]["inputs"]
    high, low = (prompt[node_id]["inputs"] for node_id in node_ids(prompt, "ModelStack"))
    outputs = run_in_process(prompt, tiny_loaders, outputs_of=[high["model"][0]])
    switch = reference_switch_step(outputs[high["model"][0]][0], sampler["scheduler"], sampler["steps"], 0.875)
    assert switch == EXAMPLE_STEPS[WAN22][0]
    chain = {node_id: node for node_id, node in prompt.items()
             if node["class_type"] not in ("ModelStack", "AggregationSchedule", "AMDMSampler", "AMDMExpertBoundary")}
    common = {key: sampler[key] for key in ("steps", "sampler_name", "scheduler")}
    for name, stack, first, last, noise, leftover, latent in (
            ("high", high, 0, switch, "enable", "enable", sampler["latent_image"]),
            ("low", low, switch, 10000, "disable", "disable", ["high", 0])):
        chain[name] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": stack["model"], "positive": stack["positive"], "negative": stack["negative"],
            "cfg": stack["cfg"], "add_noise": noise, "noise_seed": sampler["seed"], "latent_image": latent,
            "start_at_step": first, "end_at_step": last, "return_with_leftover_noise": leftover, **common}}
    reference = run_in_process(chain, tiny_loaders, outputs_of=["low"])["low"][0]["samples"]

    assert torch.equal(amdm, reference)


@pytest.mark.parametrize("preset, boundary, shift, steps", [
    ("Wan 2.2 T2V (0.875)", 0.875, 8.0, 20),
    ("Wan 2.2 T2V (0.875)", 0.875, 12.0, 30),
    ("Wan 2.2 T2V (0.875)", 0.875, 5.0, 8),
    ("Wan 2.2 I2V (0.9)", 0.9, 5.0, 20),
    ("Wan 2.2 I2V (0.9)", 0.9, 8.0, 30),
    ("Wan 2.2 I2V (0.9)", 0.9, 12.0, 8),
])
def test_expert_boundary_switches_where_the_wan22_reference_does(tiny_loaders, preset: str, boundary: float,
                                                                 shift: float, steps: int) -> None:
    """With the boundary node's percents on the experts' ranges, the high-noise expert
    evaluates exactly the steps whose sigma is at or above the preset's boundary on the
    shifted schedule (a flow model's timestep is sigma x 1000), the low-noise expert the
    others."""
    prompt = with_inputs(small_variant(load_api_workflow(WAN22), keep_steps=True), {
        "ModelSamplingSD3": {"shift": shift}, "AMDMSampler": {"steps": steps},
        "AMDMExpertBoundary": {"preset": preset}})
    [sampler_id] = node_ids(prompt, "AMDMSampler")
    high_model = prompt[node_ids(prompt, "ModelStack")[0]]["inputs"]["model"][0]
    model = run_in_process(prompt, tiny_loaders, outputs_of=[high_model])[high_model][0]
    sigmas = run_node("BasicScheduler", model=model, scheduler=prompt[sampler_id]["inputs"]["scheduler"],
                      steps=steps, denoise=1.0)[0].tolist()
    switch = reference_switch_step(model, prompt[sampler_id]["inputs"]["scheduler"], steps, boundary)
    assert 0 < switch < steps
    assert sigmas[switch - 1] >= boundary > sigmas[switch]

    high, low = member_sigmas(prompt, tiny_loaders)

    assert high == pytest.approx(sigmas[:switch], rel=1e-6)
    assert low == pytest.approx(sigmas[switch:-1], rel=1e-6)


def test_sdxl_refiner_is_one_ecosystem_with_the_base(pack) -> None:
    """ComfyUI's SDXL and SDXLRefiner model classes give one latent format and one discrete
    sigma table, and the pack's ecosystem check accepts the two together; an SD1.5 model it
    refuses (another latent format). The models carry what ComfyUI's BaseModel builds from
    the class (its latent format and model_sampling, eps as both checkpoints are), not the
    UNet's weights."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes.members import Member, check_members

    class Family(torch.nn.Module):
        def __init__(self, config_class: type) -> None:
            super().__init__()
            self.model_config = config_class(config_class.unet_config)
            self.latent_format = self.model_config.latent_format
            self.model_sampling = comfy.model_base.model_sampling(self.model_config, comfy.model_base.ModelType.EPS)

    def model(name: str) -> Any:
        cpu = torch.device("cpu")
        return comfy.model_patcher.ModelPatcher(Family(getattr(comfy.supported_models, name)), load_device=cpu,
                                                offload_device=cpu)

    base, refiner, sd15 = model("SDXL"), model("SDXLRefiner"), model("SD15")
    assert type(base.model.latent_format) is type(refiner.model.latent_format)
    assert torch.equal(base.model.model_sampling.sigmas, refiner.model.model_sampling.sigmas)
    check_members([Member(base, [], [], 8.0), Member(refiner, [], [], 8.0)], Schedule(target_member=2))
    with pytest.raises(ValueError, match="member 2 is not of the same ecosystem as member 1: latent format"):
        check_members([Member(sd15, [], [], 8.0), Member(refiner, [], [], 8.0)], Schedule(target_member=2))
