"""The pack's nodes are V3 nodes, and a workflow saved with the first (V1) nodes loads unchanged:
/object_info differs from the one recorded with the V1 nodes only by what the V3 schema adds
and by inputs added at the end of a node's optional list (where a saved workflow's widget
values do not reach), on each ComfyUI release the suite runs on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.comfy_env import REPO_ROOT

RECORDED = Path(__file__).resolve().parent / "data"
# Inputs added since the recording, each at the end of its node's optional inputs.
ADDED_INPUTS = {"ModelStack": ["start_percent", "end_percent", "start_step", "end_step"],
                "AMDMGuider": ["member_previews"], "AMDMSampler": ["member_previews"]}
ADDED_NODES = {"AMDMExpertBoundary"}
# Fields of a node's and an input's description that the V3 schema adds to what V1 gives.
V3_NODE_FIELDS = {"search_aliases", "essentials_category", "api_node", "price_badge", "is_input_list",
                  "has_intermediate_output", "deprecated", "experimental", "dev_only"}
V3_INPUT_FIELDS = {"multiselect"}
# Options the V3 schema writes out where V1 left them unset, at the value unset means.
V1_UNSET = {"multiline": False}


def recorded_info(version: str) -> dict:
    return json.loads((RECORDED / f"object_info_{version}.json").read_text(encoding="utf-8"))


def combo_choices(spec: list) -> list | None:
    """A combo's choices, in V1 form ([choices, options]) or V3 form (["COMBO", {"options"}])."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" else None


def input_differences(node: str, name: str, old: list, new: list) -> list[str]:
    where = f"{node}.{name}"
    old_options, new_options = (old[1] if len(old) > 1 else {}), (new[1] if len(new) > 1 else {})
    if combo_choices(old) is not None or combo_choices(new) is not None:
        problems = [] if combo_choices(old) == combo_choices(new) else [f"{where}: choices differ"]
        new_options = {k: v for k, v in new_options.items() if k != "options"}
    else:
        problems = [] if old[0] == new[0] else [f"{where}: type {old[0]} became {new[0]}"]
    old_options, new_options = ({**V1_UNSET, **old_options}, {**V1_UNSET, **new_options})
    problems += [f"{where}: {key} {old_options.get(key)!r} became {new_options.get(key)!r}"
                 for key in (set(old_options) | set(new_options)) - V3_INPUT_FIELDS
                 if old_options.get(key) != new_options.get(key)]
    return problems


def schema_differences(old: dict, new: dict) -> list[str]:
    """What a workflow saved against ``old`` would notice in ``new`` (empty: nothing)."""
    problems = [f"node {node} is gone" for node in old if node not in new]
    problems += [f"node {node} is new" for node in new if node not in old and node not in ADDED_NODES]
    for node in (n for n in old if n in new):
        before, after = old[node], new[node]
        problems += [f"{node}: {field} differs" for field in (set(before) | set(after)) - V3_NODE_FIELDS
                     if field not in ("input", "input_order") and before.get(field) != after.get(field)]
        order_before, order_after = before["input_order"], after["input_order"]
        if order_after.get("required") != order_before.get("required"):
            problems.append(f"{node}: required inputs {order_before['required']} became {order_after['required']}")
        expected = order_before.get("optional", []) + ADDED_INPUTS.get(node, [])
        if order_after.get("optional", []) != expected:
            problems.append(f"{node}: optional inputs {order_after.get('optional')} instead of {expected}")
        for section in ("required", "optional"):
            for name, spec in before["input"].get(section, {}).items():
                problems += input_differences(node, name, spec, after["input"][section][name])
    return problems


def test_every_node_is_a_v3_node_registered_through_an_extension(pack):
    from comfy_api.latest import ComfyExtension, io

    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    import asyncio
    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    nodes = asyncio.run(extension.get_node_list())
    assert nodes and all(issubclass(node, io.ComfyNode) for node in nodes)
    assert {node.GET_SCHEMA().category for node in nodes} == {"sampling/amdm"}


def test_object_info_is_the_recorded_v1_one_plus_v3_additions(comfy_server):
    from comfyui_version import __version__
    info = comfy_server.object_info()
    pack = {name: spec for name, spec in info.items() if spec.get("python_module") == "custom_nodes.comfyui-amdm"}
    recorded = recorded_info(__version__)
    assert schema_differences(recorded, pack) == []
    assert ADDED_NODES <= set(pack)


def test_every_node_has_the_search_aliases_where_comfyui_offers_them(comfy_server):
    """Search aliases ("mix models", "MoE", "handoff"...) reach the node search of a release
    whose V3 schema has the field; a release without it gets none and no error."""
    import dataclasses
    from comfy_api.latest import io
    from comfyui_amdm.nodes.definitions import SEARCH_ALIASES
    info = comfy_server.object_info()
    pack = {name: spec for name, spec in info.items() if spec.get("python_module") == "custom_nodes.comfyui-amdm"}
    offered = "search_aliases" in {field.name for field in dataclasses.fields(io.Schema)}
    aliases = {name: spec.get("search_aliases") for name, spec in pack.items()}
    if not offered:
        assert set(aliases.values()) == {None}
        return
    boundary = aliases.pop("AMDMExpertBoundary")
    assert {"MoE", "handoff", "expert", "boundary"} <= set(boundary)
    assert aliases == {name: SEARCH_ALIASES for name in aliases}


def test_the_comparison_sees_a_moved_widget_and_a_changed_default():
    old = recorded_info("0.3.64")
    moved = json.loads(json.dumps(old))
    optional = moved["ModelStack"]["input_order"]["optional"]
    optional.insert(0, optional.pop())
    moved["AggregationSchedule"]["input"]["required"]["end_percent"][1]["default"] = 0.5
    problems = schema_differences(old, moved)
    assert any("ModelStack: optional inputs" in p for p in problems)
    assert any("AggregationSchedule.end_percent: default 0.4 became 0.5" in p for p in problems)


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO_ROOT / "workflows").glob("*.json")))
def test_saved_workflows_name_only_existing_widgets(comfy_server, name: str) -> None:
    """A saved UI workflow's widget values fill the pack's widgets in order, with none left
    over: the widget list it was saved against is a prefix of today's."""
    info = comfy_server.object_info()
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    for node in workflow["nodes"]:
        spec: Any = info.get(node["type"])
        if spec is None or not spec.get("python_module", "").startswith("custom_nodes"):
            continue
        widgets = [n for section in ("required", "optional") for n, s in spec["input"].get(section, {}).items()
                   if combo_choices(s) is not None or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")]
        values = node.get("widgets_values") or []
        seeds = sum(1 for n in widgets if n == "seed")  # each seed has its control widget's value
        assert len(values) <= len(widgets) + seeds, (name, node["type"], values)
