// When the charts and badges read the graph again: only when something they show may have
// changed. The pack's nodes report their link changes; the change tracker's graphChanged
// event reports edits anywhere (links, undo, pasted nodes); and the widgets a chart or a
// badge depends on (the pack's nodes' own, and the sampler, SIGMAS, ModelSampling, loader
// and primitive nodes on a schedule's paths) get their callback wrapped, so that an edit
// redraws at once. No other node's widgets are touched: a graph without the pack's nodes
// has no wrapped callback.
import { app } from "../../../../scripts/app.js";
import { chartRequest } from "./graph.js";
import { requestChart } from "./route.js";
import { updateBadge } from "./badges.js";
import { CHART_WIDGET } from "./chart.js";
import { BADGE_WIDGET } from "./nodes2.js";
import { reportOnce } from "./paint.js";

/** Wrapped widget -> its wrapper, for the widgets the shown graph's charts and badges read. */
const hooked = new Map();

/** Redraws a node in whichever renderer shows it. */
function redraw(node) {
  for (const widget of node.widgets ?? []) {
    if (widget.name === CHART_WIDGET || widget.name === BADGE_WIDGET) widget.triggerDraw?.();
  }
  node.graph?.setDirtyCanvas(true, true);
}

/** Wraps the callbacks of `widgets` that are not wrapped yet; unwraps those no longer in it. */
function hookWidgets(widgets) {
  for (const [widget, wrapper] of hooked) {
    if (widgets.has(widget)) continue;
    hooked.delete(widget);
    // Someone may have wrapped ours since: then it stays in their chain and does nothing.
    if (widget.callback === wrapper) widget.callback = wrapper.original;
  }
  for (const widget of widgets) {
    if (hooked.has(widget)) continue;
    const original = widget.callback;
    const wrapper = function (...args) {
      const result = original?.apply(this, args);
      if (hooked.get(widget) === wrapper) refreshGraphView();
      return result;
    };
    wrapper.original = original;
    widget.callback = wrapper;
    hooked.set(widget, wrapper);
  }
}

/** The widgets of [node, names or null for all] pairs. */
function widgetsOf(feeds) {
  const widgets = new Set();
  for (const [node, names] of feeds) {
    for (const widget of node.widgets ?? []) {
      if (widget.name === CHART_WIDGET || widget.name === BADGE_WIDGET) continue;
      if (!names || names.includes(widget.name)) widgets.add(widget);
    }
  }
  return widgets;
}

/** Reads the shown graph again: every chart's request (sent if it changed), every badge. */
function readGraphView() {
  const graph = app.canvas?.graph ?? app.graph;
  const feeds = [];
  for (const node of graph?.nodes ?? []) {
    try {
      if (node.type === "AggregationSchedule") {
        const request = chartRequest(node);
        feeds.push(...request.feeds);
        requestChart(node, request, () => redraw(node));
      } else if (node.type === "ModelStack") {
        feeds.push([node, ["name"]]);
        if (updateBadge(node)) redraw(node);
      }
    } catch (error) {
      reportOnce(node, "read the graph around", error);
    }
  }
  hookWidgets(widgetsOf(feeds));
}

let refreshQueued = false;

/** Brings every chart and badge of the shown graph up to date with it, once per task. */
export function refreshGraphView() {
  if (refreshQueued) return;
  refreshQueued = true;
  queueMicrotask(() => {
    refreshQueued = false;
    readGraphView();
  });
}
