"""A server route for the AggregationSchedule chart: the window and member shares the sampler uses.

The frontend describes the graph around a schedule node (its widgets, the members' weights,
the ModelSampling nodes on the target's model path, and where the sigmas come from); the
route answers with what the sampler will do for that graph, computed by the code the sampler
runs: ComfyUI's schedulers and SIGMAS nodes on the model family's own ``model_sampling``,
``amdm_core``'s window rule and its member coefficients. So the chart and the sampler cannot
disagree, and no sigma arithmetic is mirrored in JavaScript.

``POST /amdm/chart`` (also under ``/api``), body::

    {"schedule": {widget: value, ...},                  # AggregationSchedule's widgets
     "members": [{"weight": 1.0}, ...],                  # the stack, first member first; [] if none
     "loader": {"class_type": "UNETLoader", "inputs": {"unet_name": ...}} or null,
     "model_sampling": [{"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}}, ...],
     "sigmas": {"sampler": {"steps": 25, "scheduler": "normal", "sampler_name": "euler",
                            "denoise": 1.0}}
            or {"nodes": {id: {"class_type": ..., "inputs": {...}}}, "output": [id, slot]}
            or null}

``loader`` is the node at the start of the target's model path: for CheckpointLoaderSimple and
UNETLoader the route reads the file's header and a few small tensors (not its weights) and takes
the model family ComfyUI's detection gives it; for other loaders, or a file it does not
recognise, the model is taken to be a discrete SD1.x / SDXL one. ``model_sampling`` lists
the ModelSampling nodes between the loader and the stack, loader side first. ``nodes`` is the
API-format graph of SIGMAS nodes feeding SamplerCustomAdvanced (links as ``[id, slot]``); their
MODEL inputs get the target's model. The answer::

    {"steps": S, "sigmas": [...], "window": [first, stop], "shares": [[...] per step],
     "factors": [...], "exact": bool, "family": str, "note": str | null, "problem": str | null}

``exact`` is false when the schedule feeds no sampler, or its SIGMAS nodes cannot be evaluated
(``note`` says why): the chart then assumes ComfyUI's default KSampler settings.
``shares[k][m]`` is member m's coefficient in the merged latent at step k (the target alone,
1, outside the window); ``factors`` the weight curve's factor at each window step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Optional

import torch
from aiohttp import web

from ..amdm_core import (Schedule, curve_factors, member_coefficients, step_weights, validate_weights,
                         window_for)
from . import compat

logger = logging.getLogger(__name__)

ROUTE = "/amdm/chart"
# What the chart assumes when the schedule feeds no sampler: ComfyUI's default KSampler settings.
DEFAULT_SAMPLER = {"steps": 20, "scheduler": "simple", "sampler_name": "euler", "denoise": 1.0}
MAX_GRAPH_DEPTH = 32
_SCHEDULE_FIELDS = {field.name for field in dataclasses.fields(Schedule)}


class ChartError(ValueError):
    """The request describes something the route cannot evaluate; the message says what."""


def _node_class(class_type: str) -> type:
    node_class = compat.node_class(class_type)
    if node_class is None:
        raise ChartError(f"unknown node type {class_type!r}")
    return node_class


def _declared_inputs(node_class: type) -> dict[str, Any]:
    """Input name -> type (a type name, or the list of a combo's choices)."""
    declared = node_class.INPUT_TYPES()
    return {name: spec[0] for section in ("required", "optional")
            for name, spec in declared.get(section, {}).items()}


async def _call_node(node_class: type, inputs: dict[str, Any]) -> tuple:
    """Run a node's FUNCTION as ComfyUI's executor does (V1 tuples and V3 NodeOutput alike)."""
    result = getattr(node_class(), node_class.FUNCTION)(**inputs)
    if asyncio.iscoroutine(result):
        result = await result
    if isinstance(result, dict):
        result = result.get("result", ())
    elif not isinstance(result, tuple) and hasattr(result, "result"):
        result = result.result
    return tuple(result)


def loaded_sampling_model(loader: Optional[dict]) -> tuple[Any, str]:
    """The model_sampling of the file the target's loader node loads, as ComfyUI detects it,
    and a short name of its family; SD1.x / SDXL sigmas when the loader is another node or
    its file is not recognised."""
    if isinstance(loader, dict):
        found = compat.loaded_model_file(str(loader.get("class_type", "")), loader.get("inputs") or {})
        detected = None if found is None else compat.sampling_model_of_file(*found)
        if detected is not None:
            return detected
    return compat.discrete_sampling_model(), "SD1/SDXL sigmas (assumed)"


async def apply_model_sampling(model: Any, chain: list[dict], family: str) -> tuple[Any, str]:
    """The model after the ModelSampling nodes of ``chain``, and a short name of its family
    (``family`` when the chain is empty)."""
    for spec in chain:
        class_type = str(spec.get("class_type", ""))
        node_class = _node_class(class_type)
        if not class_type.startswith("ModelSampling") or tuple(node_class.RETURN_TYPES) != ("MODEL",):
            raise ChartError(f"{class_type} is not a ModelSampling node")
        given = spec.get("inputs") or {}
        declared = _declared_inputs(node_class)
        inputs = {name: model if kind == "MODEL" else given[name]
                  for name, kind in declared.items() if kind == "MODEL" or name in given}
        model = (await _call_node(node_class, inputs))[0]
        # Flow models: the shift that results (ModelSamplingFlux derives it from the image size).
        shift = getattr(compat.model_sampling(model), "shift", None)
        shown = f"shift {shift:.3g}" if shift is not None else ", ".join(
            f"{name} {value}" for name, value in inputs.items() if declared[name] != "MODEL")
        family = f"{class_type} {shown}".strip()
    return model, family


async def evaluate_sigmas(graph: dict, output: list, model: Any) -> torch.Tensor:
    """Run the SIGMAS nodes of an API-format graph up to ``output`` ([node id, slot])."""
    results: dict[str, tuple] = {}

    async def outputs_of(node_id: str, depth: int) -> tuple:
        if depth > MAX_GRAPH_DEPTH:
            raise ChartError("the SIGMAS graph is nested too deep")
        if node_id in results:
            return results[node_id]
        spec = graph.get(node_id)
        if not isinstance(spec, dict):
            raise ChartError(f"node {node_id} is missing from the SIGMAS graph")
        node_class = _node_class(str(spec.get("class_type", "")))
        if not all(kind == "SIGMAS" for kind in node_class.RETURN_TYPES):
            raise ChartError(f"{spec['class_type']} does not produce SIGMAS")
        given = spec.get("inputs") or {}
        inputs = {}
        for name, kind in _declared_inputs(node_class).items():
            if kind == "MODEL":
                inputs[name] = model
            elif kind == "SIGMAS" and isinstance(given.get(name), list):
                source, slot = given[name]
                inputs[name] = (await outputs_of(str(source), depth + 1))[slot]
            elif isinstance(kind, (list, tuple)) or kind in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"):
                if name in given:
                    inputs[name] = given[name]
            else:
                raise ChartError(f"{spec['class_type']} needs a {kind} input, which the chart cannot provide")
        results[node_id] = await _call_node(node_class, inputs)
        return results[node_id]

    source, slot = output
    return (await outputs_of(str(source), 0))[slot]


def sampler_sigmas(model: Any, settings: dict) -> torch.Tensor:
    """The sigmas AMDMSampler (like KSampler) computes for these widget values."""
    return compat.scheduler_sigmas(model, int(settings["steps"]), str(settings["sampler_name"]),
                                   str(settings["scheduler"]), float(settings["denoise"]))


def member_shares(window: range, weights: list[float], target: int, schedule: Schedule,
                  steps: int) -> list[list[float]]:
    """Per step, each member's coefficient in the merged latent, as the sampler's plan has it."""
    rows = [[1.0 if m == target else 0.0 for m in range(len(weights))] for _ in range(steps)]
    per_step = step_weights(weights, target, schedule.weight_curve, len(window))
    for row, k in zip(per_step, window):
        rows[k] = member_coefficients(row, schedule.aggregation).tolist()
    return rows


def _schedule(values: dict) -> Schedule:
    return Schedule(**{name: value for name, value in values.items() if name in _SCHEDULE_FIELDS})


def _problem(schedule: Schedule, weights: list[float]) -> Optional[str]:
    """Why the sampler would refuse the stack or run it without aggregation; None if neither."""
    if not weights:
        return None
    if schedule.target_member > len(weights):
        return f"target_member {schedule.target_member} > {len(weights)} member(s)"
    validate_weights(weights, [f"member {m + 1}" for m in range(len(weights))])
    if len(weights) < 2:
        return "a single member samples alone"
    return None


async def chart(request: dict) -> dict:
    """The chart's data for one schedule node (see the module docstring)."""
    # Reading a model file's header is blocking file work: off the server's event loop.
    model, family = await asyncio.to_thread(loaded_sampling_model, request.get("loader"))
    model, family = await apply_model_sampling(model, list(request.get("model_sampling") or []), family)
    source = request.get("sigmas") or {}
    sigmas, note = None, None
    if "nodes" in source:
        try:
            sigmas = await evaluate_sigmas(source["nodes"], source["output"], model)
        except ChartError as error:
            note = str(error)
    elif "sampler" in source:
        sigmas = sampler_sigmas(model, {**DEFAULT_SAMPLER, **source["sampler"]})
    exact = sigmas is not None
    if sigmas is None:
        sigmas = sampler_sigmas(model, DEFAULT_SAMPLER)
    sigmas = sigmas.float().cpu()
    steps = max(len(sigmas) - 1, 0)
    answer = {"steps": steps, "sigmas": sigmas.tolist(), "window": [steps, steps], "shares": [],
              "factors": [], "exact": exact, "family": family, "note": note, "problem": None}

    weights = [float(member.get("weight", 1.0)) for member in request.get("members") or []]
    try:
        schedule = _schedule(dict(request.get("schedule") or {}))
        answer["problem"] = _problem(schedule, weights)
    except ValueError as error:
        answer["problem"] = str(error)
        return answer
    if answer["problem"] is None:
        window = window_for(sigmas.tolist(), compat.model_sampling(model).percent_to_sigma, schedule)
        answer["window"] = [window.start, window.stop]
        answer["factors"] = curve_factors(schedule.weight_curve, len(window)).tolist()
        if weights:
            answer["shares"] = member_shares(window, weights, schedule.target_member - 1, schedule, steps)
    return answer


async def _post_chart(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ChartError("the body must be a JSON object")
        return web.json_response(await chart(body))
    except Exception as error:  # a display aid: any failure is the client's to show, not a 500
        logger.debug("schedule chart request not evaluated: %s", error)
        return web.json_response({"error": f"{type(error).__name__}: {error}"}, status=400)


def register(server: Any) -> None:
    """Add the route to a PromptServer (before it starts serving)."""
    server.routes.post(ROUTE)(_post_chart)


_server = compat.running_prompt_server()
if _server is not None:
    register(_server)
