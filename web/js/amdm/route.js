// Talking to the chart route (nodes/routes.py, `POST /amdm/chart`): one request per schedule
// node whenever what it describes changes, and the chart's view of each answer: the window,
// each member's share and range of steps, the aggregated steps and the handoffs between
// members. The server computes all of it with the sampler's code; this file only reads it.
import { api } from "../../../../scripts/api.js";

const CHART_ROUTE = "/amdm/chart";

/** Per schedule node: the last body sent, its answer, the request the view shows it with, the view. */
const chartStates = new WeakMap();

function chartState(node) {
  let state = chartStates.get(node);
  if (!state) {
    state = { key: null, answer: null, answered: null, view: null, error: null };
    chartStates.set(node, state);
  }
  return state;
}

/**
 * Sends a schedule node's chart request (graph.js's chartRequest) unless its body is the one
 * sent last; `changed` runs when the view changed: an answer (or a failure) came, or what
 * the legend shows of the members changed.
 */
export function requestChart(node, request, changed) {
  const state = chartState(node);
  const key = JSON.stringify(request.body);
  if (key === state.key) {
    const shown = (r) => JSON.stringify([r.legend, r.computed]);
    if (state.answer && shown(request) !== shown(state.answered)) {
      state.answered = request;
      state.view = chartView(state.answer, request);
      changed();
    }
    return;
  }
  state.key = key;
  api.fetchApi(CHART_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" }, body: key })
    .then(async (response) => {
      const answer = await response.json();
      if (state.key !== key) return;
      state.answer = response.ok ? answer : null;
      state.answered = request;
      state.view = response.ok ? chartView(answer, request) : null;
      state.error = response.ok ? null : answer.error ?? `HTTP ${response.status}`;
    })
    .catch((error) => {
      if (state.key !== key) return;
      state.answer = state.view = null;
      state.error = String(error);
    })
    .finally(() => {
      if (state.key === key) changed();
    });
}

/** The chart's view of a schedule node's latest answer; null while the first is on its way. */
export function scheduleView(node) {
  const state = chartState(node);
  return state.view ?? (state.error ? { error: state.error } : null);
}

/**
 * Consecutive steps with the same active members, from each member's [first, stop) steps
 * (the sampler's spans: amdm_core.plan.spans_of).
 */
function spansOf(ranges, stepCount) {
  const spans = [];
  for (let k = 0; k < stepCount; k++) {
    const members = ranges.flatMap(([first, stop], m) => (k >= first && k < stop ? [m] : []));
    const last = spans[spans.length - 1];
    if (last && last.stop === k && String(last.members) === String(members)) last.stop = k + 1;
    else spans.push({ start: k, stop: k + 1, members });
  }
  return spans;
}

/**
 * Where one member hands the latent over to another: a member stepping alone, then (for a
 * soft handoff) steps where members aggregate, then another member stepping alone. `start`
 * and `stop` bound the aggregated steps between them (equal for a hard switch).
 */
function handoffsOf(spans) {
  const handoffs = [];
  let alone = null;
  for (const span of spans) {
    if (span.members.length === 1) {
      const [member] = span.members;
      if (alone && alone.member !== member) {
        handoffs.push({ from: alone.member, to: member, start: alone.stop, stop: span.start });
      }
      alone = { member, stop: span.stop };
    } else if (!span.members.length) {
      alone = null;
    }
  }
  return handoffs;
}

/** The steps each member takes when it has no range of its own: the target every step, the others the window. */
function followsSchedule(ranges, targetIndex, window, stepCount) {
  return ranges.every(([first, stop], m) => (m === targetIndex
    ? first === 0 && stop === stepCount
    : first === window[0] && stop === window[1]));
}

function chartView(answer, request) {
  const { legend } = request;
  const schedule = request.body.schedule;
  const [first, stop] = answer.window;
  const stepCount = answer.steps;
  const inWindow = Array.from({ length: stop - first }, (_, j) => first + j);
  const connected = legend.length > 0;
  let targetIndex = Number(schedule.target_member ?? 1) - 1;
  if (!connected || targetIndex >= legend.length) targetIndex = 0;
  let members = legend;
  let shares = answer.shares;
  const ranges = answer.ranges ?? [];
  if (!connected) {
    // Without a stack: the target's weight against the factor applied to all others.
    members = [
      { name: "target", weight: 1, deviation: 1 },
      { name: "others (weight factor)", weight: 1, deviation: 1 },
    ];
    shares = Array.from({ length: stepCount }, (_, k) => [1, k >= first && k < stop ? answer.factors[k - first] : 0]);
  } else if (!shares.length) {
    // The route answers no shares when the sampler would refuse the graph (`problem`).
    shares = Array.from({ length: stepCount }, () => legend.map((_, m) => (m === targetIndex ? 1 : 0)));
  }
  // Members with ranges of their own change who steps when; without any, the chart keeps
  // to the window.
  const ownRanges = connected && ranges.length === legend.length
    && !followsSchedule(ranges, targetIndex, answer.window, stepCount);
  const spans = ownRanges ? spansOf(ranges, stepCount) : [];
  return {
    request: request.body,
    schedule,
    stepCount,
    inWindow,
    members,
    targetIndex,
    shares,
    connected,
    ranges: ownRanges ? ranges : [],
    aggregated: spans.filter((span) => span.members.length > 1).map(({ start, stop }) => [start, stop]),
    handoffs: handoffsOf(spans),
    computed: request.computed,
    exact: answer.exact && !request.computed.length,
    family: answer.family,
    note: answer.note,
    problem: answer.problem,
  };
}
