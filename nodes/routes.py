"""A server route for the AggregationSchedule chart: the window and member shares the sampler uses.

The frontend describes the graph around a schedule node (its widgets, the members' weights,
the ModelSampling nodes on the target's model path, and where the sigmas come from); the
route answers with what the sampler will do for that graph, computed by the code the sampler
runs: ComfyUI's schedulers and SIGMAS nodes on the model family's own ``model_sampling``,
``amdm_core``'s window rule and its member coefficients. So the chart and the sampler cannot
disagree, and no sigma arithmetic is mirrored in JavaScript.

``POST /amdm/chart`` (also under ``/api``), body::

    {"schedule": {widget: value, ...},                  # AggregationSchedule's widgets
     "members": [{"weight": 1.0, "start_percent": 0.0, ...}, ...],  # the stack's ModelStack widgets,
                                                         # first member first; [] if none
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
API-format graph of SIGMAS nodes feeding SamplerCustomAdvanced (links as ``[id, slot]``); only
the nodes ``output`` depends on are run, and their MODEL inputs get the target's model. A
member's range widgets (``start_percent``, ``end_percent``, ``start_step``, ``end_step``)
are numbers, or, where an AMDMExpertBoundary node feeds one, ``{"boundary": {its widgets},
"output": 0 or 1}``: the route runs that node on the target's model. The answer::

    {"steps": S, "sigmas": [...], "window": [first, stop], "shares": [[...] per step],
     "ranges": [[first, stop] per member], "factors": [...], "exact": bool, "family": str,
     "note": str | null, "problem": str | null}

``exact`` is false when the schedule feeds no sampler, or its SIGMAS nodes cannot be run by
the chart (a node type this server lacks, a node that is not a SIGMAS node, an input the chart
cannot provide or a SIGMAS input left unconnected; ``note`` says which): the chart then assumes
ComfyUI's default KSampler settings. ``problem`` is why the sampler would refuse the schedule
or the stack, or run it without aggregation. ``shares[k][m]`` is member m's coefficient in the
latent at step k: 1 for a member alone, its merge coefficient where members aggregate, 0 where
it is not active; ``ranges`` each member's active steps (the sampler's plan, from the same
code); ``factors`` the weight curve's factor at each window step.

Limits. Every input is checked before any work, as ComfyUI checks a prompt (and, like it, on
the event loop: a few INPUT_TYPES calls, bounded by the body's size): each widget value
against its node's declared INPUT_TYPES (INT / FLOAT / BOOLEAN / STRING type, min and max,
combo choices), the schedule's widgets against AggregationSchedule's and then by ``Schedule``
itself (a schedule ``Schedule`` refuses is the answer's ``problem``, as the sampler would
refuse it), the sampler's against AMDMSampler's (``steps`` 1..10000, ``denoise`` 0..1),
each member's weight against ModelStack's (0..100), the nodes of the SIGMAS graph and of
``model_sampling`` against their own. A request that breaks any of these, or one of the
bounds below, is refused with ``{"error": "..."}`` naming the input and the bound, status
400 unless said otherwise:

- the body: at most ``MAX_BODY_BYTES`` (64 KiB; status 413, the rest left unread), a JSON
  object (no NaN or Infinity) with no fields but the five above;
- members: at most ``MAX_MEMBERS``, AggregationSchedule's largest ``target_member`` (64);
- scheduled steps: every INT input named ``steps`` (or ``..._steps``) at most
  ``MAX_SCHEDULED_STEPS`` (10000), whatever its node declares; where a node has ``steps``
  and ``denoise`` inputs, ``steps / denoise`` too (what KSampler and BasicScheduler compute
  when ``denoise`` < 1, of which they run the last ``steps``; conservative for the nodes
  that schedule ``steps`` and keep ``steps * denoise``, as AlignYourStepsScheduler does,
  which the chart cannot tell apart before running them);
- ModelSampling nodes: at most ``MAX_MODEL_SAMPLING_NODES`` (8);
- the SIGMAS graph: at most ``MAX_GRAPH_NODES`` (64) nodes, no cycle, at most
  ``MAX_GRAPH_DEPTH`` (32) links from ``output`` to the farthest node it depends on; each
  SIGMAS output, checked as soon as its node has run, at most 10000 steps (10001 finite
  sigmas), so no node runs on more;
- the answer: at most ``MAX_CHARTED_SHARES`` (100000) share values (steps x members), so
  that it stays under about 3 MB of JSON (10 members over 10000 steps make 2.4 MB).

The work (reading the model file's header, the ModelSampling nodes, the schedulers and
SIGMAS nodes, the window and shares, the JSON of the answer) runs off the event loop, in one
worker thread: one chart at a time. At most ``MAX_QUEUED_CHARTS`` (8) requests wait or run
at once, and each is answered within ``CHART_TIME_LIMIT_S`` (10 s); beyond either the answer
is status 503. The worker abandons a chart past its time at its next stage (after the file,
after each node, before the shares and the JSON): a node that runs is not interrupted, so
its work is bounded by the checks on its inputs (the steps above), not by the time limit.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import reprlib
import sys
import time
from typing import Any, Optional

import torch
from aiohttp import web

import comfy.samplers
import nodes as comfy_nodes

from ..amdm_core import (Schedule, Span, curve_factors, member_coefficients, member_steps, range_errors,
                         spans_of, steps_in, validate_weights, window_plans)
from . import compat, families
from .definitions import (RANGE_INPUTS, AggregationSchedule, AMDMExpertBoundary, AMDMSamplerNode, ModelStack,
                          member_range)

logger = logging.getLogger(__name__)

ROUTE = "/amdm/chart"
# What the chart assumes when the schedule feeds no sampler: ComfyUI's default KSampler settings.
DEFAULT_SAMPLER = {"steps": 20, "scheduler": "simple", "sampler_name": "euler", "denoise": 1.0}
BODY_FIELDS = ("schedule", "members", "loader", "model_sampling", "sigmas")
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING")

MAX_BODY_BYTES = 64 * 1024
MAX_MEMBERS = AggregationSchedule.INPUT_TYPES()["required"]["target_member"][1]["max"]
MAX_SCHEDULED_STEPS = 10000  # AMDMSampler's and KSampler's largest `steps`
MAX_MODEL_SAMPLING_NODES = 8
MAX_GRAPH_NODES = 64
MAX_GRAPH_DEPTH = 32
MAX_CHARTED_SHARES = 100_000
MAX_QUEUED_CHARTS = 8
CHART_TIME_LIMIT_S = 10.0

_SCHEDULE_FIELDS = {field.name for field in dataclasses.fields(Schedule)}
_DEFAULT_SCHEDULE = dataclasses.asdict(Schedule())


class ChartError(ValueError):
    """The route refuses the request: it breaks a bound or a node's declared inputs (status
    400, or a subclass's); the message says which."""

    status = 400


class BodyTooLarge(ChartError):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413


class ChartUnavailable(ChartError):
    """The route is busy with other charts, or this one ran out of time."""

    status = 503


class SigmasNotEvaluated(Exception):
    """The SIGMAS nodes describe a graph the chart cannot run; the message says why."""


# --- checking the request -------------------------------------------------------------------

def _declared_inputs(node_class: type) -> dict[str, tuple[Any, dict, bool]]:
    """Input name -> (type, options, required) as the node's INPUT_TYPES declares them."""
    declared = node_class.INPUT_TYPES()
    return {name: (spec[0], spec[1] if len(spec) > 1 else {}, section == "required")
            for section in ("required", "optional") for name, spec in declared.get(section, {}).items()}


def _choices(kind: Any, options: dict) -> Optional[list]:
    """A combo's choices (V1 lists them as its type, V3 as a COMBO's options); None if not a combo."""
    if isinstance(kind, (list, tuple)):
        return list(kind)
    return list(options.get("options", [])) if kind == "COMBO" else None


def _is_widget(kind: Any, options: dict) -> bool:
    return kind in WIDGET_TYPES or _choices(kind, options) is not None


def _model_inputs(declared: dict[str, tuple[Any, dict, bool]]) -> list[str]:
    """The inputs that get the target's model."""
    return [name for name, (kind, _, _) in declared.items() if kind == "MODEL"]


def checked_value(where: str, name: str, kind: Any, options: dict, value: Any) -> Any:
    """``value`` as ComfyUI's executor passes it to a widget input (INT as int, FLOAT as
    float), after ComfyUI's checks: its type, its declared min and max, a combo's choices."""
    choices = _choices(kind, options)
    if choices is not None:
        if isinstance(value, (str, int, float)) and value in choices:
            return value
        listed = ", ".join(map(str, choices)) if len(choices) <= 20 else f"a list of {len(choices)}"
        raise ChartError(f"{where}: {name} must be one of {listed}; got {reprlib.repr(value)}")
    if kind == "BOOLEAN" or kind == "STRING":
        if not isinstance(value, bool if kind == "BOOLEAN" else str):
            raise ChartError(f"{where}: {name} must be a {kind}, got {reprlib.repr(value)}")
        return value
    # JSON numbers arrive as int or float; an int may be too large for a float.
    if kind == "INT" and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif kind == "FLOAT" and isinstance(value, int) and not isinstance(value, bool) \
            and abs(value) <= sys.float_info.max:
        value = float(value)
    if type(value) is not (int if kind == "INT" else float) or \
            (kind == "FLOAT" and not math.isfinite(value)):
        raise ChartError(f"{where}: {name} must be a finite {kind}, got {reprlib.repr(value)}")
    low, high = options.get("min", -math.inf), options.get("max", math.inf)
    if not low <= value <= high:
        raise ChartError(f"{where}: {name} must lie in [{low}, {high}], got {reprlib.repr(value)}")
    return value


def _checked_widgets(where: str, declared: dict[str, tuple[Any, dict, bool]], given: dict) -> dict:
    """The declared widget inputs from ``given``, checked (inputs it does not declare are
    ignored, as ComfyUI ignores them); a required one missing is an error."""
    widgets = {}
    for name, (kind, options, required) in declared.items():
        if not _is_widget(kind, options):
            continue
        if name in given:
            widgets[name] = checked_value(where, name, kind, options, given[name])
        elif required:
            raise ChartError(f"{where}: the {name} input is missing")
    _check_step_counts(where, declared, widgets)
    return widgets


def _check_step_counts(where: str, declared: dict[str, tuple[Any, dict, bool]], widgets: dict) -> None:
    """The chart's own bound on the steps a node schedules, whatever the node declares.

    A node's declared max is its author's: an installed pack's scheduler may declare ``steps``
    with no max, and a node cannot be stopped once it runs (the time limit abandons a chart
    only between nodes), so what it computes is bounded before it runs, not only checked
    after (``_checked_sigmas``). A scheduler's work grows with the steps it schedules, which
    ComfyUI's nodes, and the packs written like them, take from an INT input named ``steps``
    (or ``..._steps``): each is at most MAX_SCHEDULED_STEPS. Beside a ``denoise`` input the
    count depends on the node's code, not on its declaration: KSampler and BasicScheduler
    schedule ``steps / denoise`` steps and keep the last ``steps``; AlignYourStepsScheduler,
    GITSScheduler and OptimalStepsScheduler schedule ``steps`` and keep ``steps * denoise``.
    Nothing in INPUT_TYPES tells the two apart, and a table of ComfyUI's nodes would leave
    every other pack's nodes (and each new release's) to a guess, so ``steps / denoise``
    bounds every node with both inputs: exact for the first kind, conservative for the
    second, which it refuses only where denoise < steps / MAX_SCHEDULED_STEPS. Inputs under
    other names (a width, a seed) keep the node's own bounds."""
    step_counts = {name: value for name, value in widgets.items()
                   if declared[name][0] == "INT" and (name == "steps" or name.endswith("_steps"))}
    for name, value in step_counts.items():
        if value > MAX_SCHEDULED_STEPS:
            raise ChartError(f"{where}: {name} must be at most {MAX_SCHEDULED_STEPS}, the most the chart "
                             f"schedules whatever the node declares; got {value}")
    if "steps" in step_counts and declared.get("denoise", (None,))[0] == "FLOAT" and "denoise" in widgets:
        scheduled = scheduled_steps(widgets["steps"], widgets["denoise"])
        if scheduled > MAX_SCHEDULED_STEPS:
            count = int(scheduled) if math.isfinite(scheduled) else "infinitely many"
            raise ChartError(f"{where}: steps {widgets['steps']} with denoise {widgets['denoise']} may schedule "
                             f"{count} steps; the chart schedules at most {MAX_SCHEDULED_STEPS} (it counts "
                             f"steps / denoise, as KSampler and BasicScheduler schedule, for any node with "
                             f"steps and denoise inputs: it cannot tell before running one that it schedules "
                             f"fewer)")


def scheduled_steps(steps: int, denoise: float) -> float:
    """At most how many steps KSampler and BasicScheduler schedule for these settings: with
    denoise < 1 they compute steps / denoise of them (infinitely many where that overflows)
    and run the last ``steps``."""
    if denoise >= 1.0:
        return steps
    return 0 if denoise <= 0.0 else steps / denoise


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ChartError(f"{what} must be a JSON object, got {reprlib.repr(value)}")
    return value


def _field(body: dict, name: str, absent: Any) -> Any:
    """A field of the body; ``absent`` when it is missing or null."""
    value = body.get(name)
    return absent if value is None else value


def _array(value: Any, what: str, most: int) -> list:
    if not isinstance(value, list):
        raise ChartError(f"{what} must be a JSON array, got {reprlib.repr(value)}")
    if len(value) > most:
        raise ChartError(f"{what} has {len(value)} entries; the chart takes at most {most}")
    return value


def _node_spec(spec: Any, what: str) -> tuple[str, dict]:
    """The class_type and inputs of an API-format node."""
    spec = _object(spec, what)
    class_type = spec.get("class_type")
    if not isinstance(class_type, str):
        raise ChartError(f"{what}: class_type must be a string, got {reprlib.repr(class_type)}")
    return class_type, _object(_field(spec, "inputs", {}), f"{what}: inputs")


def _link(value: Any, what: str) -> tuple[str, int]:
    """An API-format link: [node id, output slot]."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int)
            and not isinstance(value[1], bool) and value[1] >= 0):
        raise ChartError(f"{what} must be a link [node id, output slot], got {reprlib.repr(value)}")
    return str(value[0]), value[1]


@dataclasses.dataclass
class CheckedNode:
    """A node the chart runs, with its widget inputs checked against its declaration."""

    class_type: str
    node_class: type
    widgets: dict[str, Any]
    model_inputs: list[str]
    sigmas_links: dict[str, tuple[str, int]]


def checked_model_sampling(spec: Any, what: str) -> CheckedNode:
    """A ModelSampling node of the target's model path; its MODEL input gets the model, an
    optional input the chart cannot provide is left out (ModelSamplingLTXV's latent)."""
    class_type, given = _node_spec(spec, what)
    node_class = comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if node_class is None:
        raise ChartError(f"{what}: unknown node type {class_type!r}")
    if not class_type.startswith("ModelSampling") or tuple(node_class.RETURN_TYPES) != ("MODEL",):
        raise ChartError(f"{what}: {class_type} is not a ModelSampling node")
    declared = _declared_inputs(node_class)
    for name, (kind, options, required) in declared.items():
        if required and kind != "MODEL" and not _is_widget(kind, options):
            raise ChartError(f"{what}: {class_type} needs a {kind} input, which the chart cannot provide")
    return CheckedNode(class_type, node_class, _checked_widgets(class_type, declared, given),
                       _model_inputs(declared), {})


def checked_sigmas_graph(graph: Any, output: tuple[str, int]) -> list[tuple[str, CheckedNode]]:
    """The nodes of an API-format SIGMAS graph that ``output`` (node id, slot) depends on,
    each after the nodes it depends on, with checked inputs. ChartError when the graph breaks
    a bound or a node's declared inputs; SigmasNotEvaluated when the chart cannot run it."""
    graph = _object(graph, "sigmas.nodes")
    if len(graph) > MAX_GRAPH_NODES:
        raise ChartError(f"the SIGMAS graph has {len(graph)} nodes; the chart takes at most {MAX_GRAPH_NODES}")
    ordered: dict[str, CheckedNode] = {}
    on_path: list[str] = []

    def visit(node_id: str, slot: int) -> None:
        if node_id in on_path:
            raise ChartError(f"the SIGMAS graph has a cycle through node {reprlib.repr(node_id)}")
        if len(on_path) > MAX_GRAPH_DEPTH:
            raise ChartError(f"the SIGMAS graph is nested deeper than {MAX_GRAPH_DEPTH} links")
        if node_id not in graph:
            raise ChartError(f"node {reprlib.repr(node_id)} is missing from the SIGMAS graph")
        class_type, given = _node_spec(graph[node_id], f"SIGMAS node {reprlib.repr(node_id)}")
        where = f"{class_type} (node {reprlib.repr(node_id)})"
        node_class = comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if node_class is None:
            raise SigmasNotEvaluated(f"unknown node type {class_type!r}")
        outputs = tuple(getattr(node_class, "RETURN_TYPES", ()))
        if not outputs or not all(kind == "SIGMAS" for kind in outputs):
            raise SigmasNotEvaluated(f"{class_type} does not produce SIGMAS")
        if slot >= len(outputs):
            raise ChartError(f"{where} has {len(outputs)} output(s); a link asks for output {slot}")
        if node_id in ordered:
            return
        declared = _declared_inputs(node_class)
        links = {}
        for name, (kind, options, required) in declared.items():
            if kind == "SIGMAS" and name in given:
                links[name] = _link(given[name], f"{where}: {name}")
            elif kind == "SIGMAS" and required:
                raise SigmasNotEvaluated(f"{where}: its {name} input is not connected")
            elif kind not in ("MODEL", "SIGMAS") and not _is_widget(kind, options):
                raise SigmasNotEvaluated(f"{class_type} needs a {kind} input, which the chart cannot provide")
        widgets = _checked_widgets(where, declared, given)
        on_path.append(node_id)
        for source, source_slot in links.values():
            visit(source, source_slot)
        on_path.pop()
        ordered[node_id] = CheckedNode(class_type, node_class, widgets, _model_inputs(declared), links)

    visit(*output)
    return list(ordered.items())


@dataclasses.dataclass
class ChartRequest:
    """A request body with every input checked: nothing in it takes the chart's work or its
    answer past the limits of the module docstring."""

    schedule: dict[str, Any]
    weights: list[float]
    ranges: list[dict[str, Any]]
    loader: Optional[dict]
    model_sampling: list[CheckedNode]
    sampler: Optional[dict[str, Any]] = None
    sigmas_nodes: list[tuple[str, CheckedNode]] = dataclasses.field(default_factory=list)
    sigmas_output: Optional[tuple[str, int]] = None
    note: Optional[str] = None


BOUNDARY_OUTPUTS = len(AMDMExpertBoundary.GET_SCHEMA().outputs)


@dataclasses.dataclass
class BoundaryOutput:
    """A member's range widget fed by an AMDMExpertBoundary node: its checked widgets and
    which of its outputs."""

    widgets: dict[str, Any]
    output: int


def checked_member(member: Any, where: str) -> dict[str, Any]:
    """A member's weight and range widgets, each a checked number or a BoundaryOutput."""
    declared = {name: spec for name, spec in _declared_inputs(ModelStack).items() if name in ("weight", *RANGE_INPUTS)}
    given = dict(_object(member, where))
    fed = {}
    for name in RANGE_INPUTS:
        if isinstance(given.get(name), dict):
            source = given.pop(name)
            boundary = _checked_widgets(f"{where}: {name}'s AMDMExpertBoundary",
                                        _declared_inputs(AMDMExpertBoundary), _object(source.get("boundary"), "boundary"))
            output = source.get("output")
            if output not in range(BOUNDARY_OUTPUTS) or isinstance(output, bool):
                raise ChartError(f"{where}: {name}'s AMDMExpertBoundary output must be 0 or 1, got "
                                 f"{reprlib.repr(output)}")
            fed[name] = BoundaryOutput(boundary, output)
    defaults = {name: options["default"] for name, (_, options, _) in declared.items()}
    return {**_checked_widgets(where, declared, {**defaults, **given}), **fed}


def checked_request(body: Any) -> ChartRequest:
    """The request body, checked against the limits of the module docstring (no work yet)."""
    body = _object(body, "the body")
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise ChartError(f"unknown field(s) {', '.join(map(reprlib.repr, unknown))}; the body has "
                         f"{', '.join(BODY_FIELDS)}")
    given_schedule = _object(_field(body, "schedule", {}), "schedule")
    schedule = _checked_widgets("AggregationSchedule", _declared_inputs(AggregationSchedule),
                                {**_DEFAULT_SCHEDULE, **given_schedule})
    members = [checked_member(member, f"member {m + 1}")
               for m, member in enumerate(_array(_field(body, "members", []), "members", MAX_MEMBERS))]
    weights = [member.pop("weight") for member in members]
    loader = body.get("loader")
    if loader is not None:
        _node_spec(loader, "loader")
    model_sampling = [checked_model_sampling(spec, f"model_sampling[{i}]") for i, spec in
                      enumerate(_array(_field(body, "model_sampling", []), "model_sampling",
                                       MAX_MODEL_SAMPLING_NODES))]
    request = ChartRequest(schedule, weights, members, loader, model_sampling)
    source = _object(_field(body, "sigmas", {}), "sigmas")
    if set(source) == {"sampler"}:
        sampler_inputs = {name: spec for name, spec in _declared_inputs(AMDMSamplerNode).items()
                          if name in DEFAULT_SAMPLER}
        given = _object(source["sampler"], "sigmas.sampler")
        request.sampler = _checked_widgets("AMDMSampler", sampler_inputs, {**DEFAULT_SAMPLER, **given})
    elif set(source) == {"nodes", "output"}:
        output = _link(source["output"], "sigmas.output")
        try:
            request.sigmas_nodes = checked_sigmas_graph(source["nodes"], output)
            request.sigmas_output = output
        except SigmasNotEvaluated as reason:
            request.note = str(reason)
    elif source:
        raise ChartError(f"sigmas must be null, {{\"sampler\": ...}} or {{\"nodes\": ..., \"output\": ...}}; "
                         f"got the field(s) {', '.join(map(reprlib.repr, sorted(source)))}")
    return request


# --- the chart's work (in the worker thread) ------------------------------------------------

def _check_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise ChartUnavailable(f"the chart took longer than {CHART_TIME_LIMIT_S:g} s")


def _checked_sigmas(sigmas: Any, source: str) -> torch.Tensor:
    if not (isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1):
        raise ChartError(f"{source} gave no 1-D SIGMAS tensor")
    if len(sigmas) > MAX_SCHEDULED_STEPS + 1:
        raise ChartError(f"{source} gave {len(sigmas) - 1} steps; the chart takes at most {MAX_SCHEDULED_STEPS}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ChartError(f"{source} gave sigmas that are not all finite")
    return sigmas


def loaded_sampling_model(loader: Optional[dict]) -> tuple[Any, str]:
    """The model_sampling of the file the target's loader node loads, as ComfyUI detects it,
    and a short name of its family; SD1.x / SDXL sigmas when the loader is another node or
    its file is not recognised."""
    if loader is not None:
        found = families.loaded_model_file(loader["class_type"], loader.get("inputs") or {})
        detected = None if found is None else families.sampling_model_of_file(*found)
        if detected is not None:
            return detected
    return families.discrete_sampling_model(), "SD1/SDXL sigmas (assumed)"


def apply_model_sampling(model: Any, chain: list[CheckedNode], family: str,
                         deadline: float) -> tuple[Any, str]:
    """The model after the ModelSampling nodes of ``chain``, and a short name of its family
    (``family`` when the chain is empty)."""
    for node in chain:
        model = compat.node_outputs(node.node_class, {**node.widgets, **dict.fromkeys(node.model_inputs, model)})[0]
        # Flow models: the shift that results (ModelSamplingFlux derives it from the image size).
        shift = getattr(model.get_model_object("model_sampling"), "shift", None)
        shown = f"shift {shift:.3g}" if shift is not None else ", ".join(
            f"{name} {value}" for name, value in node.widgets.items())
        family = f"{node.class_type} {shown}".strip()
        _check_time(deadline)
    return model, family


def evaluate_sigmas(nodes: list[tuple[str, CheckedNode]], output: tuple[str, int], model: Any,
                    deadline: float) -> torch.Tensor:
    """Run the checked SIGMAS nodes, each after those it depends on, up to ``output``
    (node id, slot)."""
    results: dict[str, tuple] = {}
    for node_id, node in nodes:
        inputs = {**node.widgets, **dict.fromkeys(node.model_inputs, model),
                  **{name: results[source][slot] for name, (source, slot) in node.sigmas_links.items()}}
        results[node_id] = tuple(_checked_sigmas(sigmas, f"{node.class_type} (node {reprlib.repr(node_id)})")
                                 for sigmas in compat.node_outputs(node.node_class, inputs))
        _check_time(deadline)
    node_id, slot = output
    return results[node_id][slot]


def sampler_sigmas(model: Any, settings: dict) -> torch.Tensor:
    """The sigmas AMDMSampler (like KSampler) computes for these widget values."""
    return comfy.samplers.KSampler(model, steps=settings["steps"], device=model.load_device,
                                   sampler=settings["sampler_name"], scheduler=settings["scheduler"],
                                   denoise=settings["denoise"], model_options=model.model_options).sigmas


def resolved(value: Any, model: Any) -> Any:
    """A range widget's value: a number, or what its AMDMExpertBoundary node gives for the
    target's model."""
    if not isinstance(value, BoundaryOutput):
        return value
    return compat.node_outputs(AMDMExpertBoundary, {**value.widgets, "model": model})[value.output]


def member_shares(spans: list[Span], windows: dict[int, Any], members: int, steps: int) -> list[list[float]]:
    """Per step, each member's coefficient in the latent, as the sampler's plan has it: 1
    for a member alone, its merge coefficient where members aggregate, 0 when inactive."""
    rows = [[0.0] * members for _ in range(steps)]
    for span in spans:
        plan = windows.get(span.steps.start)
        for j, k in enumerate(span.steps):
            shares = [1.0] if plan is None else member_coefficients(plan.weights[j], plan.aggregation).tolist()
            for m, share in zip(span.members, shares):
                rows[k][m] = share
    return rows


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


def chart(request: ChartRequest, deadline: float) -> dict:
    """The chart's data for one schedule node (see the module docstring); blocking work, for a
    worker thread. ChartError when the answer would break a limit or the time runs out."""
    _check_time(deadline)
    model, family = loaded_sampling_model(request.loader)
    _check_time(deadline)
    model, family = apply_model_sampling(model, request.model_sampling, family, deadline)
    sigmas, note = None, request.note
    if request.sigmas_output is not None:
        sigmas = evaluate_sigmas(request.sigmas_nodes, request.sigmas_output, model, deadline)
    elif request.sampler is not None:
        sigmas = _checked_sigmas(sampler_sigmas(model, request.sampler), "AMDMSampler")
    exact = sigmas is not None
    if sigmas is None:
        sigmas = sampler_sigmas(model, DEFAULT_SAMPLER)
    sigmas = sigmas.float().cpu()
    steps = max(len(sigmas) - 1, 0)
    answer = {"steps": steps, "sigmas": sigmas.tolist(), "window": [steps, steps], "shares": [],
              "ranges": [], "factors": [], "exact": exact, "family": family, "note": note, "problem": None}

    weights = request.weights
    try:
        schedule = Schedule(**{name: value for name, value in request.schedule.items() if name in _SCHEDULE_FIELDS})
        ranges = [member_range({name: resolved(value, model) for name, value in values.items()})
                  for values in request.ranges]
        answer["problem"] = _problem(schedule, weights)
    except ValueError as error:
        answer["problem"] = str(error)
        return answer
    if answer["problem"] is None:
        if steps * len(weights) > MAX_CHARTED_SHARES:
            raise ChartError(f"{steps} steps x {len(weights)} members make {steps * len(weights)} shares; "
                             f"the chart sends at most {MAX_CHARTED_SHARES}")
        _check_time(deadline)
        percent_to_sigma = model.get_model_object("model_sampling").percent_to_sigma
        sigma_list = sigmas.tolist()
        window = steps_in(sigma_list, percent_to_sigma, schedule.window)
        answer["window"] = [window.start, window.stop]
        answer["factors"] = curve_factors(schedule.weight_curve, len(window)).tolist()
        if weights:
            target = schedule.target_member - 1
            active = member_steps(sigma_list, percent_to_sigma, ranges, schedule)
            spans = spans_of(active, steps)
            errors = range_errors(spans, active, ranges, weights, [f"member {m + 1}" for m in range(len(weights))],
                                  target, sigma_list, percent_to_sigma)
            answer["problem"] = "; ".join(errors) or None
            windows = window_plans(spans, weights, [1.0] * len(weights), target, schedule)
            answer["ranges"] = [[r.start, r.stop] for r in active]
            answer["shares"] = member_shares(spans, windows, len(weights), steps)
    return answer


def chart_json(request: ChartRequest, deadline: float) -> bytes:
    """The chart's answer as JSON (made here too, so that a large answer is not serialised on
    the event loop)."""
    answer = chart(request, deadline)
    _check_time(deadline)
    try:
        return json.dumps(answer, allow_nan=False).encode()
    except ValueError:
        raise ChartError("the chart's numbers are not all finite for this graph") from None


# --- the route ------------------------------------------------------------------------------

# One thread: one chart at a time, however many requests come.
_WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="amdm-chart")
_queued: list[concurrent.futures.Future] = []  # touched on the event loop only


async def _read_body(request: web.Request) -> bytes:
    """At most MAX_BODY_BYTES of the body; BodyTooLarge as soon as it is known to be more."""
    too_large = BodyTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


def _parsed(body: bytes) -> Any:
    def refuse_constant(name: str) -> None:
        raise ChartError(f"the body is not JSON: {name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=refuse_constant)
    except ChartError:
        raise
    except (ValueError, RecursionError) as error:
        raise ChartError(f"the body is not JSON: {error}") from None


async def chart_answer(body: Any) -> bytes:
    """The chart's JSON answer: the body checked here (as ComfyUI checks a prompt on the
    event loop, a few INPUT_TYPES calls bounded by the body's size), so that a bad request
    is refused at once even while other charts are computed; the chart computed in the
    worker thread within CHART_TIME_LIMIT_S."""
    request = checked_request(body)
    _queued[:] = [job for job in _queued if not job.done()]
    if len(_queued) >= MAX_QUEUED_CHARTS:
        raise ChartUnavailable(f"{len(_queued)} chart requests are already waiting (at most "
                               f"{MAX_QUEUED_CHARTS}); try again")
    job = _WORKER.submit(chart_json, request, time.monotonic() + CHART_TIME_LIMIT_S)
    _queued.append(job)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(job), CHART_TIME_LIMIT_S)
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
        raise ChartUnavailable(f"the chart took longer than {CHART_TIME_LIMIT_S:g} s") from None


async def _post_chart(request: web.Request) -> web.Response:
    try:
        answer = await chart_answer(_parsed(await _read_body(request)))
        return web.Response(body=answer, content_type="application/json")
    except ChartError as error:
        status, message = error.status, str(error)
    except Exception as error:  # a display aid: a node's own failure is the client's to show, not a 500
        status, message = 400, f"{type(error).__name__}: {error}"
    logger.debug("schedule chart request not evaluated: %s", message)
    return web.json_response({"error": message}, status=status)


def register(routes: web.RouteTableDef) -> None:
    """Add the route to a route table (a PromptServer's ``routes``, before it starts serving)."""
    routes.post(ROUTE)(_post_chart)


def _running_prompt_server() -> Optional[Any]:
    """The PromptServer of a running ComfyUI, to add routes to. main.py creates it before it
    imports custom nodes; imported any other way (a script, tests in one process) the pack
    finds none, and importing ComfyUI's `server` module there would start nothing."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)


_server = _running_prompt_server()
if _server is not None:
    register(_server.routes)
