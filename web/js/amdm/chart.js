// The schedule chart on AggregationSchedule: each member's share of the latent at every step,
// the aggregation window, and, where members have ranges of their own, each member's range,
// the aggregated overlaps and the handoffs. A widget with a `draw` function, which LiteGraph
// draws on the classic canvas and the Vue renderer into a canvas of its own: one drawing
// serves both. It draws route.js's view of the route's answer and computes nothing itself.
import { scheduleView } from "./route.js";
import { fitText, formatNumber, guarded, memberColor } from "./paint.js";

export const CHART_WIDGET = "amdm_chart";
const CHART_HEIGHT = 240;
const CHART_MIN_WIDTH = 320;
const WINDOW_COLOR = "#f0d050";
const PROBLEM_COLOR = "#f08c6c";
const MAX_LEGEND_MEMBERS = 4;
const MAX_MESSAGE_LINES = 2;
const LINE_HEIGHT = 13;
const LANE_HEIGHT = 4;

/** `text` in at most `maxLines` lines of `maxWidth`, the last one cut to fit. */
function wrapText(ctx, text, maxWidth, maxLines) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const candidate = line ? `${line} ${word}` : word;
    if (!line || ctx.measureText(candidate).width <= maxWidth) {
      line = candidate;
      continue;
    }
    lines.push(line);
    line = word;
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) lines.splice(maxLines - 1, lines.length, lines.slice(maxLines - 1).join(" "));
  return lines.map((l) => fitText(ctx, l, maxWidth));
}

function stepSpan(first, stop) {
  return stop - first === 1 ? `step ${first}` : `steps ${first}–${stop - 1}`;
}

function memberLabel(view, m) {
  const name = view.members[m]?.name;
  return `#${m + 1}${name ? " " + name : ""}`;
}

/** The first line: the window, or with ranges the handoffs or the aggregated steps. */
function headerText(view) {
  const approx = view.exact ? "" : "≈";
  const { inWindow, stepCount } = view;
  if (!view.ranges.length) {
    return inWindow.length
      ? `window ${approx}steps ${inWindow[0]}–${inWindow[inWindow.length - 1]} (${inWindow.length} of ${stepCount})`
      : `window empty (0 of ${approx}${stepCount} steps)`;
  }
  if (view.handoffs.length) {
    const parts = view.handoffs.map((h) => `#${h.from + 1}→#${h.to + 1} ` + (h.start === h.stop
      ? `at ${approx}step ${h.stop}`
      : `over ${approx}${stepSpan(h.start, h.stop)}`));
    return `handoff ${parts.join(", ")} (of ${stepCount})`;
  }
  const aggregated = view.aggregated.reduce((sum, [first, stop]) => sum + stop - first, 0);
  if (!aggregated) return `ranges: no aggregated step (of ${approx}${stepCount})`;
  const runs = view.aggregated.map(([first, stop]) => (stop - first === 1 ? `${first}` : `${first}–${stop - 1}`));
  return `aggregated ${approx}steps ${runs.join(", ")} (${aggregated} of ${stepCount})`;
}

function detailText(view) {
  const { schedule } = view;
  let detail = view.connected ? schedule.aggregation : "no stack: weight factor";
  detail += ` · ${schedule.weight_curve}`;
  if (schedule.deviation_mode === "relative") detail += ` · deviation r=${formatNumber(schedule.deviation_strength)}`;
  else if (schedule.deviation_mode === "absolute") detail += ` · deviation p=${formatNumber(schedule.deviation_strength)}`;
  return `${detail} · ${view.family}`;
}

/** The message under the legend: why the sampler would refuse the graph, what is assumed. */
function messageOf(view) {
  if (view.problem) return { text: view.problem, color: PROBLEM_COLOR };
  if (view.computed.length) {
    const fields = view.computed.map((f) => `#${f.member + 1} ${f.name}`).join(", ");
    const sources = [...new Set(view.computed.map((f) => f.nodeTitle))].join(", ");
    return { text: `${fields} come from ${sources} when the graph runs; charted at the widget values`, color: "#aaa" };
  }
  return view.note ? { text: view.note, color: "#aaa" } : null;
}

/** Step indices to label under the columns, most telling first, none overlapping. */
function axisSteps(view, stepWidth) {
  const { stepCount, inWindow } = view;
  const marks = view.ranges.length
    ? [...view.handoffs.flatMap((h) => (h.start === h.stop ? [h.stop] : [h.start, h.stop - 1])),
      ...view.aggregated.flatMap(([first, stop]) => [first, stop - 1])]
    : [inWindow[0], inWindow[inWindow.length - 1]];
  const chosen = [];
  for (const k of [...marks, 0, stepCount - 1]) {
    if (k === undefined || k < 0 || k >= stepCount) continue;
    if (chosen.every((c) => Math.abs(c - k) * stepWidth >= 18)) chosen.push(k);
  }
  return chosen;
}

/** Steps the chart marks in the window's colour: the window, or with ranges the aggregated steps. */
function markedRuns(view) {
  if (view.ranges.length) return view.aggregated;
  const { inWindow } = view;
  return inWindow.length ? [[inWindow[0], inWindow[inWindow.length - 1] + 1]] : [];
}

/** The schedule chart inside the rectangle (x, y, width, height) of the node's coordinates. */
function drawScheduleChart(ctx, view, x, y, width, height) {
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
    ctx.fillStyle = view ? PROBLEM_COLOR : "#aaa";
    ctx.fillText(fitText(ctx, view ? `chart unavailable: ${view.error}` : "computing the window…", width - 8), x + 4, y + 4);
    ctx.restore();
    return;
  }

  const { stepCount, schedule } = view;
  const runs = markedRuns(view);
  ctx.fillStyle = !view.ranges.length && !view.inWindow.length ? PROBLEM_COLOR : "#ddd";
  ctx.fillText(fitText(ctx, headerText(view), width - 8), x + 4, y + 4);
  ctx.fillStyle = "#aaa";
  ctx.fillText(fitText(ctx, detailText(view), width - 8), x + 4, y + 18);

  const legendMembers = view.members.slice(0, MAX_LEGEND_MEMBERS);
  const hiddenMembers = view.members.length - legendMembers.length;
  const message = messageOf(view);
  ctx.font = "10px Arial";
  const messageLines = message ? wrapText(ctx, message.text, width - 12, MAX_MESSAGE_LINES) : hiddenMembers ? [""] : [];
  const legendHeight = (legendMembers.length + messageLines.length) * LINE_HEIGHT + 4;
  const lanesHeight = view.ranges.length ? legendMembers.length * LANE_HEIGHT + 2 : 0;
  const plot = { x: x + 26, y: y + 42, w: width - 34, h: Math.max(30, height - 42 - 18 - lanesHeight - legendHeight) };
  const stepWidth = stepCount > 0 ? plot.w / stepCount : plot.w;
  const columnTotals = view.shares.map((row) => row.reduce((sum, share) => sum + share, 0));
  // Rounded so that shares summing to 1 up to float error keep the axis at exactly 1.
  const yMax = view.connected ? Math.max(1, ...columnTotals.map((t) => Math.round(t * 1e4) / 1e4)) : 1;
  const yOf = (value) => plot.y + plot.h * (1 - Math.min(Math.max(value / yMax, 0), 1));
  const xOf = (k) => plot.x + k * stepWidth;

  // The window (with ranges: the steps where members aggregate), and a bracket above the
  // columns for each run of it, readable even where columns fill it.
  ctx.fillStyle = "rgba(240,200,80,0.16)";
  for (const [first, stop] of runs) ctx.fillRect(xOf(first), plot.y, (stop - first) * stepWidth, plot.h);
  ctx.fillStyle = WINDOW_COLOR;
  for (const [first, stop] of runs) ctx.fillRect(xOf(first), plot.y - 5, (stop - first) * stepWidth, 3);

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
  const axisY = plot.y + plot.h + lanesHeight;
  const marked = (k) => runs.some(([first, stop]) => k >= first && k < stop);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillText("step", plot.x - 13, axisY + 4);
  for (const k of axisSteps(view, stepWidth)) {
    const centre = xOf(k + 0.5);
    ctx.fillStyle = marked(k) ? WINDOW_COLOR : "#999";
    ctx.fillRect(centre - 0.5, axisY, 1, 3);
    ctx.fillText(String(k), centre, axisY + 4);
  }

  if (view.connected) {
    // Stacked columns: each member's share of the latent at that step (1 for a member
    // stepping alone). The paper's L2-normalised weights can add up to more than one; the
    // axis grows to show it.
    const order = [view.targetIndex, ...view.members.keys()].filter((m, i, all) => all.indexOf(m) === i);
    for (let k = 0; k < stepCount; k++) {
      let base = 0;
      for (const m of order) {
        const share = view.shares[k][m];
        if (share <= 0) continue;
        ctx.fillStyle = memberColor(m);
        const y0 = yOf(base);
        const y1 = yOf(base + share);
        ctx.fillRect(xOf(k) + 0.5, y1, Math.max(stepWidth - 1, 1), y0 - y1);
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
        if (k === 0) ctx.moveTo(xOf(k), yk);
        else ctx.lineTo(xOf(k), yk);
        ctx.lineTo(xOf(k + 1), yk);
      }
      ctx.stroke();
    });
  }

  if (schedule.deviation_mode === "relative" && view.inWindow.length && !view.ranges.length) {
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "rgba(255,255,255,0.6)";
    const yr = yOf(schedule.deviation_strength);
    const xEnd = xOf(view.inWindow[view.inWindow.length - 1] + 1);
    ctx.beginPath();
    ctx.moveTo(xOf(view.inWindow[0]), yr);
    ctx.lineTo(xEnd, yr);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#eee";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText("r", xEnd + 2, yr + 4);
  }

  if (view.ranges.length) drawRanges(ctx, view, plot, xOf, stepWidth, legendMembers.length);

  ctx.font = "10px Arial";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let legendY = axisY + 18;
  legendMembers.forEach((member, m) => {
    ctx.fillStyle = view.connected || m === 0 ? memberColor(m) : "#bbb";
    ctx.fillRect(x + 6, legendY + 2, 8, 8);
    ctx.fillStyle = "#ccc";
    let label = member.name;
    if (view.connected) {
      label = `${memberLabel(view, m)}${m === view.targetIndex ? " (target)" : ""}`;
      label += ` · w ${formatNumber(member.weight)}`;
      if (schedule.deviation_mode !== "none") {
        const strength = schedule.deviation_strength * member.deviation;
        label += ` · ${schedule.deviation_mode === "relative" ? "r" : "p"} ${formatNumber(strength)}`;
      }
      if (view.ranges.length) {
        const [first, stop] = view.ranges[m];
        label += ` · ${stop > first ? stepSpan(first, stop) : "no step"}`;
      }
    }
    ctx.fillText(fitText(ctx, label, width - 24), x + 18, legendY);
    legendY += LINE_HEIGHT;
  });
  if (message) {
    ctx.fillStyle = message.color;
    for (const line of messageLines) {
      ctx.fillText(line, x + 6, legendY);
      legendY += LINE_HEIGHT;
    }
  } else if (hiddenMembers) {
    ctx.fillText(`+${hiddenMembers} more`, x + 18, legendY);
  }
  ctx.restore();
}

/**
 * Members with ranges of their own: a lane under the columns per member with its steps, and
 * each handoff marked where the latent passes from one member to the next (a line at a hard
 * switch, a label over the aggregated overlap of a soft one).
 */
function drawRanges(ctx, view, plot, xOf, stepWidth, laneCount) {
  for (let m = 0; m < laneCount; m++) {
    const laneY = plot.y + plot.h + 2 + m * LANE_HEIGHT;
    ctx.fillStyle = "rgba(255,255,255,0.07)";
    ctx.fillRect(plot.x, laneY, plot.w, LANE_HEIGHT - 1);
    const [first, stop] = view.ranges[m];
    if (stop <= first) continue;
    ctx.fillStyle = memberColor(m);
    ctx.fillRect(xOf(first), laneY, (stop - first) * stepWidth, LANE_HEIGHT - 1);
  }
  ctx.font = "bold 9px Arial";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const handoff of view.handoffs) {
    const label = `#${handoff.from + 1}→#${handoff.to + 1}`;
    let centre = xOf((handoff.start + handoff.stop) / 2);
    if (handoff.start === handoff.stop) {
      ctx.fillStyle = "#fff";
      ctx.fillRect(centre - 1, plot.y - 6, 2, plot.h + 6);
    }
    const labelWidth = ctx.measureText(label).width + 8;
    centre = Math.min(Math.max(centre, plot.x + labelWidth / 2), plot.x + plot.w - labelWidth / 2);
    ctx.fillStyle = "rgba(20,20,20,0.85)";
    ctx.beginPath();
    ctx.roundRect(centre - labelWidth / 2, plot.y + 2, labelWidth, 13, 4);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.fillText(label, centre, plot.y + 9);
  }
}

/**
 * The chart: a widget of fixed height, drawn by either renderer. (A widget that grows with
 * the node would grow without end under Vue nodes, which size the node to its widgets.)
 */
export function addChartWidget(node) {
  node.addCustomWidget({
    name: CHART_WIDGET,
    type: CHART_WIDGET,
    value: null,
    serialize: false,
    // hideInPanel: the side panel would bind a second copy, and a widget redraws only one.
    options: { serialize: false, hideInPanel: true },
    computeSize: (width) => [width ?? CHART_MIN_WIDTH, CHART_HEIGHT],
    draw(ctx, drawnNode, width, y) {
      guarded(drawnNode, () => drawScheduleChart(ctx, scheduleView(drawnNode), 10, y, width - 20, CHART_HEIGHT));
    },
  });
  const [width, height] = node.computeSize();
  node.setSize([Math.max(width, CHART_MIN_WIDTH), height]);
}
