"""Write an example's UI workflow (workflows/<name>.json) from its API twin and a layout.

The API file (workflows/api/<name>.json) is the graph: node ids, class types, widget values
and links, and each node's title in ``_meta``. The layout below says only where the nodes
go: groups in rows on the left, one per member (its loader, prompts and AMDM Model Stack)
plus one for what the members share, each in columns (groups of the same widths one above
the other line up); the other nodes in columns to the right; a note with the example's model
files. The UI file is what ComfyUI's editor saves (LiteGraph's format): widget values in the
order the server's /object_info declares the node's inputs, a "control after generate" value
after a seed, linked widgets as widget inputs, node sizes that hold their widgets (the
schedule node its chart), and a view that frames the whole graph.

Nodes are spaced by their height in either renderer: the classic canvas draws a node at the
size the file gives, Nodes 2.0 (Vue nodes) makes it as tall as its content, taller for most
nodes (the pack's nodes carry a badge row). The script checks that no node overlaps another
node or a group it is not in.

Usage: python3 scripts/workflow_layout.py NAME [NAME ...] [--object-info FILE]

Without --object-info it starts a ComfyUI server with this pack (as the tests do) and reads
/object_info from it. tests/test_workflows.py checks that each UI file converts back to its
API twin.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"

# LiteGraph's geometry (frontend units at zoom 1).
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
TEXT_BOX_HEIGHT = 110  # a multiline STRING widget
NODE_PADDING = 12
CHART_HEIGHT = 250  # the chart the pack's frontend extension draws inside AggregationSchedule
PREVIEW_HEIGHT = 260  # the image an output node shows after a run
GROUP_HEADER = 50
GROUP_PADDING = 20
GAP = 20
# Body heights (below the title) that Nodes 2.0 gives a node of each type, whatever smaller
# size the file says: the height of its element ([data-node-id]) less the title, for a node
# 300-420 px wide, on frontend 1.58.1.
NODES_2_HEIGHTS = {
    "AggregationSchedule": 614, "AMDMExpertBoundary": 190, "AMDMSampler": 266, "ModelStack": 380,
    "CheckpointLoaderSimple": 102, "CLIPLoader": 114, "CLIPTextEncode": 102, "CLIPTextEncodeSDXLRefiner": 186,
    "EmptyHunyuanLatentVideo": 146, "EmptyLatentImage": 118, "LoraLoaderModelOnly": 90, "ModelSamplingSD3": 62,
    "SaveAnimatedWEBP": 182, "SaveImage": 70, "UNETLoader": 90, "VAEDecode": 54, "VAELoader": 62,
}
# The view a workflow opens with: the whole graph on the canvas of the browser tests' 1400x950
# window (frontend 1.27 takes 40 px of its width for a side bar and 40 px of its height for a menu
# bar), at a zoom where text stays readable.
CANVAS = (1360, 910)
VIEW_MARGIN = 30
MIN_SCALE = 0.6

MEMBER_COLORS = ("#3f5159", "#59503f", "#3f5945")
SHARED_COLOR = "#444"
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPE = "MarkdownNote"

logger = logging.getLogger("workflow_layout")


@dataclass(frozen=True)
class Group:
    """A framed box: its nodes in columns (API node ids, top to bottom) of the given widths."""

    title: str
    widths: tuple[int, ...]
    columns: tuple[tuple[str, ...], ...]
    color: str


@dataclass(frozen=True)
class Layout:
    rows: tuple[tuple[Group, ...], ...]  # of groups, top to bottom; a row's groups side by side
    # Right of the first row of groups; the rows below may reach under them where the columns
    # end higher up. "note" is the note.
    columns: tuple[tuple[str, ...], ...]
    column_widths: tuple[int, ...]
    note: str
    note_height: int = 330


def member_group(number: int, title: str, widths: tuple[int, ...], *columns: tuple[str, ...]) -> Group:
    return Group(f"Member {number}: {title}", widths, columns, MEMBER_COLORS[(number - 1) % len(MEMBER_COLORS)])


def shared_group(title: str, widths: tuple[int, ...], *columns: tuple[str, ...]) -> Group:
    return Group(title, widths, columns, SHARED_COLOR)


LAYOUTS: dict[str, Layout] = {
    "amdm_wan22_t2v_experts": Layout(
        rows=((member_group(1, "Wan 2.2 high-noise expert (first steps)", (320, 420), ("1", "5"), ("10",)),),
              (member_group(2, "Wan 2.2 low-noise expert (last steps, target)", (320, 420), ("2", "6"), ("11",)),),
              (shared_group("Prompts, text encoder, VAE", (320, 420, 420), ("3", "4"), ("7",), ("8",)),)),
        columns=(("9", "12"), ("13", "14", "15"), ("16", "note")),
        column_widths=(330, 320, 340),
        note="""## Wan 2.2 A14B: two experts, one AMDM stack

Wan 2.2 text-to-video is a mixture of two 14B experts: the **high-noise** expert lays out the
first steps, the **low-noise** expert finishes. **AMDM Expert Boundary** computes where the
reference switches (timestep 0.875 of 1000 on the shifted schedule) and feeds each Model
Stack's range: the high-noise expert ends there, the low-noise one starts there.

- **overlap 0**: hard switch, bit for bit the two-KSamplerAdvanced chain. 20 steps with shift 8:
  11 high-noise + 9 low-noise steps; one expert in memory at a time.
- **overlap 0.1**: both experts step across the boundary (steps 10 and 11: 12 + 10 steps) and are
  merged; the high-noise expert's weight fades out (`linear_decay`), guidance `averaged`.

Files (Comfy-Org/Wan_2.2_ComfyUI_Repackaged, `split_files/`):
- `diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors`
- `diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors`
- `text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`
- `vae/wan_2.1_vae.safetensors`""",
        note_height=520),
    "amdm_sd15_hyper_stages": Layout(
        rows=((member_group(1, "base alone, cfg 6 (steps 0-1)", (300, 380, 320), ("1",), ("2", "3"), ("6",)),),
              (member_group(2, "Hyper-SD 0.5, cfg 2 (steps 2-3)", (490,), ("4", "7")),
               member_group(3, "Hyper-SD 1.0, cfg 1 (steps 4-7, target)", (490,), ("5", "8")))),
        columns=(("10", "9"), ("11", "12", "13", "note")),
        column_widths=(320, 340),
        note="""## Three stages on one checkpoint

One SD1.5 checkpoint in three stages, each a Model Stack with its own range of steps
(`start_step` / `end_step`), its own LoRA strength and its own cfg: the base alone at cfg 6
for steps 0-1 (composition, negative prompt), the Hyper-SD 8-step LoRA at 0.5 and cfg 2 for
steps 2-3, at full strength and cfg 1 for steps 4-7. Ranges that touch hand the latent over,
as a chain of KSamplerAdvanced nodes would; 8 euler / sgm_uniform steps: 2 + 2 + 4.

- `models/checkpoints/dreamshaper_8.safetensors` (any SD1.5 checkpoint)
- `models/loras/Hyper-SD15-8steps-lora.safetensors`: Hugging Face `ByteDance/Hyper-SD`""",
        note_height=320),
    "amdm_sdxl_refiner": Layout(
        rows=((member_group(1, "SDXL base (first 80 %)", (300, 380, 320), ("1",), ("3", "4"), ("7",)),),
              (member_group(2, "SDXL refiner (last 20 %, target)", (300, 380, 320), ("2",), ("5", "6"), ("8",)),)),
        columns=(("10", "9"), ("11", "12", "13", "note")),
        column_widths=(320, 340),
        note="""## SDXL base, then the refiner

The SDXL base takes the first 80 % of the denoising (`end_percent` 0.8), the refiner the
rest (`start_percent` 0.8), each with its own prompts: the refiner's through **CLIP Text
Encode SDXL Refiner** (aesthetic score 6 for the positive, 2.5 for the negative). 25 euler /
normal steps: 20 base + 5 refiner, as the two-KSamplerAdvanced graph does it.

- `models/checkpoints/sd_xl_base_1.0.safetensors`: Hugging Face
  `stabilityai/stable-diffusion-xl-base-1.0`
- `models/checkpoints/sd_xl_refiner_1.0.safetensors`: Hugging Face
  `stabilityai/stable-diffusion-xl-refiner-1.0`""",
        note_height=300),
}


# ----------------------------------------------------------------------------- node shapes

def declared_inputs(info: dict) -> Iterator[tuple[str, list, bool]]:
    """(name, spec, optional) of a node type's inputs, in the order the frontend shows them."""
    inputs = info["input"]
    order = info.get("input_order") or {kind: list(inputs.get(kind, {})) for kind in ("required", "optional")}
    for kind in ("required", "optional"):
        for name in order.get(kind, []):
            yield name, inputs[kind][name], kind == "optional"


def spec_options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_kind(spec: list) -> str | None:
    """'COMBO', 'INT', ... for an input the frontend shows as a widget; None for a socket."""
    kind, options = spec[0], spec_options(spec)
    if options.get("forceInput"):
        return None
    if isinstance(kind, list):
        return "COMBO"
    return kind if kind in WIDGET_KINDS else None


def has_control_widget(name: str, kind: str, options: dict) -> bool:
    """Whether the frontend adds a 'control after generate' widget after this one."""
    if kind == "INT":
        return bool(options.get("control_after_generate", name in ("seed", "noise_seed")))
    return kind == "COMBO" and bool(options.get("control_after_generate", False))


def node_height(info: dict, class_type: str) -> int:
    """The height of a node's body that holds its sockets and widgets."""
    sockets = widgets = extra = 0
    for name, spec, _ in declared_inputs(info):
        kind = widget_kind(spec)
        if kind is None:
            sockets += 1
            continue
        widgets += 1 + has_control_widget(name, kind, spec_options(spec))
        if kind == "STRING" and spec_options(spec).get("multiline"):
            extra += TEXT_BOX_HEIGHT - WIDGET_HEIGHT
    if class_type == "AggregationSchedule":
        extra += CHART_HEIGHT
    if info.get("output_node"):
        extra += PREVIEW_HEIGHT
    rows = max(sockets, len(info["output"]))
    return rows * SLOT_HEIGHT + widgets * WIDGET_HEIGHT + extra + NODE_PADDING


# ----------------------------------------------------------------------------- the workflow

def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def execution_order(prompt: dict) -> list[str]:
    """Node ids with every node after the nodes it reads from."""
    ordered: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in ordered:
            return
        for value in prompt[node_id]["inputs"].values():
            if is_link(value):
                visit(value[0])
        ordered.append(node_id)

    for node_id in sorted(prompt, key=int):
        visit(node_id)
    return ordered


def place(layout: Layout, heights: dict[str, int]) -> tuple[dict[str, tuple[int, int, int]], list[dict]]:
    """Every node's (x, y, width), y being the top of its body (below its title), and the
    groups' boxes; ``heights``: the body height each node takes in the taller renderer."""
    positions: dict[str, tuple[int, int, int]] = {}
    groups = []
    top = 0
    for row in layout.rows:
        left, bottom = 0, top
        for group in row:
            group_bottom = top + GROUP_HEADER
            x = left + GROUP_PADDING
            for node_ids, width in zip(group.columns, group.widths, strict=True):
                y = top + GROUP_HEADER
                for node_id in node_ids:
                    positions[node_id] = (x, y + TITLE_HEIGHT, width)
                    y += TITLE_HEIGHT + heights[node_id] + GAP
                group_bottom = max(group_bottom, y - GAP + GROUP_PADDING)
                x += width + GAP
            right = x - GAP + GROUP_PADDING
            groups.append({"id": len(groups) + 1, "title": group.title, "bounding": [left, top, right - left, 0],
                           "color": group.color, "font_size": 24, "flags": {}})
            left, bottom = right + GAP, max(bottom, group_bottom)
        for box in groups[-len(row):]:  # a row's groups are as tall as its tallest
            box["bounding"][3] = bottom - top
        top = bottom + GAP
    first_row_end = groups[len(layout.rows[0]) - 1]["bounding"]  # the first row's last group
    x = first_row_end[0] + first_row_end[2] + 2 * GAP
    for node_ids, width in zip(layout.columns, layout.column_widths, strict=True):
        y = 0
        for node_id in node_ids:
            positions[node_id] = (x, y + TITLE_HEIGHT, width)
            y += TITLE_HEIGHT + heights[node_id] + GAP
        x += width + GAP
    return positions, groups


Box = tuple[int, int, int, int]  # left, top, right, bottom


def node_boxes(positions: dict[str, tuple[int, int, int]], heights: dict[str, int]) -> dict[str, Box]:
    """Each node's box, title bar included."""
    return {node_id: (x, y - TITLE_HEIGHT, x + width, y + heights[node_id])
            for node_id, (x, y, width) in positions.items()}


def group_boxes(groups: list[dict]) -> list[Box]:
    return [(left, top, left + width, top + height) for left, top, width, height in (g["bounding"] for g in groups)]


def overlapping(first: Box, second: Box) -> bool:
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


def check_no_overlaps(layout: Layout, boxes: dict[str, Box], groups: list[dict]) -> None:
    """No node overlaps another node, or a group it is not in."""
    node_ids = list(boxes)
    for index, first in enumerate(node_ids):
        for second in node_ids[index + 1:]:
            if overlapping(boxes[first], boxes[second]):
                raise SystemExit(f"nodes {first} and {second} overlap: make room in the layout")
    laid_out_groups = [group for row in layout.rows for group in row]
    for node_id, box in boxes.items():
        under = [number for number, group_box in enumerate(group_boxes(groups)) if overlapping(box, group_box)]
        home = [number for number, group in enumerate(laid_out_groups) if any(node_id in c for c in group.columns)]
        if under != home:
            raise SystemExit(f"node {node_id} overlaps a group it is not in: make room in the layout")


def view(boxes: list[Box]) -> dict:
    """extra.ds: the zoom and offset at which all the boxes (nodes and groups) are centred on
    the canvas."""
    left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
    width, height = max(b[2] for b in boxes) - left, max(b[3] for b in boxes) - top
    scale = min(1.0, (CANVAS[0] - 2 * VIEW_MARGIN) / width, (CANVAS[1] - 2 * VIEW_MARGIN) / height)
    scale = int(scale * 100) / 100
    if scale < MIN_SCALE:
        raise SystemExit(f"the graph ({width}x{height}) needs zoom {scale} to fit the canvas; "
                         f"below {MIN_SCALE} its text is unreadable: make the layout more compact")
    offset = [round(-left + (CANVAS[0] / scale - width) / 2, 1), round(-top + (CANVAS[1] / scale - height) / 2, 1)]
    return {"scale": scale, "offset": offset}


def ui_workflow(prompt: dict, layout: Layout, object_info: dict) -> dict:
    """The LiteGraph workflow of an API prompt, laid out as ``layout`` says."""
    laid_out = [node_id for row in layout.rows for group in row for column in group.columns for node_id in column] + \
               [node_id for column in layout.columns for node_id in column if node_id != "note"]
    if sorted(laid_out, key=int) != sorted(prompt, key=int):
        raise SystemExit(f"the layout places nodes {sorted(laid_out, key=int)}, the prompt has "
                         f"{sorted(prompt, key=int)}")
    note_id = str(max(map(int, prompt)) + 1)
    heights = {node_id: node_height(object_info[node["class_type"]], node["class_type"])
               for node_id, node in prompt.items()}
    heights["note"] = layout.note_height
    unmeasured = sorted({node["class_type"] for node in prompt.values()} - set(NODES_2_HEIGHTS))
    if unmeasured:
        raise SystemExit(f"NODES_2_HEIGHTS has no height for {', '.join(unmeasured)}: measure it under Nodes 2.0")
    taller = dict(heights)  # the note is as tall as the file says in either renderer
    for node_id, node in prompt.items():
        taller[node_id] = max(heights[node_id], NODES_2_HEIGHTS[node["class_type"]])
    positions, groups = place(layout, taller)
    boxes = node_boxes(positions, taller)
    check_no_overlaps(layout, boxes, groups)

    links: list[list] = []
    outgoing: dict[tuple[str, int], list[int]] = {}
    nodes = []
    for order, node_id in enumerate(execution_order(prompt)):
        node = prompt[node_id]
        class_type, given = node["class_type"], node["inputs"]
        info = object_info[class_type]
        sockets, widget_values = [], []
        for name, spec, optional in declared_inputs(info):
            kind, options, value = widget_kind(spec), spec_options(spec), given.get(name)
            slot = {"name": name, "type": spec[0] if kind is None else kind}
            if kind is not None:
                if name not in given:
                    raise SystemExit(f"node {node_id} ({class_type}): no value for widget {name!r}")
                widget_values.append(options.get("default") if is_link(value) else value)
                if has_control_widget(name, kind, options):
                    widget_values.append("fixed")
                if not is_link(value):
                    continue
                slot["widget"] = {"name": name}
            if optional:
                slot["shape"] = 7
            slot["link"] = None
            if is_link(value):
                link_id = len(links) + 1
                source = prompt[value[0]]["class_type"]
                links.append([link_id, int(value[0]), value[1], int(node_id), len(sockets),
                              object_info[source]["output"][value[1]]])
                outgoing.setdefault((value[0], value[1]), []).append(link_id)
                slot["link"] = link_id
            sockets.append(slot)
        unknown = set(given) - {name for name, _, _ in declared_inputs(info)}
        if unknown:
            raise SystemExit(f"node {node_id} ({class_type}): inputs {sorted(unknown)} are not the server's")
        x, y, width = positions[node_id]
        entry: dict[str, Any] = {"id": int(node_id), "type": class_type, "pos": [x, y],
                                 "size": [width, heights[node_id]], "flags": {}, "order": order, "mode": 0,
                                 "inputs": sockets, "outputs": []}
        title = node.get("_meta", {}).get("title")
        if title and title != info.get("display_name", class_type):
            entry["title"] = title
        entry["properties"] = {"Node name for S&R": class_type}
        if widget_values:
            entry["widgets_values"] = widget_values
        nodes.append(entry)
    for entry in nodes:
        info = object_info[entry["type"]]
        entry["outputs"] = [{"name": name, "type": kind, "links": outgoing.get((str(entry["id"]), slot), [])}
                            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    x, y, width = positions["note"]
    nodes.append({"id": int(note_id), "type": NOTE_TYPE, "pos": [x, y], "size": [width, layout.note_height],
                  "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                  "title": "About this workflow", "properties": {}, "widgets_values": [layout.note],
                  "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR})
    return {"revision": 0, "last_node_id": int(note_id), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": groups, "config": {},
            "extra": {"ds": view([*boxes.values(), *group_boxes(groups)]), "frontendVersion": "1.27.10"},
            "version": 0.4}


def server_object_info() -> dict:
    """/object_info of a ComfyUI server started with this pack, as the tests start it."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.comfy_server import ComfyServer

    with tempfile.TemporaryDirectory(prefix="amdm-layout-") as base:
        server = ComfyServer(Path(base), Path(base) / "comfyui.log")
        server.start()
        try:
            server.require_pack()
            return server.object_info()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(LAYOUTS), metavar="NAME",
                        help=f"example names: {', '.join(sorted(LAYOUTS))}")
    parser.add_argument("--object-info", type=Path, help="a saved /object_info answer (default: start a server)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    object_info = (json.loads(arguments.object_info.read_text(encoding="utf-8")) if arguments.object_info
                   else server_object_info())
    for name in arguments.names:
        prompt = json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text(encoding="utf-8"))
        workflow = ui_workflow(prompt, LAYOUTS[name], object_info)
        path = WORKFLOWS_DIR / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        logger.info("wrote %s", path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
