"""Screenshots for the README and the template browser, from the real frontend.

Starts a ComfyUI server with this pack, the test fixture models and the current ComfyUI
frontend (the one `bash scripts/setup.sh --browser` installs for the browser tests), opens it
in headless Debian Chromium and writes:

* docs/images/<workflow>.png: each example graph, on the classic canvas;
* workflows/<workflow>.jpg: the cards of ComfyUI's template browser: the graph above the
  title and one-line description of workflows/templates/index.json (the frontends show a
  custom node's template by its file name only, so the picture carries the rest; see
  workflows/README.md);
* docs/images/schedule_chart.png: the AggregationSchedule node of the three-member example;
* docs/images/schedule_chart_ranges.png: the two-member example's chart with member ranges
  of their own: a hard handoff and an aggregated overlap;
* docs/images/renderers.png: that example's member badges and chart on ComfyUI's pinned
  frontend (classic canvas) and on the current one, on the classic canvas and with Nodes
  2.0 (Vue nodes);
* docs/images/help_panel.png: the Model Stack help in the side panel.

Usage: python3 scripts/screenshots.py [--only NAME ...]  (NAME: workflow graphs to redo)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw, ImageFont
from playwright.sync_api import Page, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

# The tests dir must be on sys.path for these: the browser tests' page driver is reused here.
from support import family_models  # noqa: E402
from support.comfy_env import find_comfyui  # noqa: E402
from support.comfy_server import ComfyServer  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS, ComfyPage, Frontend, current_frontend_root  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"
TEMPLATE_INDEX = WORKFLOWS_DIR / "templates" / "index.json"
IMAGES_DIR = REPO_ROOT / "docs" / "images"
GRAPH_SCALE = 0.8
MAX_VIEWPORT = (2800, 1800)
# Both frontends show template pictures in square cards.
CARD_SIZE = 512
CARD_CAPTION_HEIGHT = 150
CHART_WORKFLOW = "amdm_three_members_guider"
RANGES_WORKFLOW = "amdm_two_members"
BACKGROUND = (32, 32, 32)
# Loader inputs naming a model file, and the models folder ComfyUI looks it up in.
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name": "text_encoders",
                 "clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders",
                 "vae_name": "vae", "lora_name": "loras", "gligen_name": "gligen",
                 "control_net_name": "controlnet"}

logger = logging.getLogger("screenshots")


def strip_chrome(page: Page, focus_mode: bool = True) -> None:
    """Hide what should not be in a picture of a graph."""
    page.evaluate("""async (focusMode) => {
        const settings = app.extensionManager.setting;
        await settings.set("Comfy.NodeBadge.NodeSourceBadgeMode", "None");
        await settings.set("Comfy.Minimap.Visible", false);
        await settings.set("Comfy.Graph.CanvasMenu", false);
        app.canvas.show_info = false;
        if (app.extensionManager.focusMode !== focusMode) {
            await app.extensionManager.command.execute("Workspace.ToggleFocusMode");
        }
    }""", focus_mode)
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


def zoom_on_node(page: Page, node_id: int, scale: float = 1.5) -> dict:
    """Zoom onto one node; returns its rectangle on the page."""
    page.set_viewport_size({"width": 900, "height": 1000})
    page.wait_for_timeout(300)
    rect = page.evaluate("""([id, scale]) => {
        const node = app.graph.getNodeById(id);
        const canvas = app.canvas;
        canvas.ds.scale = scale;
        canvas.ds.offset = [-node.pos[0] + 20 / scale, -node.pos[1] + (20 + LiteGraph.NODE_TITLE_HEIGHT * scale) / scale];
        canvas.setDirty(true, true);
        const box = canvas.canvas.getBoundingClientRect();
        return {x: box.x + 10, y: box.y + 10, width: node.size[0] * scale + 20,
                height: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * scale + 20};
    }""", [node_id, scale])
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    return rect


def template_cards() -> dict[str, dict]:
    """The examples' template cards (title, description) by workflow name, in card order."""
    categories = json.loads(TEMPLATE_INDEX.read_text(encoding="utf-8"))
    return {card["name"]: card for category in categories for card in category["templates"]}


def wrapped(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def card_picture(png: Path, jpg: Path, card: dict) -> None:
    """A square template card: the graph above the card's title and description."""
    margin = 20
    sheet = Image.new("RGB", (CARD_SIZE, CARD_SIZE), BACKGROUND)
    with Image.open(png) as image:
        graph = image.convert("RGB")
        graph.thumbnail((CARD_SIZE - 2 * margin, CARD_SIZE - CARD_CAPTION_HEIGHT - margin), Image.LANCZOS)
        sheet.paste(graph, ((CARD_SIZE - graph.width) // 2, (CARD_SIZE - CARD_CAPTION_HEIGHT - graph.height) // 2 + margin // 2))
    draw = ImageDraw.Draw(sheet)
    top = CARD_SIZE - CARD_CAPTION_HEIGHT
    draw.rectangle((0, top, CARD_SIZE, CARD_SIZE), fill=(24, 24, 24))
    size = 36
    while draw.textlength(card["title"], font=ImageFont.load_default(size=size)) > CARD_SIZE - 2 * margin:
        size -= 2
    text_font = ImageFont.load_default(size=24)
    draw.text((margin, top + 16), card["title"], fill=(240, 240, 240), font=ImageFont.load_default(size=size))
    lines = wrapped(draw, card["description"], text_font, CARD_SIZE - 2 * margin)
    if len(lines) > 2:
        raise SystemExit(f"{TEMPLATE_INDEX.relative_to(REPO_ROOT)}: the description of {card['name']} "
                         f"takes {len(lines)} lines on its card; shorten it to two")
    for i, line in enumerate(lines):
        draw.text((margin, top + 66 + 28 * i), line, fill=(185, 185, 185), font=text_font)
    sheet.save(jpg, quality=88)


def load_example(comfy_page: ComfyPage, name: str) -> None:
    comfy_page.load(json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8")))
    comfy_page.page.wait_for_timeout(500)


def graph_view_nodes(comfy_page: ComfyPage) -> list[int]:
    """Members 1 and 2 of the chart example, then its schedule node."""
    members = comfy_page.page.evaluate("""() => app.graph.nodes.filter((n) => n.type === "ModelStack")
        .map((n) => [n.id, n.pos[1]]).sort((a, b) => a[1] - b[1]).map(([id]) => id)""")
    return members[:2] + [comfy_page.node_id("AggregationSchedule")]


def node_pictures(comfy_page: ComfyPage, node_ids: list[int]) -> list[Image.Image]:
    schedule = node_ids[-1]
    comfy_page.chart_view(schedule)
    pictures = []
    for node_id in node_ids:
        png = comfy_page.page.screenshot(clip=comfy_page.frame_node(node_id))
        pictures.append(Image.open(io.BytesIO(png)).convert("RGB"))
    return pictures


def side_by_side(rows: list[tuple[str, list[Image.Image]]], gap: int = 16) -> Image.Image:
    """Rows of pictures, each under its caption, top-aligned on a dark background."""
    caption_height = 26
    width = max(sum(p.width for p in pictures) + gap * (len(pictures) + 1) for _, pictures in rows)
    height = sum(caption_height + max(p.height for p in pictures) + gap for _, pictures in rows) + gap
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = gap
    for caption, pictures in rows:
        draw.text((gap, y + 4), caption, fill=(230, 230, 230), font_size=16)
        y += caption_height
        x = gap
        for picture in pictures:
            sheet.paste(picture, (x, y))
            x += picture.width + gap
        y += max(p.height for p in pictures) + gap
    return sheet


def ranges_chart(comfy_page: ComfyPage) -> Image.Image:
    """The two-member example's chart with ranges of the members' own, member 2 the target:
    a hard handoff at 0.5, then ranges overlapping from 0.4 to 0.6."""
    load_example(comfy_page, RANGES_WORKFLOW)
    schedule = comfy_page.node_id("AggregationSchedule")
    first, second = comfy_page.stack_node_ids()
    comfy_page.set_widget(schedule, "target_member", 2)
    pictures = []
    for end, start in ((0.5, 0.5), (0.6, 0.4)):
        comfy_page.set_widget(first, "end_percent", end)
        comfy_page.set_widget(second, "start_percent", start)
        comfy_page.chart_view(schedule)
        png = comfy_page.page.screenshot(clip=zoom_on_node(comfy_page.page, schedule))
        pictures.append(Image.open(io.BytesIO(png)).convert("RGB"))
    return side_by_side([("Member ranges: #1 until 0.5 and #2 from 0.5 (a hard handoff); "
                          "#1 until 0.6 and #2 from 0.4 (aggregated across the overlap)", pictures)])


def help_panel(comfy_page: ComfyPage, png: Path) -> None:
    """The chart example in a tab of its own, its first member's help open at its inputs."""
    page = comfy_page.page
    strip_chrome(page, focus_mode=False)
    workflow = json.loads((WORKFLOWS_DIR / f"{CHART_WORKFLOW}.json").read_text(encoding="utf-8"))
    page.evaluate("async ([workflow, name]) => { await app.loadGraphData(workflow, true, true, name); }",
                  [workflow, CHART_WORKFLOW])
    page.wait_for_timeout(500)
    comfy_page.open_node_help(graph_view_nodes(comfy_page)[0])
    page.locator(".node-help-content:visible h2", has_text="Inputs").first.evaluate(
        "(heading) => heading.scrollIntoView({block: 'start'})")
    page.mouse.move(1250, 700)  # over the help text: no tooltip of the graph
    page.wait_for_timeout(500)
    page.screenshot(path=str(png))
    comfy_page.close()


def stand_in_model_files(models_dir: Path, names: list[str]) -> None:
    """Empty files under the names the examples' loaders ask for, where the test models
    have none: current frontends outline a loader whose file is missing in red, and the
    pictures show the graphs as a user who has the files sees them. Only the chart route opens
them (an empty file has no model family, so the chart says it assumes one)."""
    for name in names:
        prompt = json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text(encoding="utf-8"))
        for node in prompt.values():
            for input_name, value in node["inputs"].items():
                if input_name in MODEL_FOLDERS and isinstance(value, str):
                    path = models_dir / MODEL_FOLDERS[input_name] / value
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if not path.exists():
                        path.touch()


@contextlib.contextmanager
def example_server(frontend: Frontend) -> Iterator[ComfyServer]:
    """A ComfyUI server with this pack, serving ``frontend``'s package, whose models folders
    hold the test models (the chart reads a loader's file to tell the model family) and
    stand-ins for every other file the examples name."""
    extra_args = ["--front-end-root", str(current_frontend_root())] if frontend.current else []
    with tempfile.TemporaryDirectory(prefix="amdm-screenshots-") as base:
        server = ComfyServer(Path(base), Path(base) / "comfyui.log", extra_args=extra_args)
        server.start()
        try:
            server.require_pack()
            family_models.link_into(server.models_dir)
            stand_in_model_files(server.models_dir, sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json")))
            if "UpscaleModelLoader" not in server.object_info():
                # The frontend's model-folder map needs it; without it no loader node can be created.
                raise SystemExit("ComfyUI has no UpscaleModelLoader: install spandrel (pip install spandrel)")
            # The image-to-image example reads ComfyUI's own example picture.
            shutil.copy(find_comfyui() / "input" / "example.png", server.input_dir / "example.png")
            yield server
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="workflow names (default: all)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = arguments.only or sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
    cards = template_cards()
    missing = [name for name in names if name not in cards]
    if missing:
        raise SystemExit(f"{TEMPLATE_INDEX.relative_to(REPO_ROOT)} has no card for {', '.join(missing)}")
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    family_models.ensure_family_models()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        rows = []
        pinned = Frontend(current=False, renderer="classic")
        with example_server(pinned) as server:
            comfy_page = ComfyPage(browser, server.url, pinned)
            comfy_page.page.set_viewport_size({"width": 1400, "height": 1000})
            load_example(comfy_page, CHART_WORKFLOW)
            rows.append((f"frontend {pinned.version}, classic canvas",
                         node_pictures(comfy_page, graph_view_nodes(comfy_page))))
            comfy_page.close()

        current = Frontend(current=True, renderer="classic")
        with example_server(current) as server:
            comfy_page = ComfyPage(browser, server.url, current)
            page = comfy_page.page
            strip_chrome(page)
            for name in names:
                load_example(comfy_page, name)
                graph_png = IMAGES_DIR / f"{name}.png"
                page.screenshot(path=str(graph_png), clip=frame_graph(page))
                card_picture(graph_png, WORKFLOWS_DIR / f"{name}.jpg", cards[name])
                logger.info("wrote %s and %s", graph_png.relative_to(REPO_ROOT),
                            (WORKFLOWS_DIR / f"{name}.jpg").relative_to(REPO_ROOT))

            load_example(comfy_page, CHART_WORKFLOW)
            schedule = comfy_page.node_id("AggregationSchedule")
            comfy_page.chart_view(schedule)
            chart_png = IMAGES_DIR / "schedule_chart.png"
            page.screenshot(path=str(chart_png), clip=zoom_on_node(page, schedule))
            logger.info("wrote %s", chart_png.relative_to(REPO_ROOT))

            ranges_png = IMAGES_DIR / "schedule_chart_ranges.png"
            ranges_chart(comfy_page).save(ranges_png)
            logger.info("wrote %s", ranges_png.relative_to(REPO_ROOT))

            page.set_viewport_size({"width": 1400, "height": 1000})
            for renderer, caption in (("classic", "classic canvas"), ("vue", "Nodes 2.0 (Vue nodes)")):
                comfy_page.frontend = Frontend(current=True, renderer=renderer)
                comfy_page.set_setting("Comfy.VueNodes.Enabled", renderer == "vue")
                load_example(comfy_page, CHART_WORKFLOW)
                rows.append((f"frontend {current.version}, {caption}",
                             node_pictures(comfy_page, graph_view_nodes(comfy_page))))
            renderers_png = IMAGES_DIR / "renderers.png"
            side_by_side(rows).save(renderers_png)
            logger.info("wrote %s", renderers_png.relative_to(REPO_ROOT))

            comfy_page.set_setting("Comfy.VueNodes.Enabled", False)
            comfy_page.close()
            help_png = IMAGES_DIR / "help_panel.png"
            help_panel(ComfyPage(browser, server.url, current), help_png)
            logger.info("wrote %s", help_png.relative_to(REPO_ROOT))
        browser.close()


if __name__ == "__main__":
    main()
