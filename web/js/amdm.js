// AMDM graph view, for both of ComfyUI's renderers (the classic LiteGraph canvas and Nodes
// 2.0, Vue nodes): the schedule chart on AggregationSchedule and member badges on ModelStack.
// This file, the one extension ComfyUI registers from the pack, only wires the modules
// under amdm/ into ComfyUI:
//   graph.js   reads the graph around the pack's nodes (the chart's request, member numbers)
//   route.js   sends the chart's request to the server (nodes/routes.py) and reads its answer
//   chart.js   draws the chart (a widget both renderers draw)
//   badges.js  the member badges' text and colour
//   classic.js the badge in a node's title on the classic canvas
//   nodes2.js  the badge as a widget row under Nodes 2.0
//   hooks.js   when to read the graph again: only when an input of the view may have changed
// The other modules register nothing: ComfyUI imports every .js file of the pack, and they
// only define functions.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { addChartWidget } from "./amdm/chart.js";
import { addClassicBadge } from "./amdm/classic.js";
import { addBadgeWidget } from "./amdm/nodes2.js";
import { refreshGraphView, refreshOnLinkChange } from "./amdm/hooks.js";

// For the browser tests: what the chart and the badges read from the graph and the route.
export { chartRequest, memberInfo } from "./amdm/graph.js";
export { scheduleView } from "./amdm/route.js";

const PACK_NODE_TYPES = new Set(["ModelStack", "AggregationSchedule", "AMDMGuider", "AMDMSampler", "AMDMExpertBoundary"]);

app.registerExtension({
  // Under the pack's DisplayName, as `comfy-test lint` requires of extension names.
  name: "amdmaggregationofmultiplediffusionmodels.GraphView",
  setup() {
    // The workflow's change tracker reports every edit; hooks.js keeps those that change links.
    api.addEventListener("graphChanged", refreshOnLinkChange);
  },
  afterConfigureGraph() {
    refreshGraphView();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PACK_NODE_TYPES.has(nodeData.name)) return;
    const isSchedule = nodeData.name === "AggregationSchedule";
    const isStack = nodeData.name === "ModelStack";

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      if (isSchedule) addChartWidget(this);
      if (isStack) addBadgeWidget(this);
      refreshGraphView();
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      if (this.graph) refreshGraphView();
      return result;
    };

    if (isStack) addClassicBadge(nodeType);
  },
});
