"""The pack in ComfyUI's real frontends: headless Chromium against the real server.

Two frontends: the one ComfyUI 0.3.64 pins (1.27), on the classic LiteGraph canvas, and the
current ``comfyui-frontend-package`` that ``scripts/setup.sh --browser`` installs outside the
repository (served with ``main.py --front-end-root``), on the classic canvas and with Vue
nodes ("Nodes 2.0"). Needs Debian's Chromium at /usr/bin/chromium; Playwright only drives it.
Screenshots land in <repo>/test-artifacts/browser/ (or $AMDM_TEST_ARTIFACTS/browser/).

The tests of one frontend configuration share one page; the last of them checks that the
page logged nothing from the pack's files in the meantime.
"""
from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Error as PlaywrightError, Page, sync_playwright

from support.comfy_env import ARTIFACTS_DIR, PACK_DIR_NAME, cache_dir, find_comfyui, load_comfy_extra_nodes, run_node
from support.comfy_server import ComfyServer, serving_the_pack
from support.fixture_models import CHECKPOINT_NAMES
from test_workflows import (WORKFLOW_NAMES, graph_differences, load_api_workflow, load_ui_workflow,
                            provide_input_images, saved_images, small_value)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ARTIFACTS_DIR / "browser"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.sh"
TEMPLATE_INDEX = REPO_ROOT / "workflows" / "templates" / "index.json"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 950}
PACK_NODE_TYPES = ("ModelStack", "AggregationSchedule", "AMDMGuider", "AMDMSampler", "AMDMExpertBoundary")
DISPLAY_NAMES = {"ModelStack": "AMDM Model Stack", "AggregationSchedule": "AMDM Aggregation Schedule",
                 "AMDMGuider": "AMDM Guider", "AMDMSampler": "AMDM Sampler",
                 "AMDMExpertBoundary": "AMDM Expert Boundary"}
PACK_EXTENSION_PATH = "/extensions/comfyui-amdm/"
# The frontend asks for a node's help in the user's language first (docs/<Node>/<locale>.md)
# and falls back to docs/<Node>.md, the pack's one page for every language; the browser logs
# the first request's 404.
LOCALE_HELP_PROBE = re.compile(r"Failed to load resource: .*404.* @ \S+/docs/\w+/[\w-]+\.md$")
# Colours the extension draws with (web/js/amdm/paint.js, chart.js): members 1 to 3, the
# window bracket, and a hard handoff's line.
MEMBER_RGB = [(0xF0, 0xA0, 0x4B), (0x4F, 0xB3, 0xF0), (0x7C, 0xCF, 0x6F)]
WINDOW_RGB = (0xF0, 0xD0, 0x50)
HANDOFF_RGB = (0xFF, 0xFF, 0xFF)
# Console messages carry the stack of their caller, so that a message can be traced to a file.
CONSOLE_STACKS = """(() => {
    for (const level of ["error", "warn"]) {
        const original = console[level];
        console[level] = function (...args) {
            return original.call(this, ...args, "\\n[stack] " + new Error().stack);
        };
    }
})()"""


def pinned_frontend_version() -> str:
    """The comfyui-frontend-package version ComfyUI's requirements.txt pins."""
    requirements = (find_comfyui() / "requirements.txt").read_text(encoding="utf-8")
    return re.search(r"^comfyui-frontend-package==(\S+)", requirements, re.M).group(1)


def current_frontend_version() -> str:
    """The current frontend's version, pinned in one place: scripts/setup.sh."""
    return re.search(r'^\s*CURRENT_FRONTEND_VERSION="(.+)"', SETUP_SCRIPT.read_text(encoding="utf-8"), re.M).group(1)


def current_frontend_root() -> Path:
    """The static folder of the current frontend as scripts/setup.sh --browser installs it."""
    version = current_frontend_version()
    root = cache_dir() / "frontend" / version / "comfyui_frontend_package" / "static"
    if not (root / "index.html").is_file():
        raise RuntimeError(f"comfyui-frontend-package {version} is not installed at {root}: "
                           f"run `bash scripts/setup.sh --browser`")
    return root


@dataclass(frozen=True)
class Frontend:
    """One frontend configuration: which package serves the page, and which renderer draws nodes."""
    current: bool
    renderer: str  # "classic" (LiteGraph canvas) or "vue" (Nodes 2.0)

    @property
    def version(self) -> str:
        return current_frontend_version() if self.current else pinned_frontend_version()

    @property
    def vue(self) -> bool:
        return self.renderer == "vue"

    def __str__(self) -> str:
        return f"{'current' if self.current else 'pinned'}-{self.renderer}"


FRONTENDS = [Frontend(False, "classic"), Frontend(True, "classic"), Frontend(True, "vue")]


@dataclass
class ConsoleLog:
    """Console errors and warnings, and uncaught exceptions, of one page."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record_message(self, message: ConsoleMessage) -> None:
        text = f"{message.text} @ {message.location.get('url', '')}"
        if message.type == "error":
            self.errors.append(text)
        elif message.type == "warning":
            self.warnings.append(text)

    def record_exception(self, error: PlaywrightError) -> None:
        self.errors.append(f"uncaught: {error.message}\n{error.stack or ''}")

    def from_pack(self) -> list[str]:
        """Errors, and warnings such as deprecations, raised by the pack's files or naming it."""
        return [text for text in self.errors + self.warnings
                if (PACK_EXTENSION_PATH in text or "amdm" in text.lower()) and not LOCALE_HELP_PROBE.match(text)]


class ComfyPage:
    """One ComfyUI tab: open, pick the renderer, load workflows, look at nodes."""

    def __init__(self, browser: Browser, server_url: str, frontend: Frontend | None = None):
        self.server_url = server_url
        self.frontend = frontend
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.context.add_init_script(CONSOLE_STACKS)
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
        if frontend is not None:
            assert self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == frontend.version
            self.set_setting("Comfy.Minimap.Visible", False)
            if frontend.current:
                self.set_setting("Comfy.VueNodes.Enabled", frontend.vue)
            assert self.page.evaluate("() => LiteGraph.vueNodesMode") == frontend.vue

    @property
    def vue(self) -> bool:
        return bool(self.frontend and self.frontend.vue)

    def close(self) -> None:
        self.context.close()

    def set_setting(self, setting: str, value: Any) -> None:
        self.page.evaluate("async ([id, value]) => { await app.extensionManager.setting.set(id, value); }",
                           [setting, value])
        self.page.wait_for_timeout(300)

    def dismiss_dialogs(self) -> None:
        """Close whatever dialog the frontend opened (the template browser on a first visit)."""
        dialogs = self.page.locator(".p-dialog, [role=dialog][data-state=open]")
        for _ in range(5):
            if not dialogs.count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)
        raise AssertionError("a dialog stays open: " + dialogs.first.inner_text()[:200])

    def load(self, workflow: dict) -> None:
        self.page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
        self.page.wait_for_timeout(300)
        self.dismiss_dialogs()

    def missing_node_types(self) -> list[str]:
        """Nodes whose type the frontend does not know. (Not `has_errors`: current frontends
        also set it on a loader whose model file is missing, and the test models do not
        include the family examples' text encoders.)"""
        return self.page.evaluate(
            "() => app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type])"
            ".map((n) => `${n.id}:${n.type}`)")

    def prompt_from_frontend(self) -> dict:
        """What the frontend would send to /prompt for the loaded graph."""
        return json.loads(self.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))

    def graph_frame(self) -> dict:
        """Where the loaded graph (every node with its title bar, every group) lies on the
        canvas at the view the frontend opened it with, in CSS pixels, and the canvas size."""
        return self.page.evaluate("""() => {
            const ds = app.canvas.ds;
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            const boxes = [...app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]),
                           ...(app.graph.groups ?? app.graph._groups ?? []).map((g) => [...g._bounding])];
            const xs = boxes.flatMap(([x, , w]) => [x, x + w]).map((x) => (x + ds.offset[0]) * ds.scale);
            const ys = boxes.flatMap(([, y, , h]) => [y, y + h]).map((y) => (y + ds.offset[1]) * ds.scale);
            const canvas = app.canvas.canvas;
            return {left: Math.min(...xs), right: Math.max(...xs), top: Math.min(...ys), bottom: Math.max(...ys),
                    scale: ds.scale, width: canvas.clientWidth, height: canvas.clientHeight};
        }""")

    def node_id(self, node_type: str) -> int:
        return self.page.evaluate("(type) => app.graph.nodes.find((n) => n.type === type).id", node_type)

    def frame_node(self, node_id: int, top: int = 140) -> dict:
        """Show a node at zoom 1, `top` pixels below the canvas's top (clear of the overlay
        toolbars), in front of any node it overlaps; returns its page rectangle."""
        self.page.mouse.move(5, VIEWPORT["height"] - 5)
        rect = self.page.evaluate("""([id, top]) => {
            const node = app.graph.getNodeById(id);
            const canvas = app.canvas;
            canvas.ds.scale = 1;
            canvas.ds.offset = [-node.pos[0] + 120, -node.pos[1] + top];
            canvas.bringToFront(node);
            canvas.setDirty(true, true);
            const box = canvas.canvas.getBoundingClientRect();
            return {x: box.x + 120, y: box.y + top - LiteGraph.NODE_TITLE_HEIGHT,
                    width: node.size[0], height: node.size[1] + LiteGraph.NODE_TITLE_HEIGHT};
        }""", [node_id, top])
        self.page.wait_for_timeout(400)
        if self.vue:
            # Vue nodes size themselves to their content: the element is the node. A click on
            # its title brings it to the front.
            element = self.page.locator(f'[data-node-id="{node_id}"]')
            element.locator('[data-testid="node-title"]').click()
            self.page.evaluate("() => app.canvas.deselectAll()")
            self.page.mouse.move(5, VIEWPORT["height"] - 5)
            self.page.wait_for_timeout(300)
            rect = element.bounding_box()
        return rect

    def node_image(self, node_id: int, artifact: str) -> Image.Image:
        rect = self.frame_node(node_id)
        png = self.page.screenshot(clip=rect)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{self.frontend}_{artifact}").write_bytes(png)
        return Image.open(io.BytesIO(png)).convert("RGB")

    def type_into_widget(self, node_id: int, widget_name: str, value: str) -> None:
        """Edit a number widget the way a user does in each renderer."""
        self.frame_node(node_id)
        if self.vue:
            field = self.page.locator(f'[data-node-id="{node_id}"] [data-widget-name="{widget_name}"] input')
            field.focus()
            field.press("Control+a")
            field.press_sequentially(value)
            field.press("Enter")
            field.blur()
        else:
            rect = self.page.evaluate("""([id, name]) => {
                const node = app.graph.getNodeById(id);
                const widget = node.widgets.find((w) => w.name === name);
                const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] + widget.y]);
                const box = app.canvas.canvas.getBoundingClientRect();
                return {x: box.x + x + node.size[0] / 2, y: box.y + y + 10};
            }""", [node_id, widget_name])
            self.page.mouse.dblclick(rect["x"], rect["y"])
            editor = self.page.locator(".graphdialog input.value:visible").last
            editor.wait_for(timeout=5000)
            editor.press("Control+a")
            editor.press_sequentially(value)
            editor.press("Enter")
            # The double click may have opened a second prompt under the first (1.27).
            self.page.evaluate("() => document.querySelectorAll('.graphdialog').forEach((d) => d.close ? d.close() : d.remove())")
        self.page.mouse.move(5, VIEWPORT["height"] - 5)
        self.page.wait_for_timeout(400)

    def drag_node(self, node_id: int, dx: int, dy: int) -> None:
        """Move a node by dragging its title bar, as a user does, in either renderer."""
        rect = self.frame_node(node_id)
        x, y = rect["x"] + 60, rect["y"] + 12
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x + dx, y + dy, steps=8)
        self.page.mouse.up()
        self.page.evaluate("() => app.canvas.deselectAll()")
        self.page.mouse.move(5, VIEWPORT["height"] - 5)
        self.page.wait_for_timeout(400)

    def widget_value(self, node_id: int, widget_name: str) -> Any:
        return self.page.evaluate(
            "([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name).value",
            [node_id, widget_name])

    def set_widget(self, node_id: int, widget_name: str, value: Any) -> None:
        """Set a widget's value and call its callback, as the renderers do on an edit."""
        self.page.evaluate("""([id, name, value]) => {
            const widget = app.graph.getNodeById(id).widgets.find((w) => w.name === name);
            widget.value = value;
            widget.callback?.(value);
        }""", [node_id, widget_name, value])

    def stack_node_ids(self) -> list[int]:
        """The ModelStack nodes, member 1 first."""
        ids = self.page.evaluate("() => app.graph.nodes.filter((n) => n.type === 'ModelStack').map((n) => n.id)")
        return sorted(ids, key=lambda node_id: self.graph_view("memberInfo", node_id)["index"])

    def hooked_widgets(self) -> list[str]:
        """`<node type>.<widget>` for every widget of the graph whose callback is a function
        of the pack's files (a callback the extension wrapped), as Chromium's debugger
        locates each function's source."""
        labels = self.page.evaluate(
            "() => app.graph.nodes.flatMap((n) => (n.widgets ?? []).map((w) => `${n.type}.${w.name}`))")
        cdp = self.context.new_cdp_session(self.page)
        try:
            scripts: dict[str, str] = {}
            cdp.on("Debugger.scriptParsed", lambda event: scripts.__setitem__(event["scriptId"], event.get("url", "")))
            cdp.send("Debugger.enable")
            callbacks = cdp.send("Runtime.evaluate", {"expression": (
                "app.graph.nodes.flatMap((n) => (n.widgets ?? []).map((w) => w.callback ?? null))")})
            listed = cdp.send("Runtime.getProperties", {"objectId": callbacks["result"]["objectId"], "ownProperties": True})
            hooked = []
            for entry in listed["result"]:
                function = entry.get("value", {})
                if not entry["name"].isdigit() or function.get("type") != "function":
                    continue
                internal = cdp.send("Runtime.getProperties", {"objectId": function["objectId"], "ownProperties": True})
                location = next((p["value"]["value"] for p in internal.get("internalProperties", [])
                                 if p["name"] == "[[FunctionLocation]]"), None)
                if location and PACK_EXTENSION_PATH in scripts.get(location["scriptId"], ""):
                    hooked.append(labels[int(entry["name"])])
            return hooked
        finally:
            cdp.detach()

    def nodes_over_chart(self) -> list[str]:
        """The nodes whose box overlaps the schedule chart's, as the graph opened: on the
        classic canvas from the nodes' positions and sizes (with their title bars), under
        Vue nodes from the elements the renderer laid out."""
        if self.vue:
            self.page.wait_for_timeout(500)
            return self.page.evaluate("""() => {
                const schedule = app.graph.nodes.find((n) => n.type === "AggregationSchedule");
                const chart = document.querySelector(`[data-node-id="${schedule.id}"] canvas`).getBoundingClientRect();
                return [...document.querySelectorAll("[data-node-id]")]
                    .filter((element) => element.dataset.nodeId !== String(schedule.id))
                    .filter((element) => {
                        const box = element.getBoundingClientRect();
                        return box.left < chart.right && chart.left < box.right && box.top < chart.bottom && chart.top < box.bottom;
                    })
                    .map((element) => `${element.dataset.nodeId}:${app.graph.getNodeById(element.dataset.nodeId)?.type}`);
            }""")
        return self.page.evaluate("""(chartWidget) => {
            app.canvas.draw(true, true);  // lays the widgets out (widget.y)
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            const schedule = app.graph.nodes.find((n) => n.type === "AggregationSchedule");
            const widget = schedule.widgets.find((w) => w.name === chartWidget);
            const chart = [schedule.pos[0], schedule.pos[1] + widget.y, schedule.size[0], widget.computeSize()[1]];
            return app.graph.nodes.filter((n) => n !== schedule).filter((n) => {
                const box = [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title];
                return box[0] < chart[0] + chart[2] && chart[0] < box[0] + box[2]
                    && box[1] < chart[1] + chart[3] && chart[1] < box[1] + box[3];
            }).map((n) => `${n.id}:${n.type}`);
        }""", "amdm_chart")

    def graph_view(self, function: str, node_id: int) -> dict:
        """Call one of the extension's exported view functions on a node."""
        return self.page.evaluate("""async ([fn, id, module]) => {
            const view = (await import(module))[fn](app.graph.getNodeById(id));
            // chartRequest: the route's body (the rest holds nodes)
            return JSON.parse(JSON.stringify(fn === "chartRequest" ? {body: view.body} : view));
        }""", [function, node_id, self.extension_url("amdm.js")])

    def chart_view(self, node_id: int, timeout: float = 15.0) -> dict:
        """The schedule chart's data once the server has answered for the current graph."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.graph_view("scheduleView", node_id)
            expected = self.graph_view("chartRequest", node_id)
            if view and "error" not in view and view["request"] == expected["body"]:
                return view
            assert time.monotonic() < deadline, f"the chart did not update: {view}"
            self.page.wait_for_timeout(200)

    def frontend_api_url(self) -> str:
        """The frontend's api module, as the pack's extension imports it."""
        return self.page.evaluate("(url) => new URL('../../../scripts/api.js', new URL(url, location.href)).href", self.extension_url("amdm.js"))

    def extension_url(self, file_name: str) -> str:
        """The URL the frontend imported one of the pack's extension files from."""
        url = self.page.evaluate("""async (name) => {
            const files = await (await fetch("/extensions")).json();
            return files.find((file) => file.endsWith("/js/" + name));
        }""", file_name)
        assert url, f"the server lists no extension file {file_name}"
        return url

    def open_node_help(self, node_id: int) -> str:
        """Select a node and open its help through the selection toolbox's info button; the
        help's text as the panel shows it (the node library's help page on 1.27, the right
        side panel's Info tab on current frontends)."""
        self.frame_node(node_id, top=260)  # room above the node for the selection toolbox
        self.page.evaluate("(id) => { app.canvas.deselectAll?.(); app.canvas.selectNode(app.graph.getNodeById(id)); }",
                           node_id)
        self.page.locator('[data-testid="info-button"]:visible').first.click(timeout=10_000)
        help_content = self.page.locator(".node-help-content:visible").first
        help_content.locator("h1, h2").first.wait_for(timeout=15_000)
        return help_content.inner_text()


def colour_pixels(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels are within `tolerance` of a colour on every channel."""
    distance = np.abs(np.asarray(image, dtype=np.int16) - np.array(rgb, dtype=np.int16))
    return int(np.all(distance <= tolerance, axis=-1).sum())


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


def with_optional_defaults(api_prompt: dict, object_info: dict) -> dict:
    """An API prompt with the optional widget inputs it leaves out set to their declared
    defaults, as the server runs it."""
    completed = json.loads(json.dumps(api_prompt))
    for node in completed.values():
        optional = object_info[node["class_type"]]["input"].get("optional", {})
        for name, spec in optional.items():
            options = spec[1] if len(spec) > 1 else {}
            if name not in node["inputs"] and "default" in options:
                node["inputs"][name] = options["default"]
    return completed


def history(server_url: str) -> dict:
    with urllib.request.urlopen(f"{server_url}/history", timeout=30) as response:
        return json.load(response)


def post_chart(server_url: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server_url}/api/amdm/chart", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
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
def current_frontend_server(tmp_path_factory: pytest.TempPathFactory, fixture_files) -> Iterator[ComfyServer]:
    """The same ComfyUI, pack and models, serving the current frontend."""
    with serving_the_pack(tmp_path_factory.mktemp("comfy_server_current_frontend"),
                          ARTIFACTS.parent / "comfyui-server-current-frontend.log",
                          extra_args=["--front-end-root", str(current_frontend_root())]) as server:
        yield server


def require_frontend_model_loaders(server) -> None:
    """ComfyUI's frontend 1.27 maps model folders to loader nodes, UpscaleModelLoader among
    them; when that node is missing (its module needs spandrel) the frontend cannot create any
    node with a ckpt_name / lora_name / vae_name widget."""
    if "UpscaleModelLoader" not in server.object_info():
        raise RuntimeError("ComfyUI registered no UpscaleModelLoader (is spandrel, one of ComfyUI's "
                           "requirements, installed?): without it the frontend cannot create "
                           "CheckpointLoaderSimple or LoraLoader nodes. Install it: pip install spandrel")


@dataclass
class FrontendSession:
    server: ComfyServer
    page: ComfyPage


@pytest.fixture(scope="module", params=FRONTENDS, ids=str)
def session(request: pytest.FixtureRequest, browser: Browser) -> Iterator[FrontendSession]:
    """A page of one frontend configuration on its server."""
    frontend: Frontend = request.param
    server = request.getfixturevalue("current_frontend_server" if frontend.current else "comfy_server")
    require_frontend_model_loaders(server)
    for name in WORKFLOW_NAMES:
        provide_input_images(server.url, load_api_workflow(name))
    page = ComfyPage(browser, server.url, frontend)
    yield FrontendSession(server, page)
    page.close()


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_loads_with_every_node_type(session: FrontendSession, name: str) -> None:
    logged = len(session.page.log.errors)
    session.page.load(load_ui_workflow(name))
    assert session.page.missing_node_types() == []
    # The frontend's own conversion of the loaded graph is the shipped API file (which may
    # leave out optional widgets at their defaults: the frontend writes them all).
    api_prompt = with_optional_defaults(load_api_workflow(name), session.server.object_info())
    assert graph_differences(session.page.prompt_from_frontend(), api_prompt) == []
    # The schedule chart sits under no other node (nor over one), in either renderer.
    if "AggregationSchedule" in {node["type"] for node in load_ui_workflow(name)["nodes"]}:
        assert session.page.nodes_over_chart() == []
    if not session.page.frontend.vue:  # Vue nodes size themselves after the first paint
        frame = session.page.graph_frame()
        assert frame["scale"] >= 0.6, frame  # text stays readable
        assert 0 <= frame["left"] and frame["right"] <= frame["width"], frame
        assert 0 <= frame["top"] and frame["bottom"] <= frame["height"], frame
    session.page.page.wait_for_timeout(500)  # the chart's first answer
    assert session.page.log.errors[logged:] == []


def test_schedule_chart_follows_end_percent(session: FrontendSession) -> None:
    page = session.page
    page.load(load_ui_workflow("amdm_two_members"))
    schedule = page.node_id("AggregationSchedule")
    before_view = page.chart_view(schedule)
    before = page.node_image(schedule, "schedule_end_0.40.png")

    if session.page.frontend.current:
        # With the side panel showing the selected node's widgets, the node's chart still redraws.
        page.page.evaluate("(id) => app.canvas.selectNode(app.graph.getNodeById(id))", schedule)
        page.set_setting("Comfy.RightSidePanel.IsOpen", True)
    page.type_into_widget(schedule, "end_percent", "0.8")
    assert page.widget_value(schedule, "end_percent") == pytest.approx(0.8)
    after_view = page.chart_view(schedule)
    after = page.node_image(schedule, "schedule_end_0.80.png")

    # The target's CheckpointLoaderSimple file tells the family (the page sends the loader).
    assert before_view["family"] == "SD15"
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

    # The chart follows the sampler node too: 30 steps, 0.8 of them aggregated.
    page.type_into_widget(page.node_id("AMDMSampler"), "steps", "30")
    view = page.chart_view(schedule)
    assert view["stepCount"] == 30 and view["inWindow"] == list(range(24))
    if session.page.frontend.current:
        page.set_setting("Comfy.RightSidePanel.IsOpen", False)


def test_member_badges_follow_the_chain(session: FrontendSession) -> None:
    page = session.page
    page.load(load_ui_workflow("amdm_three_members_guider"))
    stacks = page.page.evaluate("() => app.graph.nodes.filter((n) => n.type === 'ModelStack').map((n) => n.id)")
    infos = [page.graph_view("memberInfo", node_id) for node_id in stacks]
    assert sorted((info["index"], info["total"], info["isTarget"]) for info in infos) == \
        [(0, 3, True), (1, 3, False), (2, 3, False)]
    for node_id, info in zip(stacks, infos):
        image = page.node_image(node_id, f"member_{info['index'] + 1}.png")
        # Tight tolerance: the CONDITIONING slots' orange is close to member 1's.
        assert colour_pixels(image, MEMBER_RGB[info["index"]], 12) > 150
        assert all(colour_pixels(image, MEMBER_RGB[other], 12) < 20 for other in range(3) if other != info["index"])

    schedule = page.node_id("AggregationSchedule")
    page.type_into_widget(schedule, "target_member", "3")
    assert [page.graph_view("memberInfo", node_id)["isTarget"] for node_id in stacks] == \
        [info["index"] == 2 for info in infos]
    view = page.chart_view(schedule)
    # KarrasScheduler with 25 steps feeds SamplerCustomAdvanced: the chart uses its sigmas.
    assert view["exact"] is True and view["stepCount"] == 25 and view["targetIndex"] == 2


def test_only_the_charts_inputs_are_hooked(session: FrontendSession) -> None:
    """A graph without the pack's nodes keeps every widget callback as it was; with them, the
    extension wraps the callbacks of the widgets its chart and badges read, and no others."""
    page = session.page
    page.page.evaluate("async () => { await app.loadGraphData(); }")  # the frontend's default graph
    page.page.wait_for_timeout(300)
    types = page.page.evaluate("() => app.graph.nodes.map((n) => n.type)")
    assert "KSampler" in types and not set(types) & set(PACK_NODE_TYPES)
    widgets = page.page.evaluate("() => app.graph.nodes.flatMap((n) => n.widgets ?? []).length")
    assert widgets > 5
    assert page.hooked_widgets() == []

    page.load(load_ui_workflow("amdm_three_members_guider"))
    page.page.wait_for_timeout(300)
    stack_widgets = ["name", "weight", "deviation", "start_percent", "end_percent", "start_step", "end_step"]
    schedule_widgets = page.page.evaluate("""() => app.graph.nodes.find((n) => n.type === "AggregationSchedule")
        .widgets.filter((w) => w.serialize !== false).map((w) => w.name)""")
    expected = (3 * [f"ModelStack.{name}" for name in stack_widgets]
                + [f"AggregationSchedule.{name}" for name in schedule_widgets]
                # The target's loader and the sigmas behind SamplerCustomAdvanced.
                + ["CheckpointLoaderSimple.ckpt_name", "KarrasScheduler.steps", "KarrasScheduler.sigma_max",
                   "KarrasScheduler.sigma_min", "KarrasScheduler.rho"])
    assert sorted(page.hooked_widgets()) == sorted(expected)

    # Back to a graph without them: the wrapped callbacks are restored.
    page.page.evaluate("async () => { await app.loadGraphData(); }")
    page.page.wait_for_timeout(300)
    assert page.hooked_widgets() == []


def test_chart_request_is_built_only_when_an_input_changes(session: FrontendSession) -> None:
    """Redraws read the chart's last answer, and edits of what the chart does not read (a
    node moved, another node's widget) build no request, though the workflow's change tracker
    reports them; an edit of the chart's input reads the graph and serialises a request again."""
    page = session.page
    page.load(load_ui_workflow("amdm_two_members"))
    schedule = page.node_id("AggregationSchedule")
    page.chart_view(schedule)
    page.frame_node(schedule)
    # Count the request bodies serialised from now on, and the change tracker's reports.
    page.page.evaluate("""async (apiUrl) => {
        const { api } = await import(apiUrl);
        const stringify = JSON.stringify;
        window.amdmTestRequests = 0;
        window.amdmTestGraphChanges = 0;
        window.amdmTestStringify = stringify;
        window.amdmTestCountChange = () => window.amdmTestGraphChanges++;
        api.addEventListener("graphChanged", window.amdmTestCountChange);
        JSON.stringify = function (value, ...rest) {
            if (value && typeof value === "object" && "schedule" in value && "members" in value) window.amdmTestRequests++;
            return stringify.call(this, value, ...rest);
        };
    }""", page.frontend_api_url())
    counts = "() => [window.amdmTestRequests, window.amdmTestGraphChanges]"
    try:
        for _ in range(10):
            page.page.evaluate("""(id) => {
                app.canvas.draw(true, true);
                for (const widget of app.graph.getNodeById(id).widgets) widget.triggerDraw?.();
            }""", schedule)
            page.page.wait_for_timeout(50)
        assert page.page.evaluate(counts) == [0, 0]

        # Another node moved, and a widget the chart does not read edited, as a user does.
        decode = page.node_id("VAEDecode")
        before = page.page.evaluate("(id) => [...app.graph.getNodeById(id).pos]", decode)
        page.drag_node(decode, 120, 60)
        after = page.page.evaluate("(id) => [...app.graph.getNodeById(id).pos]", decode)
        assert after[0] - before[0] == pytest.approx(120, abs=10) and after[1] - before[1] == pytest.approx(60, abs=10)
        requests, changes = page.page.evaluate(counts)
        assert changes >= 1 and requests == 0
        latent = page.node_id("EmptyLatentImage")
        page.type_into_widget(latent, "width", "640")
        assert page.widget_value(latent, "width") == 640
        assert page.page.evaluate(counts)[0] == 0

        page.type_into_widget(schedule, "end_percent", "0.6")
        assert page.page.evaluate(counts)[0] >= 1
    finally:
        page.page.evaluate("""async (apiUrl) => {
            const { api } = await import(apiUrl);
            api.removeEventListener("graphChanged", window.amdmTestCountChange);
            JSON.stringify = window.amdmTestStringify;
        }""", page.frontend_api_url())
    assert page.chart_view(schedule)["inWindow"] == list(range(15))


def test_chart_shows_member_ranges_and_handoffs(session: FrontendSession, pack, sd15) -> None:
    """Members with ranges of their own: the chart shows each one's steps, the aggregated
    overlap and the handoff where the sampler's plan has them."""
    import dataclasses

    from comfy.samplers import KSampler
    from comfyui_amdm.amdm_core import Schedule, StepRange
    from comfyui_amdm.nodes import AMDMGuider, Member

    page = session.page
    page.load(load_ui_workflow("amdm_two_members"))
    schedule = page.node_id("AggregationSchedule")
    first, second = page.stack_node_ids()
    before = page.node_image(schedule, "ranges_none.png")
    sigmas = KSampler(sd15.model, steps=25, device="cpu", sampler="euler", scheduler="normal",
                      model_options=sd15.model.model_options).sigmas

    def sampler_plan(view: dict, ranges: list[StepRange]) -> Any:
        fields = {field.name for field in dataclasses.fields(Schedule)}
        members = [Member(sd15.model, [], [], 7.0, step_range=own) for own in ranges]
        return AMDMGuider(members, Schedule(**{k: v for k, v in view["schedule"].items() if k in fields})).plan(sigmas)

    # A hard switch at 0.5: member 1 alone, then member 2, the target, alone.
    page.type_into_widget(page.node_id("AggregationSchedule"), "target_member", "2")
    page.type_into_widget(first, "end_percent", "0.5")
    page.type_into_widget(second, "start_percent", "0.5")
    hard = page.chart_view(schedule)
    plan = sampler_plan(hard, [StepRange(0.0, 0.5), StepRange(0.5, 1.0)])
    switch = plan.active[1].start
    assert hard["ranges"] == [[r.start, r.stop] for r in plan.active] == [[0, switch], [switch, 25]]
    assert len(plan.stages) == 2 and not plan.windows
    assert hard["handoffs"] == [{"from": 0, "to": 1, "start": switch, "stop": switch}]
    assert hard["aggregated"] == [] and hard["problem"] is None
    hard_image = page.node_image(schedule, "ranges_hard.png")
    # The handoff's white line crosses the plot; no window or overlap is marked.
    assert colour_pixels(hard_image, HANDOFF_RGB, 8) - colour_pixels(before, HANDOFF_RGB, 8) > 60
    assert colour_pixels(hard_image, WINDOW_RGB, 12) < 20

    # Overlapping ranges: both members aggregate across the boundary (a soft handoff).
    page.type_into_widget(first, "end_percent", "0.6")
    page.type_into_widget(second, "start_percent", "0.4")
    soft = page.chart_view(schedule)
    plan = sampler_plan(soft, [StepRange(0.0, 0.6), StepRange(0.4, 1.0)])
    overlap = [[span.steps.start, span.steps.stop] for span in plan.spans if span.aggregated]
    assert soft["ranges"] == [[r.start, r.stop] for r in plan.active]
    assert len(overlap) == 1 and overlap[0][1] - overlap[0][0] >= 3
    assert soft["aggregated"] == overlap
    assert soft["handoffs"] == [{"from": 0, "to": 1, "start": overlap[0][0], "stop": overlap[0][1]}]
    # Inside the overlap both members share the latent; outside it one member steps alone.
    assert all(0 < share < 1 for k in range(*overlap[0]) for share in soft["shares"][k])
    assert soft["shares"][0] == [1, 0] and soft["shares"][24] == [0, 1]
    soft_image = page.node_image(schedule, "ranges_soft.png")
    assert colour_pixels(soft_image, WINDOW_RGB, 12) > 30  # the overlap's bracket

    # Ranges fed by AMDM Expert Boundary: the route runs the node on the target's model, as the
    # graph will when it runs.
    page.page.evaluate("""([first, second]) => {
        const boundary = LiteGraph.createNode("AMDMExpertBoundary");
        boundary.pos = [400, 1000];
        app.graph.add(boundary);
        const stack = app.graph.getNodeById(first);
        const link = stack.getInputLink(stack.inputs.findIndex((i) => i.name === "model"));
        app.graph.getNodeById(link.origin_id).connect(link.origin_slot, boundary, "model");
        boundary.connect(0, stack, "end_percent");
        boundary.connect(1, app.graph.getNodeById(second), "start_percent");
    }""", [first, second])
    fed = page.chart_view(schedule)
    # run_node starts an asyncio loop (the pack's V3 entry point), which cannot run in this
    # thread beside sync Playwright's: it runs on a thread of its own.
    with ThreadPoolExecutor(max_workers=1) as worker:
        end, start = worker.submit(run_node, "AMDMExpertBoundary", model=sd15.model, preset="Wan 2.2 T2V (0.875)",
                                   boundary=0.875, unit="timestep", overlap=0.0).result()
    plan = sampler_plan(fed, [StepRange(0.0, end), StepRange(start, 1.0)])
    assert fed["computed"] == [] and fed["problem"] is None
    assert fed["ranges"] == [[r.start, r.stop] for r in plan.active] and len(plan.stages) == 2


def test_badges_follow_a_renderer_switch(browser: Browser, current_frontend_server: ComfyServer) -> None:
    """Nodes 2.0 switched on with a graph open on the classic canvas, its ModelStack nodes
    off screen at the switch, and switched off again: their badges show in each renderer
    without loading the graph again, and back on the classic canvas the badge row under
    Nodes 2.0 takes no room."""
    page = ComfyPage(browser, current_frontend_server.url, Frontend(True, "classic"))

    def switch(renderer: str) -> None:
        page.page.evaluate("() => { app.canvas.ds.offset = [-5000, -5000]; app.canvas.setDirty(true, true); }")
        page.page.wait_for_timeout(300)
        page.set_setting("Comfy.VueNodes.Enabled", renderer == "vue")
        page.frontend = Frontend(True, renderer)
        page.page.wait_for_timeout(1000)
        assert page.page.evaluate("() => LiteGraph.vueNodesMode") == (renderer == "vue")

    def stack_sizes() -> list[list[float]]:
        return page.page.evaluate("(ids) => ids.map((id) => [...app.graph.getNodeById(id).size])", stacks)

    try:
        page.load(load_ui_workflow("amdm_two_members"))
        stacks = page.stack_node_ids()
        classic_sizes = stack_sizes()
        for renderer in ("vue", "classic"):
            switch(renderer)
            for index, node_id in enumerate(stacks):
                image = page.node_image(node_id, f"switched_{renderer}_member_{index + 1}.png")
                assert colour_pixels(image, MEMBER_RGB[index], 12) > 150, f"no badge on member {index + 1} ({renderer})"
        assert stack_sizes() == classic_sizes
        assert page.log.from_pack() == []
    finally:
        page.close()


def template_cards() -> list[dict]:
    """The pack's template cards (title, one-line description), in card order: the order the
    pack's extension gives the template browser, and the captions of the cards' pictures."""
    return [card for category in json.loads(TEMPLATE_INDEX.read_text(encoding="utf-8"))
            for card in category["templates"]]


def test_template_cards_describe_every_example() -> None:
    """Every example has a card (title, one-line description), the minimal one first; its
    picture is square, as both frontends show template pictures."""
    cards = template_cards()
    assert cards[0]["name"] == "amdm_two_members"
    assert sorted(card["name"] for card in cards) == WORKFLOW_NAMES
    for card in cards:
        assert card["title"].strip() and card["description"].strip() and "\n" not in card["description"], card
        with Image.open(REPO_ROOT / "workflows" / f"{card['name']}.jpg") as picture:
            assert picture.width == picture.height >= 256, card["name"]


def test_template_browser_shows_the_cards(session: FrontendSession) -> None:
    """The frontend's template browser shows every example of the pack, each card under its
    file name (all the frontends show of a custom node's template; the order is the
    server's) with its own square picture, which carries the card's title and description."""
    page = session.page
    served: dict[str, int] = {}

    def record(response: Any) -> None:
        if f"/workflow_templates/{PACK_DIR_NAME}/" in response.url and response.url.endswith(".jpg"):
            served[response.url] = response.status

    page.page.on("response", record)
    try:
        page.page.evaluate("async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        dialog = page.page.locator(".p-dialog, [role=dialog]").last
        dialog.get_by_text(PACK_DIR_NAME, exact=True).first.click(timeout=15_000)
        for name in WORKFLOW_NAMES:
            dialog.locator(f'[data-testid="template-workflow-{name}"]').first.wait_for(timeout=15_000)
        page.page.wait_for_timeout(1000)
        # What each card shows, in the order the browser lays the cards out: its text, and its
        # picture (the frontends load card pictures as blobs, the visible ones first).
        shown = dialog.evaluate("""async (dialog) => {
            const cards = [...dialog.querySelectorAll("[data-testid^='template-workflow-']")]
                .filter((card) => card.dataset.testid !== "template-workflow-detail");
            return cards.map((card) => {
                const picture = [...card.querySelectorAll("img[src^='blob:']")]
                    .find((img) => img.complete && img.naturalWidth > 0);
                let png = null;
                if (picture) {  // the picture as the page decoded it (the blob URL may be revoked)
                    const canvas = document.createElement("canvas");
                    canvas.width = picture.naturalWidth;
                    canvas.height = picture.naturalHeight;
                    canvas.getContext("2d").drawImage(picture, 0, 0);
                    png = canvas.toDataURL("image/png");
                }
                const title = card.querySelector("h3");
                const description = title?.nextElementSibling?.tagName === "P" ? title.nextElementSibling.innerText : null;
                return {name: card.dataset.testid.replace("template-workflow-", ""), title: title?.innerText, description, png};
            });
        }""")
        (ARTIFACTS / f"{page.frontend}_templates.png").write_bytes(page.page.screenshot())
    finally:
        page.page.remove_listener("response", record)
        page.page.keyboard.press("Escape")
        page.dismiss_dialogs()
    assert sorted(card["name"] for card in shown) == sorted(card["name"] for card in template_cards())
    for card in shown:
        # The card's title is the file name; 1.27 repeats it as the description, with spaces.
        assert card["title"] == card["name"], card
        assert card["description"] in (None, card["name"].replace("_", " ")), card
    files = {name: np.asarray(Image.open(REPO_ROOT / "workflows" / f"{name}.jpg").convert("RGB"), dtype=np.int16)
             for name in WORKFLOW_NAMES}
    pictures = [card for card in shown if card["png"]]
    assert len(pictures) >= 2, [card["name"] for card in shown]
    for card in pictures:
        png = base64.b64decode(card["png"].split(",", 1)[1])
        picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
        assert picture.shape[0] == picture.shape[1], card["name"]
        # Its own picture: the file it names, as closely as two JPEG decoders agree.
        distance = {name: float(np.abs(picture - pixels).mean()) if pixels.shape == picture.shape else np.inf
                    for name, pixels in files.items()}
        assert min(distance, key=distance.get) == card["name"] and distance[card["name"]] < 2, (card["name"], distance)
    assert served and set(served.values()) == {200}, served
    assert {url.rsplit("/", 1)[-1] for url in served} <= {f"{name}.jpg" for name in WORKFLOW_NAMES}


def test_help_pages_show_as_lists(session: FrontendSession) -> None:
    page = session.page
    page.load(load_ui_workflow("amdm_three_members_guider"))
    text = page.open_node_help(page.node_id("ModelStack"))
    assert "Adds one member to an AMDM stack" in " ".join(text.split())
    help_content = page.page.locator(".node-help-content:visible").first
    # Inputs as a list, not a table that the side panel would cut.
    assert help_content.locator("table").count() == 0
    assert help_content.locator("li code", has_text="deviation").count() >= 1
    box = help_content.bounding_box()
    (ARTIFACTS / f"{session.page.frontend}_help.png").write_bytes(page.page.screenshot(clip=box))
    page.page.keyboard.press("Escape")
    if session.page.frontend.current:
        page.set_setting("Comfy.RightSidePanel.IsOpen", False)


def test_schedule_chart_without_a_stack_shows_the_curve(session: FrontendSession) -> None:
    page = session.page
    page.load({"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [],
               "config": {}, "extra": {}, "version": 0.4})
    node_id = page.page.evaluate("""() => {
        const node = LiteGraph.createNode("AggregationSchedule");
        app.graph.add(node);
        node.widgets.find((w) => w.name === "weight_curve").value = "linear_decay";
        return node.id;
    }""")
    page.frame_node(node_id)
    view = page.chart_view(node_id)
    assert view["connected"] is False and view["exact"] is False
    assert view["stepCount"] == 20
    # Defaults: end_percent 0.4 of 20 "simple" steps -> steps 0-7; others fade as 1 - j/8.
    assert view["inWindow"] == list(range(8))
    assert [row[1] for row in view["shares"][:9]] == pytest.approx([1 - j / 8 for j in range(8)] + [0])
    image = page.node_image(node_id, "schedule_unconnected.png")
    assert colour_pixels(image, MEMBER_RGB[0]) > 100


def test_chart_follows_a_flow_models_shift(session: FrontendSession, comfy, sd15) -> None:
    """A ModelSamplingSD3 node on the target's model path: the chart samples on the flow
    sigmas of its shift, like the sampler does (karras spaces them by sigma, so the shift
    moves the window's end)."""
    from comfy.samplers import KSampler

    page = session.page
    page.load(load_ui_workflow("amdm_two_members"))
    schedule = page.node_id("AggregationSchedule")
    page.page.evaluate("""() => {
        const stack = app.graph.nodes.filter((n) => n.type === "ModelStack")
            .find((n) => !n.getInputLink(n.inputs.findIndex((i) => i.name === "stack")));
        const link = stack.getInputLink(stack.inputs.findIndex((i) => i.name === "model"));
        const loader = app.graph.getNodeById(link.origin_id);
        const shift = LiteGraph.createNode("ModelSamplingSD3");
        app.graph.add(shift);
        shift.widgets.find((w) => w.name === "shift").value = 3.0;
        loader.connect(link.origin_slot, shift, 0);
        shift.connect(0, stack, "model");
        const scheduler = app.graph.nodes.find((n) => n.type === "AMDMSampler").widgets
            .find((w) => w.name === "scheduler");
        scheduler.value = "karras";
        scheduler.callback?.(scheduler.value);
    }""")
    view = page.chart_view(schedule)
    model = comfy.run("ModelSamplingSD3", model=sd15.model, shift=3.0)[0]
    sigmas = KSampler(model, steps=25, device="cpu", sampler="euler", scheduler="karras",
                      model_options=model.model_options).sigmas
    end = model.get_model_object("model_sampling").percent_to_sigma(0.4)
    assert view["family"] == "ModelSamplingSD3 shift 3"
    assert view["inWindow"] == [k for k in range(25) if sigmas[k] > end] == [0, 1]


def test_queue_from_the_page_completes(session: FrontendSession) -> None:
    page, server = session.page, session.server
    page.load(load_ui_workflow("amdm_two_members"))
    shrink_loaded_graph(page)
    # Both members on one checkpoint (one model to load on a fresh server), two steps (the
    # first aggregated).
    page.page.evaluate("""(name) => {
        for (const node of app.graph.nodes) {
            const set = (widget, value) => {
                const found = node.widgets?.find((w) => w.name === widget);
                if (found) found.value = value;
            };
            if (node.type === "CheckpointLoaderSimple") set("ckpt_name", name);
            if (node.type === "AMDMSampler") set("steps", 2);
        }
    }""", CHECKPOINT_NAMES[0])
    # A seed no other test uses, so that the server samples instead of replaying its cache.
    sampler = page.node_id("AMDMSampler")
    page.page.evaluate("([id, seed]) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'seed').value = seed; }",
                       [sampler, time.time_ns() % 2**32])
    known = set(history(server.url))

    page.page.evaluate("async () => { await app.queuePrompt(0, 1); }")

    deadline = time.monotonic() + 600
    new: list[str] = []
    while time.monotonic() < deadline:
        entries = history(server.url)
        new = [prompt_id for prompt_id in entries if prompt_id not in known]
        if new and entries[new[0]]["status"].get("completed") is not None:
            break
        time.sleep(1)
    assert len(new) == 1, "the page queued nothing"
    entry = history(server.url)[new[0]]
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = saved_images(entry)
    assert len(images) == 1
    path = Path(server.output_dir) / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_nothing_logged_from_the_pack(session: FrontendSession) -> None:
    """Every test above ran on this page; none of it made the pack's files log an error or a
    warning (deprecated frontend APIs included)."""
    assert session.page.log.from_pack() == []


# ---------------------------------------------------------------------- the chart's data


def window_cases() -> Iterator[dict]:
    """Sampler settings spanning every scheduler, denoise < 1, the penultimate-sigma samplers,
    percent windows and step limits."""
    from comfy.samplers import KSampler

    windows = [(0.0, 0.4, 0, 0), (0.1, 0.65, 0, 0), (0.0, 1.0, 2, 6), (0.3, 0.31, 0, 0), (0.0, 1.0, 0, 0)]
    for scheduler in KSampler.SCHEDULERS:
        for steps, denoise, sampler in ((5, 1.0, "euler"), (20, 0.6, "dpm_2"), (30, 1.0, "uni_pc")):
            for start, end, start_step, end_step in windows:
                yield {"sampler": {"scheduler": scheduler, "steps": steps, "denoise": denoise, "sampler_name": sampler},
                       "schedule": {"start_percent": start, "end_percent": end,
                                    "start_step": start_step, "end_step": end_step}}


def test_chart_route_window_is_the_samplers_window(comfy_server, comfy, pack, sd15, encode) -> None:
    """The route's sigmas and window against AMDMGuider.window on the sigmas KSampler computes
    for the target model of a real SD1.5 checkpoint (and with a flow shift applied to it)."""
    from comfy.samplers import KSampler
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import AMDMGuider, Member

    base, clip, _ = sd15
    conditioning = encode(clip, "a cat")
    flow = comfy.run("ModelSamplingSD3", model=base, shift=3.0)[0]
    cases = list(window_cases())
    mismatches, windows = [], 0
    for model, chain in ((base, []), (flow, [{"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}}])):
        members = [Member(model, conditioning, conditioning, 7.0), Member(model, conditioning, conditioning, 7.0)]
        for case in cases:
            settings = case["sampler"]
            sigmas = KSampler(model, steps=settings["steps"], device="cpu", sampler=settings["sampler_name"],
                              scheduler=settings["scheduler"], denoise=settings["denoise"],
                              model_options=model.model_options).sigmas
            # Member 2, not the target and with no range of its own, steps in the window.
            expected = AMDMGuider(members, Schedule(**case["schedule"])).plan(sigmas).active[1]
            answer = post_chart(comfy_server.url, {"schedule": case["schedule"], "members": [{"weight": 1}] * 2,
                                                   "model_sampling": chain, "sigmas": {"sampler": settings}})
            windows += len(expected)
            if not np.allclose(answer["sigmas"], sigmas.tolist(), rtol=1e-5, atol=1e-6) or \
                    answer["window"] != [expected.start, expected.stop]:
                mismatches.append((chain, case, [expected.start, expected.stop], answer["window"]))
    assert windows > len(cases)
    assert mismatches == []


@pytest.mark.parametrize("file_name, family", [("sd3.5_large.safetensors", "SD3"),
                                               ("wan2.1_t2v_1.3B_fp16.safetensors", "WAN21_T2V")])
def test_chart_route_reads_the_family_from_the_loaders_file(family_server, pack, load_family_model,
                                                            file_name, family) -> None:
    """A flow model loaded by UNETLoader with no ModelSampling node after it: the route
    detects the family from the file (tensor names and shapes) and charts the window the
    sampler takes on that model's own sigmas, not SD1.x's."""
    from comfy.samplers import KSampler
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import AMDMGuider, Member

    model = load_family_model(file_name)
    settings = {"steps": 20, "scheduler": "karras", "sampler_name": "euler", "denoise": 1.0}
    sigmas = KSampler(model, steps=20, device="cpu", sampler="euler", scheduler="karras",
                      model_options=model.model_options).sigmas
    expected = AMDMGuider([Member(model, [], [], 1.0)] * 2, Schedule()).plan(sigmas).active[1]
    request = {"schedule": {}, "members": [{"weight": 1}] * 2, "sigmas": {"sampler": settings}}
    loader = {"class_type": "UNETLoader", "inputs": {"unet_name": file_name, "weight_dtype": "default"}}
    answer = post_chart(family_server.url, {**request, "loader": loader})
    assert answer["family"] == family
    np.testing.assert_allclose(answer["sigmas"], sigmas.tolist(), rtol=1e-5, atol=1e-6)
    assert answer["window"] == [expected.start, expected.stop]
    assumed = post_chart(family_server.url, {**request, "loader": {**loader, "class_type": "SomeLoader"}})
    assert assumed["family"] == "SD1/SDXL sigmas (assumed)"
    assert assumed["window"] != answer["window"]


def test_chart_route_runs_the_sigmas_nodes(comfy_server, comfy, sd15) -> None:
    """SIGMAS nodes behind AMDMGuider: the route runs ComfyUI's own nodes on the model family."""
    basic = comfy.run("BasicScheduler", model=sd15.model, scheduler="karras", steps=12, denoise=0.7)[0]
    expected = comfy.run("SplitSigmas", sigmas=basic, step=3)[0]
    graph = {"nodes": {"4": {"class_type": "BasicScheduler", "inputs": {"scheduler": "karras", "steps": 12, "denoise": 0.7}},
                       "7": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4", 0], "step": 3}}},
             "output": ["7", 0]}
    answer = post_chart(comfy_server.url, {"schedule": {"end_percent": 1.0}, "members": [], "sigmas": graph})
    assert answer["exact"] is True and answer["note"] is None
    assert np.allclose(answer["sigmas"], expected.tolist(), rtol=1e-5)
    assert answer["window"] == [0, 3]

    unknown = {"nodes": {"1": {"class_type": "VAEDecode", "inputs": {}}}, "output": ["1", 0]}
    answer = post_chart(comfy_server.url, {"schedule": {}, "members": [], "sigmas": unknown})
    assert answer["exact"] is False and "does not produce SIGMAS" in answer["note"]


def test_chart_route_shares_are_the_samplers_coefficients(comfy_server, pack, sd15) -> None:
    """The route's ranges and shares against the sampler's plan for the same members, on the
    sigmas KSampler computes for an SD1.5 model (the route assumes SD1.x sigmas without a
    loader)."""
    from comfy.samplers import KSampler
    from comfyui_amdm.amdm_core import Schedule, StepRange, member_coefficients
    from comfyui_amdm.nodes import AMDMGuider, Member

    sigmas = KSampler(sd15.model, steps=10, device="cpu", sampler="euler", scheduler="simple",
                      model_options=sd15.model.model_options).sigmas

    def sampler_plan(schedule: dict, weights: list[float], ranges: list[StepRange | None]) -> Any:
        members = [Member(sd15.model, [], [], 7.0, weight=w, step_range=r) for w, r in zip(weights, ranges)]
        return AMDMGuider(members, Schedule(**schedule)).plan(sigmas)

    schedule = {"end_percent": 0.5, "aggregation": "paper", "weight_curve": "cosine_decay", "target_member": 2}
    weights = [0.5, 1.0, 2.0]
    answer = post_chart(comfy_server.url, {"schedule": schedule, "members": [{"weight": w} for w in weights],
                                           "sigmas": {"sampler": {"steps": 10, "scheduler": "simple"}}})
    plan = sampler_plan(schedule, weights, [None] * 3)
    [window] = plan.windows.values()
    assert answer["window"] == [window.steps.start, window.steps.stop] == [0, 5]
    assert answer["ranges"] == [[r.start, r.stop] for r in plan.active] == [[0, 5], [0, 10], [0, 5]]
    assert np.allclose(answer["shares"][0:5], [member_coefficients(row, "paper").tolist() for row in window.weights])
    assert answer["shares"][5:] == [[0.0, 1.0, 0.0]] * 5

    # Ranges of the members' own: member 1 alone, both across the overlap, member 2 alone.
    ranges = [{"end_percent": 0.6}, {"start_percent": 0.4}]
    overlap = {"target_member": 2, "aggregation": "linear"}
    answer = post_chart(comfy_server.url, {"schedule": overlap, "members": [{"weight": 1.0, **r} for r in ranges],
                                           "sigmas": {"sampler": {"steps": 10, "scheduler": "simple"}}})
    plan = sampler_plan(overlap, [1.0, 1.0], [StepRange(end_percent=0.6), StepRange(start_percent=0.4)])
    [window] = plan.windows.values()
    assert answer["ranges"] == [[r.start, r.stop] for r in plan.active] == [[0, 6], [4, 10]]
    assert answer["problem"] is None
    first, stop = window.steps.start, window.steps.stop
    assert answer["shares"][:first] == [[1.0, 0.0]] * first and answer["shares"][stop:] == [[0.0, 1.0]] * (10 - stop)
    assert np.allclose(answer["shares"][first:stop], [member_coefficients(row, "linear").tolist() for row in window.weights])

    # What the sampler would refuse is the chart's message.
    refused = post_chart(comfy_server.url, {"schedule": {"start_percent": 0.6, "end_percent": 0.5}, "members": []})
    assert "end_percent" in refused["problem"] and refused["window"] == [20, 20]
    assert post_chart(comfy_server.url, {"schedule": {"target_member": 3}, "members": [{"weight": 1}] * 2})["problem"] \
        == "target_member 3 > 2 member(s)"
    gap = post_chart(comfy_server.url, {"schedule": {}, "members": [{"end_percent": 0.3}, {"start_percent": 0.6}]})
    assert "in no member's range" in gap["problem"]


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
        assert "|---|" not in text, f"{node_type}.md has a table: the side panel cuts its columns"
