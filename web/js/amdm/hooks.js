// When the charts and badges read the graph again: only when an input of theirs may have
// changed. The widgets a chart or a badge depends on (the pack's nodes' own, and the
// sampler, SIGMAS, ModelSampling, loader and primitive nodes on a schedule's paths) get their
// callback wrapped, so that an edit redraws at once; the pack's nodes report their link
// changes; a loaded graph (undo included) and a new pack node are read in full. The change
// tracker's graphChanged event, which reports every edit (a node moved, a widget of any
// node), reads the graph only when it shows another graph or its links changed (a link
// between other nodes may lie on a schedule's paths). No other node's widgets are touched:
// a graph without the pack's nodes has no wrapped callback.
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

function shownGraph() {
  return app.canvas?.graph ?? app.graph;
}

/**
 * What a link change alters in a graph: a new link takes the next link id, a removed link
 * lowers the count.
 */
function linksKey(graph) {
  return `${graph?.last_link_id}/${graph?.links?.size}`;
}

/** The graph the view read last, and its linksKey then. */
const lastRead = { graph: null, links: null };

/** Reads the shown graph again: every chart's request (sent if it changed), every badge. */
function readGraphView() {
  const graph = shownGraph();
  lastRead.graph = graph;
  lastRead.links = linksKey(graph);
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

/** The change tracker's graphChanged: reads the graph only if links changed or another graph shows. */
export function refreshOnLinkChange() {
  const graph = shownGraph();
  if (graph !== lastRead.graph || linksKey(graph) !== lastRead.links) refreshGraphView();
}
