"""Screenshots of the example workflows and of the schedule drawing, from the real frontend.

Starts a ComfyUI server with this pack and the test fixture models (the test harness's
ComfyServer), opens it in headless Debian Chromium and writes:

* docs/images/<workflow>.png: each example graph;
* docs/images/schedule_chart.png: the AggregationSchedule node of the three-member example;
* workflows/<workflow>.jpg: the thumbnails ComfyUI's template browser shows.

Usage: python3 scripts/screenshots.py [--only NAME ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.comfy_env import find_comfyui  # noqa: E402  (needs the tests dir on sys.path)
from support.comfy_server import ComfyServer  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"
IMAGES_DIR = REPO_ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRAPH_SCALE = 0.8
MAX_VIEWPORT = (2800, 1800)
THUMBNAIL_WIDTH = 640
CHART_WORKFLOW = "amdm_three_members_guider"

logger = logging.getLogger("screenshots")


def open_frontend(page: Page, url: str) -> None:
    """Load ComfyUI and strip the chrome that should not be in a picture of a graph."""
    page.goto(url)
    page.wait_for_function("() => window.app?.graph && window.app.canvas && window.app.extensionManager",
                           timeout=120_000)
    page.wait_for_timeout(1500)
    for _ in range(5):
        if not page.locator(".p-dialog").count():
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    page.evaluate("""async () => {
        const settings = app.extensionManager.setting;
        await settings.set("Comfy.NodeBadge.NodeSourceBadgeMode", "None");
        await settings.set("Comfy.Minimap.Visible", false);
        await settings.set("Comfy.Graph.CanvasMenu", false);
        app.canvas.show_info = false;
        if (!app.extensionManager.focusMode) await app.extensionManager.command.execute("Workspace.ToggleFocusMode");
    }""")
    page.wait_for_timeout(500)


def load_workflow(page: Page, workflow: dict) -> None:
    page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
    page.wait_for_timeout(500)


def frame_graph(page: Page) -> dict:
    """Resize the page so the whole graph fits at GRAPH_SCALE; returns the canvas rectangle."""
    bounds = page.evaluate("""() => {
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        const boxes = [
            ...app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]),
            ...app.graph.groups.map((g) => [g.pos[0], g.pos[1], g.pos[0] + g.size[0], g.pos[1] + g.size[1]]),
        ];
        return [Math.min(...boxes.map((b) => b[0])), Math.min(...boxes.map((b) => b[1])),
                Math.max(...boxes.map((b) => b[2])), Math.max(...boxes.map((b) => b[3]))];
    }""")
    margin = 30
    width = (bounds[2] - bounds[0]) * GRAPH_SCALE + 2 * margin
    height = (bounds[3] - bounds[1]) * GRAPH_SCALE + 2 * margin
    scale = GRAPH_SCALE * min(1.0, MAX_VIEWPORT[0] / width, MAX_VIEWPORT[1] / height)
    width = round((bounds[2] - bounds[0]) * scale + 2 * margin)
    height = round((bounds[3] - bounds[1]) * scale + 2 * margin)
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(500)
    page.evaluate("""([x0, y0, scale, margin]) => {
        const canvas = app.canvas;
        canvas.ds.scale = scale;
        canvas.ds.offset = [-x0 + margin / scale, -y0 + margin / scale];
        canvas.setDirty(true, true);
    }""", [bounds[0], bounds[1], scale, margin])
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    return {"x": 0, "y": 0, "width": width, "height": height}


def frame_node(page: Page, node_type: str, scale: float = 1.5) -> dict:
    """Zoom onto the first node of a type; returns its rectangle on the page."""
    page.set_viewport_size({"width": 900, "height": 1000})
    page.wait_for_timeout(300)
    rect = page.evaluate("""([type, scale]) => {
        const node = app.graph.nodes.find((n) => n.type === type);
        const canvas = app.canvas;
        canvas.ds.scale = scale;
        canvas.ds.offset = [-node.pos[0] + 20 / scale, -node.pos[1] + (20 + LiteGraph.NODE_TITLE_HEIGHT * scale) / scale];
        canvas.setDirty(true, true);
        const box = canvas.canvas.getBoundingClientRect();
        return {x: box.x + 10, y: box.y + 10, width: node.size[0] * scale + 20,
                height: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * scale + 20};
    }""", [node_type, scale])
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    return rect


def thumbnail(png: Path, jpg: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        height = round(image.height * THUMBNAIL_WIDTH / image.width)
        image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS).save(jpg, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="workflow names (default: all)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = arguments.only or sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="amdm-screenshots-") as base:
        server = ComfyServer(Path(base), Path(base) / "comfyui.log")
        server.start()
        try:
            server.require_pack()
            if "UpscaleModelLoader" not in server.object_info():
                # The frontend's model-folder map needs it; without it no loader node can be created.
                raise SystemExit("ComfyUI has no UpscaleModelLoader: install spandrel (pip install spandrel)")
            # The image-to-image example reads ComfyUI's own example picture.
            shutil.copy(find_comfyui() / "input" / "example.png", server.input_dir / "example.png")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
                open_frontend(page, server.url)
                for name in names:
                    load_workflow(page, json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8")))
                    graph_png = IMAGES_DIR / f"{name}.png"
                    page.screenshot(path=str(graph_png), clip=frame_graph(page))
                    thumbnail(graph_png, WORKFLOWS_DIR / f"{name}.jpg")
                    logger.info("wrote %s and %s", graph_png.relative_to(REPO_ROOT),
                                (WORKFLOWS_DIR / f"{name}.jpg").relative_to(REPO_ROOT))
                    if name == CHART_WORKFLOW:
                        chart_png = IMAGES_DIR / "schedule_chart.png"
                        page.screenshot(path=str(chart_png), clip=frame_node(page, "AggregationSchedule"))
                        logger.info("wrote %s", chart_png.relative_to(REPO_ROOT))
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
