"""The schedule chart's route (``POST /amdm/chart``, nodes/routes.py) cannot hurt the server.

In process: an aiohttp application with the route registered as ComfyUI registers it (plus a
trivial route standing in for ``/system_stats``), called with hostile bodies. Each must be
refused with a clear error naming the input and the bound, fast (before any work), with a
small answer; valid but slow requests run off the event loop, one at a time, within the
route's limits. Then the same through the real ComfyUI server while ``/system_stats``
answers. Times are logged (``-o log_cli=true --log-cli-level=INFO`` shows them).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from support.comfy_env import load_comfy_extra_nodes

logger = logging.getLogger(__name__)

FAST_S = 3.0  # a refused request answers within this
RESPONSIVE_S = 1.0  # the event loop answers another route within this meanwhile
# ComfyUI's own limit on a request body (its --max-upload-size default, 100 MB).
COMFY_CLIENT_MAX_SIZE = 100 * 1024 * 1024
TWO_MEMBERS = [{"weight": 1.0}, {"weight": 1.0}]
# Valid, and among the slowest requests the route accepts: 10000 "normal" steps (the slowest
# scheduler), 10 members aggregated over all of them (100000 shares, the bound).
SLOW_VALID = {"schedule": {"end_percent": 1.0}, "members": [{"weight": 1.0}] * 10,
              "sigmas": {"sampler": {"steps": 10000, "scheduler": "normal"}}}


@pytest.fixture(scope="module")
def routes(pack):
    load_comfy_extra_nodes()  # the SIGMAS and ModelSampling nodes of comfy_extras
    from comfyui_amdm.nodes import routes as module

    return module


class Answer(NamedTuple):
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def chart_app(routes) -> web.Application:
    """The route registered as in ComfyUI's PromptServer, and a trivial route beside it."""
    table = web.RouteTableDef()
    routes.register(table)

    @table.get("/ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application(client_max_size=COMFY_CLIENT_MAX_SIZE)
    app.add_routes(table)
    return app


def served(routes, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(chart_app(routes))) as client:
            return await scenario(client)

    return asyncio.run(main())


async def post(client: TestClient, body: Any) -> Answer:
    """POST a JSON value, or raw bytes / an async iterator of bytes as they are."""
    data = body if isinstance(body, bytes) or hasattr(body, "__aiter__") else json.dumps(body).encode()
    start = time.perf_counter()
    async with client.post("/amdm/chart", data=data) as response:
        content = await response.read()
    return Answer(response.status, content, time.perf_counter() - start)


def post_once(routes, body: Any) -> Answer:
    return served(routes, lambda client: post(client, body))


async def chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    """A body sent chunked, with no Content-Length."""
    for _ in range(total // size):
        yield b" " * size


def sampler(**settings: Any) -> dict:
    return {"schedule": {}, "members": TWO_MEMBERS, "sigmas": {"sampler": settings}}


def graph(nodes: dict, output: list) -> dict:
    return {"schedule": {}, "members": [], "sigmas": {"nodes": nodes, "output": output}}


def flip_chain(length: int) -> dict:
    """BasicScheduler, then ``length`` FlipSigmas, each on the one before."""
    nodes = {"0": {"class_type": "BasicScheduler", "inputs": {"scheduler": "normal", "steps": 10, "denoise": 1.0}}}
    for n in range(1, length + 1):
        nodes[str(n)] = {"class_type": "FlipSigmas", "inputs": {"sigmas": [str(n - 1), 0]}}
    return graph(nodes, [str(length), 0])


BASIC = {"class_type": "BasicScheduler", "inputs": {"scheduler": "karras", "steps": 12, "denoise": 0.7}}

# (id, body, status, words the error must contain)
HOSTILE = [
    ("denoise 1e-5", sampler(steps=20, denoise=1e-5), 400,
     ["AMDMSampler", "steps 20 with denoise 1e-05 may schedule 1999999 steps", "at most 10000"]),
    ("steps 10000 denoise 0.01", sampler(steps=10000, denoise=0.01), 400,
     ["may schedule 1000000 steps", "at most 10000"]),
    ("denoise 5e-324", sampler(steps=20, denoise=5e-324), 400,
     ["AMDMSampler: steps 20 with denoise 5e-324 may schedule infinitely many steps", "at most 10000"]),
    ("steps 10001", sampler(steps=10001), 400, ["AMDMSampler: steps must lie in [1, 10000], got 10001"]),
    ("steps 1.5", sampler(steps=1.5), 400, ["steps must be a finite INT, got 1.5"]),
    ("denoise 2", sampler(denoise=2), 400, ["denoise must lie in [0.0, 1.0], got 2.0"]),
    ("unknown scheduler", sampler(scheduler="fastest"), 400, ["scheduler must be one of simple,", "got 'fastest'"]),
    ("extra sigmas field", {"sigmas": {"sampler": {}, "nodes": {}}}, 400, ["sigmas must be null"]),
    ("4000 members", {"members": [{}] * 4000}, 400, ["members has 4000 entries", "at most 64"]),
    ("65 members", {"members": [{"weight": 1.0}] * 65}, 400, ["members has 65 entries", "at most 64"]),
    ("NaN weight", b'{"members": [{"weight": NaN}, {"weight": 1}]}', 400, ["NaN is not a JSON number"]),
    ("Infinity weight", b'{"members": [{"weight": 1}, {"weight": -Infinity}]}', 400, ["-Infinity is not a JSON number"]),
    ("1e400 weight", b'{"members": [{"weight": 1}, {"weight": 1e400}]}', 400,
     ["member 2: weight must be a finite FLOAT, got inf"]),
    ("huge weight", {"members": [{"weight": 1.0}, {"weight": 1e300}]}, 400,
     ["member 2: weight must lie in [0.0, 100.0], got 1e+300"]),
    ("negative weight", {"members": [{"weight": -1}, {"weight": 1}]}, 400, ["member 1: weight must lie in [0.0, 100.0]"]),
    ("string weight", {"members": [{"weight": "1"}]}, 400, ["member 1: weight must be a finite FLOAT, got '1'"]),
    ("member not an object", {"members": [1.0]}, 400, ["member 1 must be a JSON object"]),
    ("huge int widget", {"schedule": {"target_member": 10 ** 400}}, 400, ["target_member must lie in [1, 64]"]),
    ("target_member 65", {"schedule": {"target_member": 65}}, 400, ["AggregationSchedule: target_member must lie in [1, 64]"]),
    ("end_percent 2", {"schedule": {"end_percent": 2}}, 400, ["end_percent must lie in [0.0, 1.0], got 2.0"]),
    ("unknown aggregation", {"schedule": {"aggregation": "cubic"}}, 400, ["aggregation must be one of", "got 'cubic'"]),
    ("boolean as number", {"schedule": {"start_step": True}}, 400, ["start_step must be a finite INT, got True"]),
    ("non-object body", [1, 2, 3], 400, ["the body must be a JSON object, got [1, 2, 3]"]),
    ("not JSON", b"{'schedule': }", 400, ["the body is not JSON"]),
    ("nested JSON", b"[" * 60000, 400, ["the body is not JSON", "recursion"]),
    ("not UTF-8", b'{"schedule": "\xff"}', 400, ["the body is not JSON"]),
    ("unknown field", {"schedule": {}, "graph": {}}, 400, ["unknown field(s) 'graph'"]),
    ("loader without class_type", {"loader": {"inputs": {}}}, 400, ["loader: class_type must be a string"]),
    ("unknown ModelSampling node", {"model_sampling": [{"class_type": "NoSuchNode", "inputs": {}}]}, 400,
     ["model_sampling[0]: unknown node type 'NoSuchNode'"]),
    ("not a ModelSampling node", {"model_sampling": [{"class_type": "BasicScheduler", "inputs": {}}]}, 400,
     ["BasicScheduler is not a ModelSampling node"]),
    ("ModelSampling shift 1e6", {"model_sampling": [{"class_type": "ModelSamplingSD3", "inputs": {"shift": 1e6}}]},
     400, ["ModelSamplingSD3: shift must lie in [0.0, 100.0], got 1000000.0"]),
    ("ModelSampling input missing", {"model_sampling": [{"class_type": "ModelSamplingFlux", "inputs": {}}]}, 400,
     ["ModelSamplingFlux: the max_shift input is missing"]),
    ("9 ModelSampling nodes",
     {"model_sampling": [{"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}}] * 9}, 400,
     ["model_sampling has 9 entries", "at most 8"]),
    ("SIGMAS cycle", graph({"1": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["2", 0]}},
                            "2": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["1", 0]}}}, ["1", 0]),
     400, ["the SIGMAS graph has a cycle through node '1'"]),
    ("SIGMAS graph too deep", flip_chain(40), 400, ["nested deeper than 32 links"]),
    ("SIGMAS graph too large", graph({str(n): BASIC for n in range(65)}, ["0", 0]), 400,
     ["the SIGMAS graph has 65 nodes", "at most 64"]),
    ("SIGMAS node missing", graph({"7": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4", 0], "step": 3}}},
                                  ["7", 0]), 400, ["node '4' is missing from the SIGMAS graph"]),
    ("SIGMAS link malformed", graph({"4": BASIC, "7": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4"], "step": 3}}},
                                    ["7", 0]), 400, ["SplitSigmas (node '7'): sigmas must be a link"]),
    ("SIGMAS output slot", graph({"4": BASIC}, ["4", 1]), 400, ["BasicScheduler (node '4') has 1 output(s)"]),
    ("INT below min", graph({"4": {**BASIC, "inputs": {**BASIC["inputs"], "steps": 0}}}, ["4", 0]), 400,
     ["BasicScheduler (node '4'): steps must lie in [1, 10000], got 0"]),
    ("FLOAT above max", graph({"1": {"class_type": "KarrasScheduler", "inputs": {
        "steps": 10, "sigma_max": 1e9, "sigma_min": 0.03, "rho": 7.0}}}, ["1", 0]), 400,
     ["KarrasScheduler (node '1'): sigma_max must lie in [0.0, 5000.0], got 1000000000.0"]),
    ("wrong combo value", graph({"4": {**BASIC, "inputs": {**BASIC["inputs"], "scheduler": "quantum"}}}, ["4", 0]), 400,
     ["BasicScheduler (node '4'): scheduler must be one of", "got 'quantum'"]),
    ("wrong type", graph({"4": BASIC, "7": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4", 0], "step": "3"}}},
                         ["7", 0]), 400, ["SplitSigmas (node '7'): step must be a finite INT, got '3'"]),
    ("widget missing", graph({"4": {**BASIC, "inputs": {"scheduler": "karras", "steps": 12}}}, ["4", 0]), 400,
     ["BasicScheduler (node '4'): the denoise input is missing"]),
    ("BasicScheduler denoise 1e-5", graph({"4": {**BASIC, "inputs": {**BASIC["inputs"], "denoise": 1e-5}}}, ["4", 0]),
     400, ["BasicScheduler (node '4'): steps 12 with denoise 1e-05 may schedule 1200000 steps"]),
    # AlignYourStepsScheduler schedules `steps` and keeps steps * denoise of them, but nothing
    # in its declaration says so: the chart counts steps / denoise, and says why.
    ("AlignYourStepsScheduler denoise 0.001", graph({"1": {"class_type": "AlignYourStepsScheduler", "inputs": {
        "model_type": "SD1", "steps": 20, "denoise": 0.001}}}, ["1", 0]), 400,
     ["AlignYourStepsScheduler (node '1'): steps 20 with denoise 0.001 may schedule 20000 steps; the chart "
      "schedules at most 10000 (it counts steps / denoise, as KSampler and BasicScheduler schedule, for any node "
      "with steps and denoise inputs: it cannot tell before running one that it schedules fewer)"]),
    ("64 members x 10000 steps", {"schedule": {"end_percent": 1.0}, "members": [{"weight": 1.0}] * 64,
                                  "sigmas": {"sampler": {"steps": 10000, "scheduler": "simple"}}}, 400,
     ["10000 steps x 64 members make 640000 shares", "at most 100000"]),
]


@pytest.mark.parametrize("body, status, words", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_body_is_refused_before_any_work(routes, body, status, words, request) -> None:
    answer = post_once(routes, body)
    logger.info("%s: %d in %.3f s, %d bytes", request.node.callspec.id, answer.status, answer.seconds,
                len(answer.body))
    assert answer.status == status, answer.body
    error = answer.json()["error"]
    for word in words:
        assert word in error
    assert answer.seconds < FAST_S
    assert len(answer.body) < 1024


def test_large_bodies_are_refused_unread(routes) -> None:
    """10 MB with its Content-Length, and a chunked body with none: refused at 64 KiB."""
    async def scenario(client: TestClient) -> list[Answer]:
        return [await post(client, b" " * 10_000_000), await post(client, chunks(100 * 1024))]

    for answer, name in zip(served(routes, scenario), ("10 MB body", "100 KiB chunked body")):
        logger.info("%s: %d in %.3f s", name, answer.status, answer.seconds)
        assert answer.status == 413
        assert answer.json() == {"error": "the body is larger than 65536 bytes"}
        assert answer.seconds < FAST_S
    # At the bound itself the body is read (and here is not JSON).
    assert b"not JSON" in post_once(routes, b" " * 65535 + b"x").body
    assert post_once(routes, b" " * 65535 + b"{}").status == 413


def test_a_node_that_fails_on_checked_inputs_is_the_clients_error(routes) -> None:
    """Inputs within KarrasScheduler's declared bounds on which it divides by zero."""
    answer = post_once(routes, graph({"1": {"class_type": "KarrasScheduler", "inputs": {
        "steps": 10, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 0.0}}}, ["1", 0]))
    assert answer.status == 400 and answer.json() == {"error": "ZeroDivisionError: float division by zero"}


def test_a_sigmas_node_making_too_many_steps_is_refused(routes) -> None:
    """ExtendIntermediateSigmas within its declared inputs makes 100 steps of each of 10000:
    the route refuses its output before anything reads it."""
    answer = post_once(routes, graph({
        "1": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 10000, "denoise": 1.0}},
        "2": {"class_type": "ExtendIntermediateSigmas", "inputs": {
            "sigmas": ["1", 0], "steps": 100, "start_at_sigma": -1.0, "end_at_sigma": 0.0, "spacing": "linear"}}},
        ["2", 0]))
    logger.info("ExtendIntermediateSigmas x100 on 10000 steps: %d in %.3f s", answer.status, answer.seconds)
    assert answer.status == 400
    assert answer.json()["error"] == ("ExtendIntermediateSigmas (node '2') gave 1000000 steps; "
                                      "the chart takes at most 10000")


def third_party_scheduler(step_input: str, options: dict) -> type:
    """A SIGMAS node as an installed pack may write one: its step count (``step_input``) declared
    with ``options``, no max or one far above ComfyUI's. It records each run; it refuses more
    than 10**7 steps itself, so that this test cannot take the machine's memory where the route
    fails to bound them."""
    class ThirdPartyScheduler:
        CATEGORY = "amdm tests"
        RETURN_TYPES = ("SIGMAS",)
        FUNCTION = "get_sigmas"
        runs: list[int] = []

        @classmethod
        def INPUT_TYPES(cls) -> dict:
            return {"required": {step_input: ("INT", options)}}

        def get_sigmas(self, **inputs: int) -> tuple:
            steps = inputs[step_input]
            self.runs.append(steps)
            if steps > 10 ** 7:
                raise RuntimeError(f"ThirdPartyScheduler would allocate {steps + 1} sigmas")
            return (torch.linspace(14.6, 0.0, steps + 1),)

    return ThirdPartyScheduler


@pytest.mark.parametrize("step_input, options", [
    ("steps", {"default": 20, "min": 1}),
    ("steps", {"default": 20, "min": 1, "max": 2 ** 31 - 1}),
    ("num_steps", {"default": 20, "min": 1, "max": 10 ** 12}),
], ids=["steps without max", "steps max 2**31-1", "num_steps max 1e12"])
def test_a_third_party_scheduler_is_bounded_whatever_it_declares(routes, comfy, monkeypatch, step_input,
                                                                  options) -> None:
    """1e9 steps, within what the node declares, are refused before it runs, naming the node
    and the input; the chart's own bound, 10000, is charted."""
    node = third_party_scheduler(step_input, options)
    monkeypatch.setitem(comfy.nodes.NODE_CLASS_MAPPINGS, "ThirdPartyScheduler", node)
    hostile = post_once(routes, graph({"1": {"class_type": "ThirdPartyScheduler",
                                             "inputs": {step_input: 10 ** 9}}}, ["1", 0]))
    logger.info("ThirdPartyScheduler %s 1e9: %d in %.3f s", step_input, hostile.status, hostile.seconds)
    assert hostile.status == 400 and hostile.seconds < FAST_S
    assert hostile.json() == {"error": f"ThirdPartyScheduler (node '1'): {step_input} must be at most 10000, the "
                                       f"most the chart schedules whatever the node declares; got 1000000000"}
    assert node.runs == []
    bound = post_once(routes, graph({"1": {"class_type": "ThirdPartyScheduler",
                                           "inputs": {step_input: 10000}}}, ["1", 0]))
    assert bound.status == 200 and bound.json()["steps"] == 10000 and bound.json()["exact"] is True
    assert node.runs == [10000]


def test_align_your_steps_is_charted_up_to_the_conservative_bound(routes, comfy) -> None:
    """steps / denoise at 10000 exactly: AlignYourStepsScheduler runs, and the chart shows the
    steps * denoise it keeps."""
    settings = {"model_type": "SD1", "steps": 100, "denoise": 0.01}
    expected = comfy.run("AlignYourStepsScheduler", **settings)[0]
    answer = post_once(routes, graph({"1": {"class_type": "AlignYourStepsScheduler", "inputs": settings}}, ["1", 0]))
    assert answer.status == 200, answer.body
    assert answer.json()["steps"] == 1 and answer.json()["sigmas"] == pytest.approx(expected.tolist(), rel=1e-6)


def test_only_the_wired_sigmas_path_runs(routes, comfy, sd15) -> None:
    """Nodes that ``output`` does not depend on are neither checked nor run: an unknown node,
    a cycle and a 1e-5 denoise beside the path change nothing."""
    basic = comfy.run("BasicScheduler", model=sd15.model, scheduler="karras", steps=12, denoise=0.7)[0]
    expected = comfy.run("SplitSigmas", sigmas=basic, step=3)[0]
    wired = {"4": BASIC, "7": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4", 0], "step": 3}}}
    beside = {"8": {"class_type": "NoSuchNode", "inputs": {}},
              "9": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["10", 0]}},
              "10": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["9", 0]}},
              "11": {**BASIC, "inputs": {**BASIC["inputs"], "steps": 10000, "denoise": 1e-5}}}
    alone = post_once(routes, graph(wired, ["7", 0]))
    answer = post_once(routes, graph({**wired, **beside}, ["7", 0]))
    assert answer.status == 200 and answer.seconds < FAST_S
    assert answer.json() == alone.json()
    data = answer.json()
    assert data["exact"] is True and data["note"] is None
    assert data["sigmas"] == pytest.approx(expected.tolist(), rel=1e-6)
    # The second output of SplitSigmas: the rest of the schedule.
    rest = post_once(routes, graph(wired, ["7", 1])).json()
    assert rest["sigmas"] == pytest.approx(comfy.run("SplitSigmas", sigmas=basic, step=3)[1].tolist(), rel=1e-6)


@pytest.mark.parametrize("nodes, note", [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "unknown node type 'NoSuchNode'"),
    ({"1": {"class_type": "VAEDecode", "inputs": {}}}, "VAEDecode does not produce SIGMAS"),
    ({"1": {"class_type": "LTXVScheduler", "inputs": {"steps": 10, "max_shift": 2.05, "base_shift": 0.95,
                                                       "stretch": True, "terminal": 0.1}}},
     "LTXVScheduler needs a LATENT input, which the chart cannot provide"),
    ({"1": {"class_type": "FlipSigmas", "inputs": {}}}, "FlipSigmas (node '1'): its sigmas input is not connected"),
], ids=["unknown type", "not SIGMAS", "LATENT input", "unconnected"])
def test_a_graph_the_chart_cannot_run_falls_back_with_a_note(routes, nodes, note) -> None:
    answer = post_once(routes, graph(nodes, ["1", 0]))
    assert answer.status == 200 and answer.seconds < FAST_S
    data = answer.json()
    assert data["exact"] is False and data["note"] == note
    assert data["steps"] == 20  # ComfyUI's default KSampler settings


def test_the_largest_answer_stays_under_its_bound(routes) -> None:
    answer = post_once(routes, SLOW_VALID)
    logger.info("10 members x 10000 steps: %d in %.3f s, %d bytes", answer.status, answer.seconds, len(answer.body))
    assert answer.status == 200
    data = answer.json()
    assert data["steps"] == 10000 and data["window"] == [0, 10000]
    assert len(data["shares"]) == 10000 and {len(row) for row in data["shares"]} == {10}
    assert len(answer.body) < 3 * 1024 * 1024


def chart_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("amdm-chart")]


def test_the_event_loop_answers_while_charts_are_computed(routes) -> None:
    """Three slow valid charts at once: while they run, another route on the same server
    answers within a second each time, and they run in one thread, one after another."""
    async def scenario(client: TestClient) -> tuple[list[Answer], list[float], list[bool], int]:
        charts = [asyncio.ensure_future(post(client, SLOW_VALID)) for _ in range(3)]
        await asyncio.sleep(0.05)
        pings, pending, threads = [], [], 0
        while not all(chart.done() for chart in charts):
            start = time.perf_counter()
            async with client.get("/ping") as response:
                assert await response.text() == "pong"
            pings.append(time.perf_counter() - start)
            pending.append(not all(chart.done() for chart in charts))
            threads = max(threads, len(chart_threads()))
            await asyncio.sleep(0.05)
        return [await chart for chart in charts], pings, pending, threads

    answers, pings, pending, threads = served(routes, scenario)
    logger.info("3 slow charts: %s s; %d pings meanwhile, slowest %.3f s",
                [round(answer.seconds, 3) for answer in answers], len(pings), max(pings))
    assert [answer.status for answer in answers] == [200] * 3
    assert answers[0].json() == answers[2].json()
    assert sum(pending) >= 3  # the pings overlapped the charts
    assert max(pings) < RESPONSIVE_S
    assert threads == 1
    # One at a time: the last answer waited for the two before it.
    slowest, fastest = max(answer.seconds for answer in answers), min(answer.seconds for answer in answers)
    assert slowest > 2 * fastest


def test_requests_beyond_the_queue_are_refused(routes) -> None:
    """More requests at once than MAX_QUEUED_CHARTS: the rest are told the route is busy, at
    once, and the queued ones are answered."""
    busy = {"schedule": {}, "members": [], "sigmas": {"sampler": {"steps": 10000, "scheduler": "normal"}}}
    count = routes.MAX_QUEUED_CHARTS + 3

    async def scenario(client: TestClient) -> list[Answer]:
        return list(await asyncio.gather(*(post(client, busy) for _ in range(count))))

    answers = served(routes, scenario)
    refused = [answer for answer in answers if answer.status == 503]
    logger.info("%d requests at once: %d answered, %d refused in at most %.3f s", count,
                count - len(refused), len(refused), max(answer.seconds for answer in refused))
    assert sorted(answer.status for answer in answers) == [200] * routes.MAX_QUEUED_CHARTS + [503] * 3
    assert all(answer.json()["error"] == f"{routes.MAX_QUEUED_CHARTS} chart requests are already waiting "
               f"(at most {routes.MAX_QUEUED_CHARTS}); try again" for answer in refused)
    assert all(answer.seconds < FAST_S for answer in refused)


def test_a_chart_past_its_time_is_abandoned(routes, monkeypatch) -> None:
    """With a time limit shorter than a slow chart: the client gets 503 when the limit
    passes, and the worker drops the chart at its next stage, free for the next request."""
    monkeypatch.setattr(routes, "CHART_TIME_LIMIT_S", 0.1)

    async def scenario(client: TestClient) -> tuple[Answer, Answer]:
        late = await post(client, SLOW_VALID)
        monkeypatch.setattr(routes, "CHART_TIME_LIMIT_S", 10.0)
        return late, await post(client, sampler(steps=10))

    late, next_one = served(routes, scenario)
    assert late.status == 503 and late.json() == {"error": "the chart took longer than 0.1 s"}
    assert late.seconds < 0.5
    assert next_one.status == 200 and next_one.json()["steps"] == 10


# --- through the real server ------------------------------------------------------------------

def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _post_real(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/api/amdm/chart", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _system_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/system_stats", timeout=60) as response:
        return json.load(response)


def test_hostile_requests_leave_the_real_server_responsive(comfy_server) -> None:
    """Through ComfyUI's own server: denoise 1e-5, 4000 members and a 10 MB body are refused
    within 3 s, and a slow valid chart is answered, while /system_stats, asked meanwhile,
    answers within 1 s each time."""
    comfy_server.require_pack()
    bodies = {"slow valid chart": json.dumps(SLOW_VALID).encode(),
              "denoise 1e-5": json.dumps(sampler(steps=20, denoise=1e-5)).encode(),
              "4000 members": json.dumps({"members": [{}] * 4000}).encode(),
              "10 MB body": b" " * 10_000_000}
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        charts = {name: pool.submit(_timed, lambda data=data: _post_real(comfy_server.url, data))
                  for name, data in bodies.items()}
        stats = []
        while not all(chart.done() for chart in charts.values()) or not stats:
            stats.append(_timed(lambda: _system_stats(comfy_server.url)))
        answers = {name: chart.result() for name, chart in charts.items()}
    for name, ((status, answer), seconds) in answers.items():
        logger.info("real server, %s: %d in %.3f s: %s", name, status, seconds, str(answer)[:120])
    logger.info("real server, /system_stats meanwhile: %d answers, slowest %.3f s", len(stats),
                max(seconds for _, seconds in stats))
    assert answers["denoise 1e-5"][0] == (400, {"error": "AMDMSampler: steps 20 with denoise 1e-05 may schedule "
                                                         "1999999 steps; the chart schedules at most 10000 (it "
                                                         "counts steps / denoise, as KSampler and BasicScheduler "
                                                         "schedule, for any node with steps and denoise inputs: "
                                                         "it cannot tell before running one that it schedules "
                                                         "fewer)"})
    assert answers["4000 members"][0] == (400, {"error": "members has 4000 entries; the chart takes at most 64"})
    assert answers["10 MB body"][0] == (413, {"error": "the body is larger than 65536 bytes"})
    (status, answer), _ = answers.pop("slow valid chart")
    assert status == 200 and answer["steps"] == 10000 and len(answer["shares"]) == 10000
    assert all(seconds < FAST_S for _, seconds in answers.values())
    assert all("system" in answer and seconds < RESPONSIVE_S for answer, seconds in stats)
