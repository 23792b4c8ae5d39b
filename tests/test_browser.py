"""The pack in ComfyUI's real frontend: headless Chromium against the real server.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`); Playwright only
drives it. Screenshots land in <repo>/test-artifacts/browser/.
"""
from __future__ import annotations

import copy
import io
import json
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Error as PlaywrightError, Page, sync_playwright

from support.comfy_env import load_comfy_extra_nodes
from support.comfy_server import ComfyServer
from test_workflows import (WORKFLOW_NAMES, graph_differences, load_api_workflow, load_ui_workflow,
                            provide_input_images, saved_images, small_value)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 950}
PACK_NODE_TYPES = ("ModelStack", "AggregationSchedule", "AMDMGuider", "AMDMSampler")
DISPLAY_NAMES = {"ModelStack": "AMDM Model Stack", "AggregationSchedule": "AMDM Aggregation Schedule",
                 "AMDMGuider": "AMDM Guider", "AMDMSampler": "AMDM Sampler"}
# Colours the extension draws with (web/js/amdm.js): members 1 and 2, and the window bracket.
MEMBER_RGB = [(0xF0, 0xA0, 0x4B), (0x4F, 0xB3, 0xF0), (0x7C, 0xCF, 0x6F)]
WINDOW_RGB = (0xF0, 0xD0, 0x50)


@dataclass
class ConsoleLog:
    """Console errors and uncaught exceptions of one page."""
    errors: list[str] = field(default_factory=list)

    def record_message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} @ {message.location.get('url', '')}")

    def record_exception(self, error: PlaywrightError) -> None:
        self.errors.append(f"uncaught: {error.message}\n{error.stack or ''}")


def normalised(error: str, server_url: str) -> str:
    """An error with the server address and source positions removed, for comparing runs."""
    text = error.replace(server_url, "<server>")
    text = re.sub(r":\d+:\d+", "", text)
    return text.split("\n")[0].strip()


class ComfyPage:
    """One ComfyUI tab: open, load workflows, look at the canvas."""

    def __init__(self, browser: Browser, server_url: str):
        self.server_url = server_url
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.page: Page = self.context.new_page()
        self.log = ConsoleLog()
        self.page.on("console", self.log.record_message)
        self.page.on("pageerror", self.log.record_exception)
        self.page.goto(server_url)
        self.page.wait_for_function(
            "() => window.app?.graph && window.app.canvas && window.LiteGraph "
            "&& Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120_000)
        self.page.wait_for_timeout(1500)
        self.dismiss_dialogs()

    def close(self) -> None:
        self.context.close()

    def dismiss_dialogs(self) -> None:
        """Close whatever dialog the frontend opened (the template browser on a first visit)."""
        for _ in range(5):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)
        raise AssertionError("a dialog stays open: " + self.page.locator(".p-dialog").first.inner_text()[:200])

    def load(self, workflow: dict) -> None:
        self.page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
        self.page.wait_for_timeout(300)
        self.dismiss_dialogs()

    def missing_node_types(self) -> list[str]:
        return self.page.evaluate(
            "() => app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors)"
            ".map((n) => `${n.id}:${n.type}`)")

    def prompt_from_frontend(self) -> dict:
        """What the frontend would send to /prompt for the loaded graph."""
        return json.loads(self.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))

    def node_id(self, node_type: str) -> int:
        return self.page.evaluate("(type) => app.graph.nodes.find((n) => n.type === type).id", node_type)

    def frame_node(self, node_id: int) -> dict:
        """Show a node at zoom 1 near the canvas's top left; returns its page rectangle."""
        self.page.mouse.move(5, VIEWPORT["height"] - 5)
        rect = self.page.evaluate("""(id) => {
            const node = app.graph.getNodeById(id);
            const canvas = app.canvas;
            canvas.ds.scale = 1;
            canvas.ds.offset = [-node.pos[0] + 80, -node.pos[1] + 90];
            canvas.setDirty(true, true);
            const box = canvas.canvas.getBoundingClientRect();
            return {x: box.x + 80, y: box.y + 90 - LiteGraph.NODE_TITLE_HEIGHT,
                    width: node.size[0], height: node.size[1] + LiteGraph.NODE_TITLE_HEIGHT};
        }""", node_id)
        self.page.wait_for_timeout(400)
        return rect

    def node_image(self, node_id: int, artifact: str) -> Image.Image:
        rect = self.frame_node(node_id)
        png = self.page.screenshot(clip=rect)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / artifact).write_bytes(png)
        return Image.open(io.BytesIO(png)).convert("RGB")

    def widget_rect(self, node_id: int, widget_name: str) -> dict:
        return self.page.evaluate("""([id, name]) => {
            const node = app.graph.getNodeById(id);
            const widget = node.widgets.find((w) => w.name === name);
            const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] + widget.y]);
            const box = app.canvas.canvas.getBoundingClientRect();
            const scale = app.canvas.ds.scale;
            return {x: box.x + x, y: box.y + y, width: node.size[0] * scale, height: (widget.computedHeight ?? 24) * scale};
        }""", [node_id, widget_name])

    def type_into_widget(self, node_id: int, widget_name: str, value: str) -> None:
        """Edit a number widget the way a user does: double-click it, type, Enter."""
        self.frame_node(node_id)
        rect = self.widget_rect(node_id, widget_name)
        self.page.mouse.dblclick(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
        editor = self.page.locator(".graphdialog input.value:visible").last
        editor.wait_for(timeout=5000)
        editor.press("Control+a")
        editor.type(value)
        editor.press("Enter")
        self.page.mouse.move(5, VIEWPORT["height"] - 5)
        self.page.wait_for_timeout(400)

    def widget_value(self, node_id: int, widget_name: str) -> Any:
        return self.page.evaluate(
            "([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name).value",
            [node_id, widget_name])

    def graph_view(self, function: str, node_id: int) -> dict:
        """Call one of the extension's exported view functions on a node."""
        return self.page.evaluate("""async ([fn, id, module]) => {
            const view = (await import(module))[fn](app.graph.getNodeById(id));
            return JSON.parse(JSON.stringify({...view, members: view.members?.map((m) => ({name: m.name, weight: m.weight}))}));
        }""", [function, node_id, self.extension_url("amdm.js")])

    def extension_url(self, file_name: str) -> str:
        """The URL the frontend imported one of the pack's extension files from."""
        url = self.page.evaluate("""async (name) => {
            const files = await (await fetch("/extensions")).json();
            return files.find((file) => file.endsWith("/js/" + name));
        }""", file_name)
        assert url, f"the server lists no extension file {file_name}"
        return url


def colour_pixels(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels are within `tolerance` of a colour on every channel."""
    distance = np.abs(np.asarray(image, dtype=np.int16) - np.array(rgb, dtype=np.int16))
    return int(np.all(distance <= tolerance, axis=-1).sum())


def pack_free(workflow: dict) -> dict:
    """The same UI workflow without this pack's nodes (and their links): the control run."""
    workflow = copy.deepcopy(workflow)
    removed = {node["id"] for node in workflow["nodes"] if node["type"] in PACK_NODE_TYPES}
    dropped_links = {link[0] for link in workflow["links"] if link[1] in removed or link[3] in removed}
    workflow["nodes"] = [node for node in workflow["nodes"] if node["id"] not in removed]
    workflow["links"] = [link for link in workflow["links"] if link[0] not in dropped_links]
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") in dropped_links:
                slot["link"] = None
        for slot in node.get("outputs", []):
            if slot.get("links"):
                slot["links"] = [link for link in slot["links"] if link not in dropped_links]
    return workflow


def shrink_loaded_graph(comfy_page: ComfyPage) -> None:
    """Set the loaded graph's size knobs to the small values the API tests use."""
    widgets = comfy_page.page.evaluate(
        "() => app.graph.nodes.flatMap((n) => (n.widgets ?? []).map((w) => [n.id, w.name, w.value]))")
    changes = [[node_id, name, small_value(name, value)] for node_id, name, value in widgets
               if small_value(name, value) != value]
    assert changes, "nothing to shrink: the workflow has no size widgets"
    comfy_page.page.evaluate("""(changes) => {
        for (const [id, name, value] of changes) {
            app.graph.getNodeById(id).widgets.find((w) => w.name === name).value = value;
        }
    }""", changes)


def history(server_url: str) -> dict:
    with urllib.request.urlopen(f"{server_url}/history", timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def browser(comfy) -> Iterator[Browser]:
    # Registering comfy_extras runs an asyncio loop, which cannot start once sync Playwright
    # runs its own loop in this thread.
    load_comfy_extra_nodes()
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def comfy_server_without_pack(tmp_path_factory: pytest.TempPathFactory, comfy_server) -> Iterator[ComfyServer]:
    """The same ComfyUI and models, with nothing in custom_nodes: the control for console errors."""
    base_dir = tmp_path_factory.mktemp("comfy_server_without_pack")
    server = ComfyServer(base_dir, ARTIFACTS.parent / "comfyui-server-without-pack.log")
    # start() links the pack into `custom_nodes_dir`; ComfyUI itself reads <base>/custom_nodes.
    server.custom_nodes_dir = base_dir / "pack_not_installed"
    (base_dir / "custom_nodes").mkdir()
    server.start()
    try:
        assert not server.pack_loaded()
        yield server
    finally:
        server.stop()


def require_frontend_model_loaders(server) -> None:
    """ComfyUI's frontend 1.27 maps model folders to loader nodes, UpscaleModelLoader among
    them; when that node is missing (its module needs spandrel) the frontend cannot create any
    node with a ckpt_name / lora_name / vae_name widget."""
    if "UpscaleModelLoader" not in server.object_info():
        raise RuntimeError("ComfyUI registered no UpscaleModelLoader (is spandrel, one of ComfyUI's "
                           "requirements, installed?): without it the frontend cannot create "
                           "CheckpointLoaderSimple or LoraLoader nodes. Install it: pip install spandrel")


@pytest.fixture(scope="module")
def comfy_page(browser: Browser, comfy_server) -> Iterator[ComfyPage]:
    require_frontend_model_loaders(comfy_server)
    for name in WORKFLOW_NAMES:
        provide_input_images(comfy_server.url, load_api_workflow(name))
    page = ComfyPage(browser, comfy_server.url)
    yield page
    page.close()


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_loads_with_every_node_type(comfy_page: ComfyPage, name: str) -> None:
    comfy_page.load(load_ui_workflow(name))
    assert comfy_page.missing_node_types() == []
    # The frontend's own conversion of the loaded graph is the shipped API file.
    assert graph_differences(comfy_page.prompt_from_frontend(), load_api_workflow(name)) == []


def test_pack_adds_no_console_errors(browser: Browser, comfy_server, comfy_server_without_pack) -> None:
    """Same workflows, same actions; the control run has no pack and no pack nodes."""
    require_frontend_model_loaders(comfy_server)
    runs = {}
    for label, server, prepare in (("with pack", comfy_server, lambda wf: wf),
                                   ("without pack", comfy_server_without_pack, pack_free)):
        for name in WORKFLOW_NAMES:
            provide_input_images(server.url, load_api_workflow(name))
        page = ComfyPage(browser, server.url)
        try:
            for name in WORKFLOW_NAMES:
                page.load(prepare(load_ui_workflow(name)))
                page.frame_node(page.page.evaluate("() => app.graph.nodes[0].id"))
            page.page.wait_for_timeout(1000)
            runs[label] = page.log.errors
        finally:
            page.close()
    control = {normalised(error, comfy_server_without_pack.url) for error in runs["without pack"]}
    caused = [error for error in runs["with pack"]
              if "amdm" in error.lower() or normalised(error, comfy_server.url) not in control]
    assert caused == []


def test_schedule_drawing_follows_end_percent(comfy_page: ComfyPage) -> None:
    comfy_page.load(load_ui_workflow("amdm_two_members"))
    schedule = comfy_page.node_id("AggregationSchedule")
    before_view = comfy_page.graph_view("scheduleView", schedule)
    before = comfy_page.node_image(schedule, "schedule_end_0.40.png")

    comfy_page.type_into_widget(schedule, "end_percent", "0.8")
    assert comfy_page.widget_value(schedule, "end_percent") == pytest.approx(0.8)
    after_view = comfy_page.graph_view("scheduleView", schedule)
    after = comfy_page.node_image(schedule, "schedule_end_0.80.png")

    # 25 euler/normal steps: end_percent 0.4 -> steps 0-9, 0.8 -> steps 0-19.
    assert before_view["inWindow"] == list(range(10))
    assert after_view["inWindow"] == list(range(20))
    for image in (before, after):
        assert colour_pixels(image, MEMBER_RGB[0]) > 500
        assert colour_pixels(image, MEMBER_RGB[1]) > 500
    # The window bracket above the columns doubles in length with the window.
    bracket_before, bracket_after = colour_pixels(before, WINDOW_RGB, 12), colour_pixels(after, WINDOW_RGB, 12)
    assert bracket_before > 100
    assert bracket_after / bracket_before == pytest.approx(2.0, rel=0.15)
    # Member 2's share (blue) covers twice the steps.
    assert colour_pixels(after, MEMBER_RGB[1]) / colour_pixels(before, MEMBER_RGB[1]) == pytest.approx(2.0, rel=0.15)


def test_schedule_drawing_without_a_stack_shows_the_curve(comfy_page: ComfyPage) -> None:
    comfy_page.load({"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [],
                     "config": {}, "extra": {}, "version": 0.4})
    node_id = comfy_page.page.evaluate("""() => {
        const node = LiteGraph.createNode("AggregationSchedule");
        app.graph.add(node);
        node.widgets.find((w) => w.name === "weight_curve").value = "linear_decay";
        return node.id;
    }""")
    view = comfy_page.graph_view("scheduleView", node_id)
    assert view["connected"] is False and view["exact"] is False
    assert view["stepCount"] == 20
    # Defaults: end_percent 0.4 of 20 "simple" steps -> steps 0-7; others fade as 1 - j/8.
    assert view["inWindow"] == list(range(8))
    assert [row[1] for row in view["shares"][:9]] == pytest.approx([1 - j / 8 for j in range(8)] + [0])
    image = comfy_page.node_image(node_id, "schedule_unconnected.png")
    assert colour_pixels(image, MEMBER_RGB[0]) > 100


def test_member_badges_follow_the_chain(comfy_page: ComfyPage) -> None:
    comfy_page.load(load_ui_workflow("amdm_three_members_guider"))
    stacks = comfy_page.page.evaluate(
        "() => app.graph.nodes.filter((n) => n.type === 'ModelStack').map((n) => n.id)")
    infos = [comfy_page.graph_view("memberInfo", node_id) for node_id in stacks]
    ordered = sorted(infos, key=lambda info: info["index"])
    assert [(info["index"], info["total"], info["isTarget"]) for info in ordered] == \
        [(0, 3, True), (1, 3, False), (2, 3, False)]
    for node_id, info in zip(stacks, infos):
        image = comfy_page.node_image(node_id, f"member_{info['index'] + 1}.png")
        assert colour_pixels(image, MEMBER_RGB[info["index"]]) > 300

    schedule = comfy_page.node_id("AggregationSchedule")
    comfy_page.type_into_widget(schedule, "target_member", "3")
    assert [comfy_page.graph_view("memberInfo", node_id)["isTarget"] for node_id in stacks] == \
        [info["index"] == 2 for info in infos]
    view = comfy_page.graph_view("scheduleView", schedule)
    # KarrasScheduler with 25 steps feeds SamplerCustomAdvanced: the chart uses its sigmas.
    assert view["exact"] is True and view["stepCount"] == 25 and view["targetIndex"] == 2


def window_cases(model) -> Iterator[dict]:
    """Sampler settings spanning every scheduler, denoise < 1, the penultimate-sigma samplers,
    percent windows and step limits; with the sigmas ComfyUI's KSampler computes for them."""
    import comfy.samplers

    windows = [(0.0, 0.4, 0, 10000), (0.1, 0.65, 0, 10000), (0.0, 1.0, 2, 6), (0.3, 0.31, 0, 10000)]
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        for steps in (5, 20, 30):
            for denoise in (1.0, 0.6):
                for sampler in ("euler", "dpm_2"):
                    sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler,
                                                     scheduler=scheduler, denoise=denoise,
                                                     model_options=model.model_options).sigmas
                    for start, end, start_step, end_step in windows:
                        yield {"scheduler": scheduler, "steps": steps, "denoise": denoise, "sampler": sampler,
                               "schedule": {"start_percent": start, "end_percent": end,
                                            "start_step": start_step, "end_step": end_step},
                               "sigmas": sigmas.tolist()}


def test_chart_window_is_the_samplers_window(comfy_page: ComfyPage, pack, sd15, encode) -> None:
    """The browser's sigmas and window (web/js/amdm_schedule.js) against AMDMGuider.window on
    the sigmas of ComfyUI's KSampler, for the target model of a real SD1.5 checkpoint."""
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import AMDMGuider, Member

    model, clip, _ = sd15
    conditioning = encode(clip, "a cat")
    members = [Member(model, conditioning, conditioning, 7.0), Member(model, conditioning, conditioning, 7.0)]
    cases = list(window_cases(model))
    for case in cases:
        guider = AMDMGuider(members, Schedule(**case["schedule"]))
        case["expected"] = list(guider.window(torch.tensor(case["sigmas"])))

    browser_side = comfy_page.page.evaluate("""async ([cases, module]) => {
        const schedule = await import(module);
        return cases.map((c) => {
            const sigmas = schedule.ksamplerSigmas(c.scheduler, c.steps, c.denoise, c.sampler);
            return {sigmas, window: schedule.windowSteps(sigmas, c.schedule)};
        });
    }""", [cases, comfy_page.extension_url("amdm_schedule.js")])

    sigma_mismatches = [case for case, ours in zip(cases, browser_side)
                        if not np.allclose(ours["sigmas"], case["sigmas"], rtol=1e-4, atol=1e-5)]
    window_mismatches = [(case["scheduler"], case["steps"], case["denoise"], case["sampler"], case["schedule"],
                          case["expected"], ours["window"])
                         for case, ours in zip(cases, browser_side) if ours["window"] != case["expected"]]
    assert sum(len(case["expected"]) for case in cases) > len(cases)
    assert [case["scheduler"] for case in sigma_mismatches] == []
    assert window_mismatches == []


def test_chart_sigmas_of_sigmas_nodes(comfy_page: ComfyPage, comfy, sd15) -> None:
    """The SIGMAS nodes the chart follows behind AMDMGuider, against the nodes themselves."""
    model = sd15[0]
    cases = [
        ("basicSchedulerSigmas", ["karras", 12, 0.7], comfy.run("BasicScheduler", model=model, scheduler="karras",
                                                              steps=12, denoise=0.7)[0]),
        ("karrasSigmas", [25, 0.0291675, 14.614642, 7.0],
         comfy.run("KarrasScheduler", steps=25, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)[0]),
        ("exponentialSigmas", [15, 0.05, 12.0],
         comfy.run("ExponentialScheduler", steps=15, sigma_max=12.0, sigma_min=0.05)[0]),
        ("polyexponentialSigmas", [15, 0.05, 12.0, 1.5],
         comfy.run("PolyexponentialScheduler", steps=15, sigma_max=12.0, sigma_min=0.05, rho=1.5)[0]),
        ("alignYourStepsSigmas", ["SD1", 16, 0.8],
         comfy.run("AlignYourStepsScheduler", model_type="SD1", steps=16, denoise=0.8)[0]),
    ]
    ours = comfy_page.page.evaluate("""async ([calls, module]) => {
        const schedule = await import(module);
        return calls.map(([fn, args]) => schedule[fn](...args));
    }""", [[[fn, args] for fn, args, _ in cases], comfy_page.extension_url("amdm_schedule.js")])
    for (fn, _, expected), got in zip(cases, ours):
        assert np.allclose(got, expected.tolist(), rtol=1e-4, atol=1e-5), fn


def test_queue_from_the_page_completes(comfy_page: ComfyPage, comfy_server) -> None:
    comfy_page.load(load_ui_workflow("amdm_two_members"))
    shrink_loaded_graph(comfy_page)
    # A seed no other test uses, so that the server samples instead of replaying its cache.
    sampler = comfy_page.node_id("AMDMSampler")
    comfy_page.page.evaluate("([id, seed]) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'seed').value = seed; }",
                             [sampler, time.time_ns() % 2**32])
    known = set(history(comfy_server.url))

    comfy_page.page.evaluate("async () => { await app.queuePrompt(0, 1); }")

    deadline = time.monotonic() + 600
    new: list[str] = []
    while time.monotonic() < deadline:
        entries = history(comfy_server.url)
        new = [prompt_id for prompt_id in entries if prompt_id not in known]
        if new and entries[new[0]]["status"].get("completed") is not None:
            break
        time.sleep(1)
    assert len(new) == 1, "the page queued nothing"
    entry = history(comfy_server.url)[new[0]]
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = saved_images(entry)
    assert len(images) == 1
    path = Path(comfy_server.output_dir) / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_every_node_has_help_the_frontend_finds(comfy_server) -> None:
    object_info = comfy_server.object_info()
    for node_type in PACK_NODE_TYPES:
        module = object_info[node_type]["python_module"]
        assert module.startswith("custom_nodes.")
        # The frontend's node help: /extensions/<pack>/docs/<Node>.md (after <Node>/<locale>.md).
        pack = module.split(".")[1].split("@")[0]
        url = f"{comfy_server.url}/extensions/{urllib.request.quote(pack)}/docs/{node_type}.md"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode("utf-8")
        assert text.startswith(f"# {DISPLAY_NAMES[node_type]}\n")
        inputs = object_info[node_type]["input"]
        for input_name in [*inputs.get("required", {}), *inputs.get("optional", {})]:
            assert f"`{input_name}`" in text, f"{node_type}.md does not describe {input_name}"
