// AMDM graph view: draws the aggregation window and every member's share per step on the
// AggregationSchedule node, and marks each ModelStack node with its member number, name
// and colour. Everything is recomputed from the live graph at draw time, so widget edits
// and new connections show up on the next frame.
import { app } from "../../../scripts/app.js";
import {
  alignYourStepsSigmas,
  basicSchedulerSigmas,
  curveFactor,
  exponentialSigmas,
  karrasSigmas,
  ksamplerSigmas,
  memberShares,
  polyexponentialSigmas,
  windowSteps,
} from "./amdm_schedule.js";

const MEMBER_COLORS = ["#f0a04b", "#4fb3f0", "#7ccf6f", "#ef6fa0", "#b58cf0", "#e8d75a", "#4fd1c1", "#ff8a65"];
const WINDOW_COLOR = "#f0d050";
const DEFAULT_STEPS = 20;
const DEFAULT_SCHEDULER = "simple";
const CHART_MIN_HEIGHT = 240;
const CHART_MIN_WIDTH = 320;
const MAX_LEGEND_MEMBERS = 4;
const CONSUMER_TYPES = new Set(["AMDMSampler", "AMDMGuider"]);

export function memberColor(index) {
  return MEMBER_COLORS[index % MEMBER_COLORS.length];
}

function widgetValue(node, name, fallback) {
  const widget = node?.widgets?.find((w) => w.name === name);
  return widget === undefined || widget.value === undefined || widget.value === null ? fallback : widget.value;
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

/** Every (node, input name) an output slot feeds. */
function outputTargets(node, slot) {
  const targets = [];
  for (const linkId of node.outputs?.[slot]?.links ?? []) {
    const link = node.graph.getLink(linkId);
    const target = link && node.graph.getNodeById(link.target_id);
    if (!target) continue;
    if (target.type === "Reroute") {
      targets.push(...outputTargets(target, 0));
    } else {
      targets.push({ node: target, inputName: target.inputs?.[link.target_slot]?.name });
    }
  }
  return targets;
}

function readMember(stackNode) {
  return {
    name: String(widgetValue(stackNode, "name", "") ?? ""),
    weight: Number(widgetValue(stackNode, "weight", 1.0)),
    deviation: Number(widgetValue(stackNode, "deviation", 1.0)),
  };
}

/** Members of the chain ending in `node`'s stack input, first member first. */
function membersFeeding(node) {
  const members = [];
  const seen = new Set();
  let source = inputSource(node, "stack");
  while (source && source.node.type === "ModelStack" && !seen.has(source.node.id)) {
    seen.add(source.node.id);
    members.unshift(readMember(source.node));
    source = inputSource(source.node, "stack");
  }
  return members;
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

/** Sigmas produced by a SIGMAS output, for the core scheduler nodes; null if unknown. */
function sigmasFrom(source, depth = 0) {
  if (!source || depth > 16) return null;
  const { node, slot } = source;
  const w = (name, fallback) => widgetValue(node, name, fallback);
  switch (node.type) {
    case "BasicScheduler":
      return basicSchedulerSigmas(w("scheduler", "normal"), w("steps", DEFAULT_STEPS), w("denoise", 1.0));
    case "KarrasScheduler":
      return karrasSigmas(w("steps", DEFAULT_STEPS), w("sigma_min", 0.0291675), w("sigma_max", 14.614642), w("rho", 7.0));
    case "ExponentialScheduler":
      return exponentialSigmas(w("steps", DEFAULT_STEPS), w("sigma_min", 0.0291675), w("sigma_max", 14.614642));
    case "PolyexponentialScheduler":
      return polyexponentialSigmas(w("steps", DEFAULT_STEPS), w("sigma_min", 0.0291675), w("sigma_max", 14.614642), w("rho", 1.0));
    case "AlignYourStepsScheduler":
      return alignYourStepsSigmas(w("model_type", "SD1"), w("steps", 10), w("denoise", 1.0));
    case "SplitSigmas": {
      const parent = sigmasFrom(inputSource(node, "sigmas"), depth + 1);
      if (!parent) return null;
      const step = w("step", 0);
      return slot === 0 ? parent.slice(0, step + 1) : parent.slice(step);
    }
    case "SplitSigmasDenoise": {
      const parent = sigmasFrom(inputSource(node, "sigmas"), depth + 1);
      if (!parent) return null;
      const total = Math.round(Math.max(parent.length - 1, 0) * w("denoise", 1.0));
      return slot === 0 ? parent.slice(0, parent.length - total) : parent.slice(-(total + 1));
    }
    default:
      return null;
  }
}

/** The sigmas the consumer of a schedule samples with, and whether they are exact. */
function consumerSigmas(consumer) {
  if (consumer?.type === "AMDMSampler") {
    return {
      sigmas: ksamplerSigmas(
        widgetValue(consumer, "scheduler", DEFAULT_SCHEDULER),
        widgetValue(consumer, "steps", DEFAULT_STEPS),
        widgetValue(consumer, "denoise", 1.0),
        widgetValue(consumer, "sampler_name", ""),
      ),
      exact: true,
    };
  }
  if (consumer?.type === "AMDMGuider") {
    for (const target of outputTargets(consumer, 0)) {
      if (target.node.type !== "SamplerCustomAdvanced") continue;
      const sigmas = sigmasFrom(inputSource(target.node, "sigmas"));
      if (sigmas) return { sigmas, exact: true };
    }
  }
  return { sigmas: ksamplerSigmas(DEFAULT_SCHEDULER, DEFAULT_STEPS), exact: false };
}

function readSchedule(node) {
  return {
    start_percent: Number(widgetValue(node, "start_percent", 0.0)),
    end_percent: Number(widgetValue(node, "end_percent", 0.4)),
    aggregation: widgetValue(node, "aggregation", "linear"),
    weight_curve: widgetValue(node, "weight_curve", "constant"),
    deviation_mode: widgetValue(node, "deviation_mode", "none"),
    deviation_strength: Number(widgetValue(node, "deviation_strength", 0.0)),
    target_member: Number(widgetValue(node, "target_member", 1)),
    start_step: Number(widgetValue(node, "start_step", 0)),
    end_step: Number(widgetValue(node, "end_step", 10000)),
  };
}

/** What the AMDM nodes would reject about this schedule, in words; null if nothing. */
function scheduleProblem(schedule, memberCount) {
  if (schedule.end_percent <= schedule.start_percent) return "end_percent must be greater than start_percent";
  if (schedule.end_step <= schedule.start_step) return "end_step must be greater than start_step";
  if (schedule.deviation_mode === "relative" && schedule.deviation_strength > 1) {
    return "relative deviation_strength must be at most 1";
  }
  if (memberCount !== null && schedule.target_member > memberCount) {
    return `target_member ${schedule.target_member} > ${memberCount} member(s)`;
  }
  return null;
}

/** Everything the schedule chart shows, derived from the graph around the schedule node. */
export function scheduleView(scheduleNode) {
  const schedule = readSchedule(scheduleNode);
  const consumer = outputTargets(scheduleNode, 0)
    .filter((t) => t.inputName === "schedule")
    .map((t) => t.node)
    .find((n) => CONSUMER_TYPES.has(n.type)) ?? null;
  const { sigmas, exact } = consumerSigmas(consumer);
  const stepCount = Math.max(sigmas.length - 1, 0);
  const inWindow = windowSteps(sigmas, schedule);
  let members = consumer ? membersFeeding(consumer) : [];
  const connected = members.length > 0;
  let targetIndex = schedule.target_member - 1;
  let problem = scheduleProblem(schedule, connected ? members.length : null);
  if (!problem && connected && members.length < 2) problem = "a single member samples alone";
  if (!connected) {
    // Without a stack: the target's curve against the factor applied to all others.
    members = [
      { name: "target", weight: 1, deviation: 1 },
      { name: "others (weight factor)", weight: 1, deviation: 1 },
    ];
    targetIndex = 0;
  } else if (targetIndex >= members.length) {
    targetIndex = 0;
  }
  if (problem) inWindow.length = 0;
  let shares;
  if (connected) {
    shares = memberShares(stepCount, inWindow, members, targetIndex, schedule);
  } else {
    // The factor itself rather than shares, so the curve's shape reads directly.
    const position = new Map(inWindow.map((k, j) => [k, j]));
    shares = Array.from({ length: stepCount }, (_, k) => [
      1,
      position.has(k) ? curveFactor(schedule.weight_curve, position.get(k), inWindow.length) : 0,
    ]);
  }
  return { schedule, sigmas, stepCount, inWindow, members, targetIndex, shares, connected, exact, problem };
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
  const total = consumer ? membersFeeding(consumer).length : null;
  const scheduleSource = consumer ? inputSource(consumer, "schedule") : null;
  const targetMember = scheduleSource ? Number(widgetValue(scheduleSource.node, "target_member", 1)) : 1;
  return { index, total, isTarget: index === targetMember - 1 };
}

function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > maxWidth) cut = cut.slice(0, -1);
  return cut + "…";
}

function widgetsBottom(node) {
  let bottom = 0;
  for (const widget of node.widgets ?? []) {
    if (widget.y === undefined) continue;
    bottom = Math.max(bottom, widget.y + (widget.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT + 4));
  }
  return bottom;
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0$/, "");
}

function drawScheduleChart(node, ctx) {
  const view = scheduleView(node);
  const margin = 10;
  const top = Math.max(widgetsBottom(node) + 6, node.size[1] - CHART_MIN_HEIGHT);
  const left = margin;
  const width = node.size[0] - 2 * margin;
  const height = node.size[1] - top - 6;
  if (width < 60 || height < 60) return;

  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.beginPath();
  ctx.roundRect(left, top, width, height, 4);
  ctx.fill();

  const { inWindow, stepCount, schedule } = view;
  ctx.font = "11px Arial";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  const approx = view.exact ? "" : "≈";
  const header = inWindow.length
    ? `window ${approx}steps ${inWindow[0]}–${inWindow[inWindow.length - 1]} (${inWindow.length} of ${stepCount})`
    : `window empty (0 of ${approx}${stepCount} steps)`;
  ctx.fillStyle = inWindow.length ? "#ddd" : "#f08c6c";
  ctx.fillText(fitText(ctx, header, width - 8), left + 4, top + 4);
  let detail = view.connected ? `share per step · ${schedule.aggregation}` : "no stack: weight factor";
  detail += ` · ${schedule.weight_curve}`;
  if (schedule.deviation_mode === "relative") detail += ` · deviation r=${formatNumber(schedule.deviation_strength)}`;
  else if (schedule.deviation_mode === "absolute") detail += ` · deviation p=${formatNumber(schedule.deviation_strength)}`;
  ctx.fillStyle = "#aaa";
  ctx.fillText(fitText(ctx, detail, width - 8), left + 4, top + 18);

  const legendMembers = view.members.slice(0, MAX_LEGEND_MEMBERS);
  const hiddenMembers = view.members.length - legendMembers.length;
  const legendHeight = (legendMembers.length + (view.problem || hiddenMembers ? 1 : 0)) * 13 + 4;
  const plot = {
    x: left + 26,
    y: top + 42,
    w: width - 34,
    h: Math.max(30, height - 42 - 16 - legendHeight),
  };
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
    const x0 = plot.x + inWindow[0] * stepWidth;
    ctx.fillRect(x0, plot.y - 5, inWindow.length * stepWidth, 3);
  }

  ctx.strokeStyle = "#777";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(plot.x, plot.y);
  ctx.lineTo(plot.x, plot.y + plot.h);
  ctx.lineTo(plot.x + plot.w, plot.y + plot.h);
  ctx.stroke();
  ctx.fillStyle = "#999";
  ctx.font = "9px Arial";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(formatNumber(yMax), plot.x - 4, plot.y);
  ctx.fillText("0", plot.x - 4, plot.y + plot.h);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const step of [0, Math.round(stepCount / 2), stepCount]) {
    ctx.fillText(String(step), plot.x + step * stepWidth, plot.y + plot.h + 3);
  }

  if (view.connected) {
    // Stacked columns: each member's share of the merged latent at that step. The paper's
    // L2-normalised weights can add up to more than one; the axis grows to show it.
    for (let k = 0; k < stepCount; k++) {
      let base = 0;
      const order = [view.targetIndex, ...view.members.keys()].filter((m, i, all) => all.indexOf(m) === i);
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
        const y = yOf(view.shares[k][m]);
        const x0 = plot.x + k * stepWidth;
        if (k === 0) ctx.moveTo(x0, y);
        else ctx.lineTo(x0, y);
        ctx.lineTo(x0 + stepWidth, y);
      }
      ctx.stroke();
    });
  }

  if (schedule.deviation_mode === "relative" && inWindow.length) {
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "rgba(255,255,255,0.6)";
    const y = yOf(schedule.deviation_strength);
    ctx.beginPath();
    ctx.moveTo(plot.x + inWindow[0] * stepWidth, y);
    ctx.lineTo(plot.x + (inWindow[inWindow.length - 1] + 1) * stepWidth, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#eee";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText("r", plot.x + (inWindow[inWindow.length - 1] + 1) * stepWidth + 2, y + 4);
  }

  ctx.font = "10px Arial";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let legendY = plot.y + plot.h + 15;
  legendMembers.forEach((member, m) => {
    ctx.fillStyle = view.connected || m === 0 ? memberColor(m) : "#bbb";
    ctx.fillRect(left + 6, legendY + 2, 8, 8);
    ctx.fillStyle = "#ccc";
    let label;
    if (view.connected) {
      label = `#${m + 1}${member.name ? " " + member.name : ""}${m === view.targetIndex ? " (target)" : ""}`;
      label += ` · w ${formatNumber(member.weight)}`;
      if (schedule.deviation_mode !== "none") {
        const strength = schedule.deviation_strength * member.deviation;
        label += schedule.deviation_mode === "relative"
          ? ` · r ${formatNumber(strength)}`
          : ` · p ${formatNumber(strength)}`;
      }
    } else {
      label = member.name;
    }
    ctx.fillText(fitText(ctx, label, width - 24), left + 18, legendY);
    legendY += 13;
  });
  if (hiddenMembers && !view.problem) {
    ctx.fillText(`+${hiddenMembers} more`, left + 18, legendY);
  }
  if (view.problem) {
    ctx.fillStyle = "#f08c6c";
    ctx.fillText(fitText(ctx, view.problem, width - 12), left + 6, legendY);
  }
  ctx.restore();
}

function drawMemberBadge(node, ctx) {
  const info = memberInfo(node);
  const color = memberColor(info.index);
  const name = String(widgetValue(node, "name", "") ?? "");
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  let label = `#${info.index + 1}${info.total ? "/" + info.total : ""}`;
  if (name) label += ` ${name}`;
  if (info.isTarget) label += " ★";

  ctx.save();
  ctx.font = "bold 11px Arial";
  const maxWidth = Math.max(40, node.size[0] * 0.45);
  label = fitText(ctx, label, maxWidth - 12);
  const badgeWidth = ctx.measureText(label).width + 12;
  const x = node.size[0] - badgeWidth - 8;
  const y = -titleHeight + 5;
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.roundRect(x, y, badgeWidth, titleHeight - 10, 6);
  ctx.fill();
  ctx.fillStyle = "#111";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(label, x + 6, y + (titleHeight - 10) / 2 + 1);
  // A coloured edge so members stay recognisable when the title is off screen.
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, 3, node.size[1]);
  ctx.restore();
}

/** Draws with `draw`, reporting a failure once per node instead of on every frame. */
function guardedDraw(node, ctx, draw) {
  if (node.flags?.collapsed) return;
  try {
    draw(node, ctx);
  } catch (error) {
    if (!node.amdmDrawFailed) {
      node.amdmDrawFailed = true;
      console.error(`AMDM: could not draw ${node.type} #${node.id}`, error);
    }
  }
}

/** Redraw the whole canvas when a widget changes: other nodes' drawings depend on it. */
function redrawOnWidgetChange(node) {
  for (const widget of node.widgets ?? []) {
    const original = widget.callback;
    widget.callback = function (...args) {
      const result = original?.apply(this, args);
      node.graph?.setDirtyCanvas(true, true);
      return result;
    };
  }
}

app.registerExtension({
  name: "comfyui-amdm.GraphView",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "AggregationSchedule" && nodeData.name !== "ModelStack") return;
    const isSchedule = nodeData.name === "AggregationSchedule";

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      redrawOnWidgetChange(this);
      if (isSchedule) this.setSize(this.computeSize());
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      this.graph?.setDirtyCanvas(true, true);
      return result;
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const result = onDrawForeground?.apply(this, [ctx, ...rest]);
      guardedDraw(this, ctx, isSchedule ? drawScheduleChart : drawMemberBadge);
      return result;
    };

    if (isSchedule) {
      const computeSize = nodeType.prototype.computeSize;
      nodeType.prototype.computeSize = function (...args) {
        const size = computeSize.apply(this, args);
        size[0] = Math.max(size[0], CHART_MIN_WIDTH);
        size[1] += CHART_MIN_HEIGHT;
        return size;
      };
    }
  },
});
