// AMDM graph view, for both of ComfyUI's renderers (the classic LiteGraph canvas and Vue nodes):
// - AggregationSchedule gets a chart widget: the aggregation window over the sampler's real
//   steps and every member's share of the merged latent at each step;
// - ModelStack nodes show their member number, name and colour, the target starred.
//
// What the chart shows is computed by the server (nodes/routes.py) with the code the sampler
// runs, from a description of the graph around the schedule node; this file only reads the
// graph and draws. Widgets with a `draw` function are drawn by LiteGraph on the classic canvas
// and by the Vue renderer into a canvas of their own, so one drawing serves both.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const MEMBER_COLORS = ["#f0a04b", "#4fb3f0", "#7ccf6f", "#ef6fa0", "#b58cf0", "#e8d75a", "#4fd1c1", "#ff8a65"];
const WINDOW_COLOR = "#f0d050";
const CHART_ROUTE = "/amdm/chart";
const CHART_WIDGET = "amdm_chart";
const BADGE_WIDGET = "amdm_member";
const CHART_HEIGHT = 240;
const CHART_MIN_WIDTH = 320;
const BADGE_ROW_HEIGHT = 22;
const MAX_LEGEND_MEMBERS = 4;
const CONSUMER_TYPES = new Set(["AMDMSampler", "AMDMGuider"]);
const SAMPLER_WIDGETS = ["steps", "scheduler", "sampler_name", "denoise"];

export function memberColor(index) {
  return MEMBER_COLORS[index % MEMBER_COLORS.length];
}

// ------------------------------------------------------------------ reading the graph

function widgetValue(node, name, fallback) {
  const widget = node?.widgets?.find((w) => w.name === name);
  return widget === undefined || widget.value === undefined || widget.value === null ? fallback : widget.value;
}

/** A node's widget values by name, without the widgets that are not node inputs (ours). */
function widgetValues(node) {
  const values = {};
  for (const widget of node.widgets ?? []) {
    if (widget.serialize === false || widget.name === undefined) continue;
    values[widget.name] = widget.value;
  }
  return values;
}

/** The node and output slot feeding the named input, looking through legacy Reroute nodes. */
function inputSource(node, inputName) {
  let current = node;
  let slotIndex = current.inputs?.findIndex((input) => input.name === inputName) ?? -1;
  for (let hops = 0; hops < 32 && slotIndex >= 0; hops++) {
    const link = current.getInputLink(slotIndex);
    if (!link) return null;
    const origin = current.graph.getNodeById(link.origin_id);
    if (!origin) return null;
    if (origin.type !== "Reroute") return { node: origin, slot: link.origin_slot };
    current = origin;
    slotIndex = 0;
  }
  return null;
}

/** Every (node, input name) an output slot feeds, read from the targets' input links. */
function outputTargets(node, slot, depth = 0) {
  const targets = [];
  if (depth > 32) return targets;
  for (const target of new Set(node.getOutputNodes(slot) ?? [])) {
    (target.inputs ?? []).forEach((input, index) => {
      const link = target.getInputLink(index);
      if (!link || link.origin_id !== node.id || link.origin_slot !== slot) return;
      if (target.type === "Reroute") targets.push(...outputTargets(target, 0, depth + 1));
      else targets.push({ node: target, inputName: input.name });
    });
  }
  return targets;
}

/** The ModelStack nodes of the chain ending in `node`'s stack input, first member first. */
function stackNodesFeeding(node) {
  const stack = [];
  const seen = new Set();
  let source = inputSource(node, "stack");
  while (source && source.node.type === "ModelStack" && !seen.has(source.node.id)) {
    seen.add(source.node.id);
    stack.unshift(source.node);
    source = inputSource(source.node, "stack");
  }
  return stack;
}

function readMember(stackNode) {
  return {
    name: String(widgetValue(stackNode, "name", "") ?? ""),
    weight: Number(widgetValue(stackNode, "weight", 1.0)),
    deviation: Number(widgetValue(stackNode, "deviation", 1.0)),
  };
}

/** Walks forward from a ModelStack to the sampler or guider its chain ends in. */
function chainConsumer(stackNode) {
  const seen = new Set();
  let current = stackNode;
  while (current && !seen.has(current.id)) {
    seen.add(current.id);
    const targets = outputTargets(current, 0).filter((t) => t.inputName === "stack");
    const consumer = targets.find((t) => CONSUMER_TYPES.has(t.node.type));
    if (consumer) return consumer.node;
    current = targets.find((t) => t.node.type === "ModelStack")?.node;
  }
  return null;
}

function scheduleConsumer(scheduleNode) {
  return outputTargets(scheduleNode, 0)
    .filter((t) => t.inputName === "schedule")
    .map((t) => t.node)
    .find((n) => CONSUMER_TYPES.has(n.type)) ?? null;
}

/** Member number, chain length, and target flag for a ModelStack node. */
export function memberInfo(stackNode) {
  let index = 0;
  const seen = new Set([stackNode.id]);
  let source = inputSource(stackNode, "stack");
  while (source && source.node.type === "ModelStack" && !seen.has(source.node.id)) {
    seen.add(source.node.id);
    index++;
    source = inputSource(source.node, "stack");
  }
  const consumer = chainConsumer(stackNode);
  const total = consumer ? stackNodesFeeding(consumer).length : null;
  const scheduleSource = consumer ? inputSource(consumer, "schedule") : null;
  const targetMember = scheduleSource ? Number(widgetValue(scheduleSource.node, "target_member", 1)) : 1;
  return { index, total, isTarget: index === targetMember - 1 };
}

/**
 * A member's model path: the node at its start (the loader) and the ModelSampling* nodes
 * between it and the ModelStack, loader side first.
 */
function modelPath(stackNode) {
  const chain = [];
  const seen = new Set();
  let loader = null;
  let source = inputSource(stackNode, "model");
  while (source && !seen.has(source.node.id)) {
    const node = source.node;
    seen.add(node.id);
    if (node.type?.startsWith("ModelSampling")) chain.unshift({ class_type: node.type, inputs: widgetValues(node) });
    const modelInput = node.inputs?.find((input) => input.type === "MODEL");
    source = modelInput ? inputSource(node, modelInput.name) : null;
    if (!modelInput) loader = { class_type: node.type, inputs: widgetValues(node) };
  }
  return { loader, chain };
}

/** The SIGMAS nodes feeding `source`, as an API-format graph with links as [id, slot]. */
function sigmasGraph(source) {
  const graph = {};
  const visit = (node, depth) => {
    const id = String(node.id);
    if (graph[id] || depth > 32) return;
    const inputs = widgetValues(node);
    graph[id] = { class_type: node.type, inputs };
    for (const input of node.inputs ?? []) {
      if (input.type !== "SIGMAS") continue;
      const upstream = inputSource(node, input.name);
      if (!upstream) continue;
      inputs[input.name] = [String(upstream.node.id), upstream.slot];
      visit(upstream.node, depth + 1);
    }
  };
  visit(source.node, 0);
  return { nodes: graph, output: [String(source.node.id), source.slot] };
}

/** Where the consumer's sigmas come from, in the chart route's terms; null if unknown. */
function sigmasSource(consumer) {
  if (consumer?.type === "AMDMSampler") {
    return { sampler: Object.fromEntries(SAMPLER_WIDGETS.map((name) => [name, widgetValue(consumer, name)])) };
  }
  if (consumer?.type === "AMDMGuider") {
    for (const target of outputTargets(consumer, 0)) {
      if (target.node.type !== "SamplerCustomAdvanced") continue;
      const source = inputSource(target.node, "sigmas");
      if (source) return sigmasGraph(source);
    }
  }
  return null;
}

/**
 * What the chart route needs to know about a schedule node's graph (`body`), and the members
 * as the legend names them.
 */
export function chartRequest(scheduleNode) {
  const consumer = scheduleConsumer(scheduleNode);
  const stack = consumer ? stackNodesFeeding(consumer) : [];
  const schedule = widgetValues(scheduleNode);
  const target = stack[Number(schedule.target_member ?? 1) - 1] ?? stack[0];
  const path = target ? modelPath(target) : { loader: null, chain: [] };
  const body = {
    schedule,
    members: stack.map((node) => ({ weight: readMember(node).weight })),
    loader: path.loader,
    model_sampling: path.chain,
    sigmas: sigmasSource(consumer),
  };
  return { body, legend: stack.map(readMember) };
}

// ------------------------------------------------------------------ the chart's data

/** Per schedule node: the last request sent, and the route's answer with its request. */
const chartStates = new WeakMap();

function chartState(node) {
  let state = chartStates.get(node);
  if (!state) {
    state = { key: null, answered: null, data: null, error: null };
    chartStates.set(node, state);
  }
  return state;
}

/** Redraws a node in whichever renderer shows it. */
function redraw(node) {
  for (const widget of node.widgets ?? []) {
    if (widget.name === CHART_WIDGET || widget.name === BADGE_WIDGET) widget.triggerDraw?.();
  }
  node.graph?.setDirtyCanvas(true, true);
}

/** Asks the route again when the graph around the schedule node changed; redraws on answer. */
function refreshChart(node) {
  let request;
  let key;
  try {
    request = chartRequest(node);
    key = JSON.stringify(request.body);
  } catch (error) {
    reportOnce(node, "read the graph around", error);
    return;
  }
  const state = chartState(node);
  if (key === state.key) return;
  state.key = key;
  api.fetchApi(CHART_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" }, body: key })
    .then(async (response) => {
      const answer = await response.json();
      if (state.key !== key) return;
      state.answered = request;
      state.data = response.ok ? answer : null;
      state.error = response.ok ? null : answer.error ?? `HTTP ${response.status}`;
    })
    .catch((error) => {
      if (state.key !== key) return;
      state.data = null;
      state.error = String(error);
    })
    .finally(() => {
      if (state.key === key) redraw(node);
    });
}

/** The chart's data, or null while the first answer is on its way. */
export function scheduleView(node) {
  const state = chartState(node);
  if (!state.data) return state.error ? { error: state.error } : null;
  const { data, answered } = state;
  const legend = answered.legend;
  const [first, stop] = data.window;
  const inWindow = Array.from({ length: stop - first }, (_, j) => first + j);
  const connected = legend.length > 0;
  let members = legend;
  let shares = data.shares;
  const schedule = answered.body.schedule;
  let targetIndex = Number(schedule.target_member ?? 1) - 1;
  if (!connected || targetIndex >= legend.length) targetIndex = 0;
  if (!connected) {
    // Without a stack: the target's weight against the factor applied to all others.
    members = [
      { name: "target", weight: 1, deviation: 1 },
      { name: "others (weight factor)", weight: 1, deviation: 1 },
    ];
    shares = Array.from({ length: data.steps }, (_, k) => [1, k >= first && k < stop ? data.factors[k - first] : 0]);
  } else if (!shares.length) {
    shares = Array.from({ length: data.steps }, () => legend.map((_, m) => (m === targetIndex ? 1 : 0)));
  }
  return {
    request: answered.body,
    schedule,
    stepCount: data.steps,
    inWindow,
    members,
    targetIndex,
    shares,
    connected,
    exact: data.exact,
    family: data.family,
    note: data.note,
    problem: data.problem,
  };
}

// ------------------------------------------------------------------ drawing

function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > maxWidth) cut = cut.slice(0, -1);
  return cut + "…";
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0$/, "");
}

/** Step indices to label under the columns: first, window start and end, last; no overlaps. */
function axisSteps(stepCount, inWindow, stepWidth) {
  const wanted = [0, inWindow[0], inWindow[inWindow.length - 1], stepCount - 1]
    .filter((k) => k !== undefined && k >= 0 && k < stepCount);
  const priority = [...new Set([inWindow[0], inWindow[inWindow.length - 1], ...wanted])].filter((k) => wanted.includes(k));
  const chosen = [];
  for (const k of priority) {
    if (chosen.every((c) => Math.abs(c - k) * stepWidth >= 18)) chosen.push(k);
  }
  return chosen;
}

/** The schedule chart inside the rectangle (x, y, width, height) of the node's coordinates. */
function drawScheduleChart(ctx, node, x, y, width, height) {
  refreshChart(node);
  const view = scheduleView(node);
  if (width < 60 || height < 60) return;

  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.beginPath();
  ctx.roundRect(x, y, width, height, 4);
  ctx.fill();
  ctx.font = "11px Arial";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  if (!view || view.error) {
    ctx.fillStyle = view ? "#f08c6c" : "#aaa";
    ctx.fillText(fitText(ctx, view ? `chart unavailable: ${view.error}` : "computing the window…", width - 8), x + 4, y + 4);
    ctx.restore();
    return;
  }

  const { inWindow, stepCount, schedule } = view;
  const approx = view.exact ? "" : "≈";
  const header = inWindow.length
    ? `window ${approx}steps ${inWindow[0]}–${inWindow[inWindow.length - 1]} (${inWindow.length} of ${stepCount})`
    : `window empty (0 of ${approx}${stepCount} steps)`;
  ctx.fillStyle = inWindow.length ? "#ddd" : "#f08c6c";
  ctx.fillText(fitText(ctx, header, width - 8), x + 4, y + 4);
  let detail = view.connected ? schedule.aggregation : "no stack: weight factor";
  detail += ` · ${schedule.weight_curve}`;
  if (schedule.deviation_mode === "relative") detail += ` · deviation r=${formatNumber(schedule.deviation_strength)}`;
  else if (schedule.deviation_mode === "absolute") detail += ` · deviation p=${formatNumber(schedule.deviation_strength)}`;
  detail += ` · ${view.family}`;
  ctx.fillStyle = "#aaa";
  ctx.fillText(fitText(ctx, detail, width - 8), x + 4, y + 18);

  const legendMembers = view.members.slice(0, MAX_LEGEND_MEMBERS);
  const hiddenMembers = view.members.length - legendMembers.length;
  const message = view.problem ?? view.note;
  const legendHeight = (legendMembers.length + (message || hiddenMembers ? 1 : 0)) * 13 + 4;
  const plot = { x: x + 26, y: y + 42, w: width - 34, h: Math.max(30, height - 42 - 18 - legendHeight) };
  const stepWidth = stepCount > 0 ? plot.w / stepCount : plot.w;
  const columnTotals = view.shares.map((row) => row.reduce((sum, share) => sum + share, 0));
  // Rounded so that shares summing to 1 up to float error keep the axis at exactly 1.
  const yMax = view.connected ? Math.max(1, ...columnTotals.map((t) => Math.round(t * 1e4) / 1e4)) : 1;
  const yOf = (value) => plot.y + plot.h * (1 - Math.min(Math.max(value / yMax, 0), 1));

  ctx.fillStyle = "rgba(240,200,80,0.16)";
  for (const k of inWindow) ctx.fillRect(plot.x + k * stepWidth, plot.y, stepWidth, plot.h);
  if (inWindow.length) {
    // A bracket above the columns: the window's extent, readable even where columns fill it.
    ctx.fillStyle = WINDOW_COLOR;
    ctx.fillRect(plot.x + inWindow[0] * stepWidth, plot.y - 5, inWindow.length * stepWidth, 3);
  }

  ctx.strokeStyle = "#777";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(plot.x, plot.y);
  ctx.lineTo(plot.x, plot.y + plot.h);
  ctx.lineTo(plot.x + plot.w, plot.y + plot.h);
  ctx.stroke();
  ctx.font = "9px Arial";
  ctx.fillStyle = "#999";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(formatNumber(yMax), plot.x - 4, plot.y);
  ctx.fillText("0", plot.x - 4, plot.y + plot.h);
  // Step indices (0-based, as start_step / end_step count them) under their columns.
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillText("step", plot.x - 13, plot.y + plot.h + 4);
  for (const k of axisSteps(stepCount, inWindow, stepWidth)) {
    const centre = plot.x + (k + 0.5) * stepWidth;
    ctx.fillStyle = inWindow.includes(k) ? WINDOW_COLOR : "#999";
    ctx.fillRect(centre - 0.5, plot.y + plot.h, 1, 3);
    ctx.fillText(String(k), centre, plot.y + plot.h + 4);
  }

  if (view.connected) {
    // Stacked columns: each member's share of the merged latent at that step. The paper's
    // L2-normalised weights can add up to more than one; the axis grows to show it.
    const order = [view.targetIndex, ...view.members.keys()].filter((m, i, all) => all.indexOf(m) === i);
    for (let k = 0; k < stepCount; k++) {
      let base = 0;
      for (const m of order) {
        const share = view.shares[k][m];
        if (share <= 0) continue;
        ctx.fillStyle = memberColor(m);
        const y0 = yOf(base);
        const y1 = yOf(base + share);
        ctx.fillRect(plot.x + k * stepWidth + 0.5, y1, Math.max(stepWidth - 1, 1), y0 - y1);
        base += share;
      }
    }
  } else {
    // Stepped lines: the target's weight against the factor applied to every other member.
    view.members.forEach((member, m) => {
      ctx.strokeStyle = m === 0 ? memberColor(0) : "#bbb";
      ctx.lineWidth = m === 0 ? 2.5 : 1.5;
      ctx.beginPath();
      for (let k = 0; k < stepCount; k++) {
        const yk = yOf(view.shares[k][m]);
        const x0 = plot.x + k * stepWidth;
        if (k === 0) ctx.moveTo(x0, yk);
        else ctx.lineTo(x0, yk);
        ctx.lineTo(x0 + stepWidth, yk);
      }
      ctx.stroke();
    });
  }

  if (schedule.deviation_mode === "relative" && inWindow.length) {
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "rgba(255,255,255,0.6)";
    const yr = yOf(schedule.deviation_strength);
    const xEnd = plot.x + (inWindow[inWindow.length - 1] + 1) * stepWidth;
    ctx.beginPath();
    ctx.moveTo(plot.x + inWindow[0] * stepWidth, yr);
    ctx.lineTo(xEnd, yr);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#eee";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText("r", xEnd + 2, yr + 4);
  }

  ctx.font = "10px Arial";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let legendY = plot.y + plot.h + 18;
  legendMembers.forEach((member, m) => {
    ctx.fillStyle = view.connected || m === 0 ? memberColor(m) : "#bbb";
    ctx.fillRect(x + 6, legendY + 2, 8, 8);
    ctx.fillStyle = "#ccc";
    let label = member.name;
    if (view.connected) {
      label = `#${m + 1}${member.name ? " " + member.name : ""}${m === view.targetIndex ? " (target)" : ""}`;
      label += ` · w ${formatNumber(member.weight)}`;
      if (schedule.deviation_mode !== "none") {
        const strength = schedule.deviation_strength * member.deviation;
        label += ` · ${schedule.deviation_mode === "relative" ? "r" : "p"} ${formatNumber(strength)}`;
      }
    }
    ctx.fillText(fitText(ctx, label, width - 24), x + 18, legendY);
    legendY += 13;
  });
  if (message) {
    ctx.fillStyle = view.problem ? "#f08c6c" : "#aaa";
    ctx.fillText(fitText(ctx, message, width - 12), x + 6, legendY);
  } else if (hiddenMembers) {
    ctx.fillText(`+${hiddenMembers} more`, x + 18, legendY);
  }
  ctx.restore();
}

function badgeLabel(node) {
  const info = memberInfo(node);
  const name = String(widgetValue(node, "name", "") ?? "");
  let label = `#${info.index + 1}${info.total ? "/" + info.total : ""}`;
  if (name) label += ` ${name}`;
  if (info.isTarget) label += " ★";
  return { label, color: memberColor(info.index) };
}

/** A rounded pill in the member's colour, right-aligned at `right`. */
function drawPill(ctx, label, color, right, y, height, maxWidth) {
  ctx.save();
  ctx.font = "bold 11px Arial";
  const text = fitText(ctx, label, maxWidth - 12);
  const pillWidth = ctx.measureText(text).width + 12;
  const x = right - pillWidth;
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.roundRect(x, y, pillWidth, height, 6);
  ctx.fill();
  ctx.fillStyle = "#111";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 6, y + height / 2 + 1);
  ctx.restore();
}

/** Classic canvas: the badge in the title bar and a coloured left edge. */
function drawMemberTitle(node, ctx) {
  const { label, color } = badgeLabel(node);
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  drawPill(ctx, label, color, node.size[0] - 8, -titleHeight + 5, titleHeight - 10, Math.max(40, node.size[0] * 0.45));
  // A coloured edge so members stay recognisable when the title is off screen.
  ctx.save();
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, 3, node.size[1]);
  ctx.restore();
}

/** Logs a failure once per node instead of on every frame. */
function reportOnce(node, what, error) {
  if (node.amdmFailed) return;
  node.amdmFailed = true;
  console.error(`AMDM: could not ${what} ${node.type} #${node.id}`, error);
}

/** Runs a drawing of an expanded node; a failure is logged, never thrown into the renderer. */
function guarded(node, draw) {
  if (node.flags?.collapsed) return;
  try {
    draw();
  } catch (error) {
    reportOnce(node, "draw", error);
  }
}

// ------------------------------------------------------------------ widgets

/**
 * The chart: a widget of fixed height, drawn by either renderer. (A widget that grows with
 * the node would grow without end under Vue nodes, which size the node to its widgets.)
 */
function addChartWidget(node) {
  node.addCustomWidget({
    name: CHART_WIDGET,
    type: CHART_WIDGET,
    value: null,
    serialize: false,
    // hideInPanel: the side panel would bind a second copy, and a widget redraws only one.
    options: { serialize: false, hideInPanel: true },
    computeSize: (width) => [width ?? CHART_MIN_WIDTH, CHART_HEIGHT],
    draw(ctx, drawnNode, width, y) {
      guarded(drawnNode, () => drawScheduleChart(ctx, drawnNode, 10, y, width - 20, CHART_HEIGHT));
    },
  });
}

/** The member badge as a widget row, for the Vue renderer, which draws no titles of ours. */
function addBadgeWidget(node) {
  node.addCustomWidget({
    name: BADGE_WIDGET,
    type: BADGE_WIDGET,
    value: null,
    serialize: false,
    // hideInPanel: the side panel would bind a second copy, and a widget redraws only one.
    options: { serialize: false, hideInPanel: true },
    // On the classic canvas the title carries the badge, so the row takes no space there.
    computeSize: (width) => [width ?? 0, LiteGraph.vueNodesMode ? BADGE_ROW_HEIGHT : -4],
    draw(ctx, drawnNode, width, y) {
      if (!LiteGraph.vueNodesMode) return;
      guarded(drawnNode, () => {
        const { label, color } = badgeLabel(drawnNode);
        ctx.save();
        ctx.fillStyle = color;
        ctx.fillRect(0, y + 2, 4, BADGE_ROW_HEIGHT - 4);
        ctx.restore();
        drawPill(ctx, label, color, width - 10, y + 2, BADGE_ROW_HEIGHT - 4, width - 24);
      });
    },
  });
}

let refreshQueued = false;

/** Brings every chart and badge of the shown graph up to date with it, once per task. */
function refreshGraphView() {
  if (refreshQueued) return;
  refreshQueued = true;
  queueMicrotask(() => {
    refreshQueued = false;
    const graph = app.canvas?.graph ?? app.graph;
    for (const node of graph?.nodes ?? []) {
      if (node.type === "AggregationSchedule") refreshChart(node);
      if (node.type === "AggregationSchedule" || node.type === "ModelStack") redraw(node);
    }
  });
}

/**
 * Refresh on every widget edit of any node: the chart reads the sampler's, the SIGMAS
 * nodes', the ModelSampling nodes' and the target's loader's widgets. Both renderers call a
 * widget's callback on an edit; the Vue renderer draws our widgets only when asked.
 */
function refreshOnWidgetChange(node) {
  for (const widget of node.widgets ?? []) {
    const original = widget.callback;
    widget.callback = function (...args) {
      const result = original?.apply(this, args);
      refreshGraphView();
      return result;
    };
  }
}

app.registerExtension({
  name: "amdmaggregationofmultiplediffusionmodels.GraphView",
  setup() {
    // The workflow's change tracker: links, undo, pasted nodes.
    api.addEventListener("graphChanged", refreshGraphView);
  },
  nodeCreated(node) {
    refreshOnWidgetChange(node);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "AggregationSchedule" && nodeData.name !== "ModelStack") return;
    const isSchedule = nodeData.name === "AggregationSchedule";

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      if (isSchedule) {
        addChartWidget(this);
        const [width, height] = this.computeSize();
        this.setSize([Math.max(width, CHART_MIN_WIDTH), height]);
      } else {
        addBadgeWidget(this);
      }
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      if (this.graph) refreshGraphView();
      return result;
    };

    if (!isSchedule) {
      const onDrawForeground = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
        const result = onDrawForeground?.apply(this, [ctx, ...rest]);
        guarded(this, () => drawMemberTitle(this, ctx));
        return result;
      };
    }
  },
});
