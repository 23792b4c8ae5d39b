// Reading the graph around the pack's nodes: the member chain, the schedule's consumer, the
// target's model path and where the sigmas come from. Pure functions of LiteGraph nodes and
// links, the same in both renderers; nothing here draws or talks to the server.

const CONSUMER_TYPES = new Set(["AMDMSampler", "AMDMGuider"]);
// AMDMSampler's widgets that set its sigmas (the chart route's `sigmas.sampler`).
const SAMPLER_WIDGETS = ["steps", "scheduler", "sampler_name", "denoise"];
// ModelStack's widgets of a member's own range of steps (the route's member fields).
const RANGE_WIDGETS = ["start_percent", "end_percent", "start_step", "end_step"];
const BOUNDARY_NODE_TYPE = "AMDMExpertBoundary";
// ModelStack's widgets the legend and the badges show, besides its range.
const MEMBER_WIDGETS = ["name", "weight", "deviation"];
// Core nodes whose one widget is the value they output; a range input they feed is known here.
const VALUE_NODE_TYPES = new Set(["PrimitiveNode", "PrimitiveFloat", "PrimitiveInt"]);
const MAX_HOPS = 32;

export function widgetValue(node, name, fallback) {
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
  for (let hops = 0; hops < MAX_HOPS && slotIndex >= 0; hops++) {
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
  if (depth > MAX_HOPS) return targets;
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
 * A member's range field: the widget's value, or the value of the primitive node feeding it
 * when the widget was made an input. An AMDMExpertBoundary node feeding it is sent to the
 * route, which runs it on the target's model (`boundary`). Another node computes its value
 * only when the graph runs: `computedBy` names it, and the chart takes the widget's value.
 */
function rangeField(stackNode, name) {
  const source = inputSource(stackNode, name);
  const own = widgetValue(stackNode, name);
  if (!source) return { value: own };
  if (VALUE_NODE_TYPES.has(source.node.type)) return { value: source.node.widgets?.[0]?.value, feeder: source.node };
  if (source.node.type === BOUNDARY_NODE_TYPE) {
    return { boundary: { boundary: widgetValues(source.node), output: source.slot }, feeder: source.node };
  }
  return { value: own, computedBy: source.node, feeder: source.node };
}

/** What the legend shows of a member, and its fields of the route's request. */
function readMember(stackNode) {
  const request = { weight: Number(widgetValue(stackNode, "weight", 1.0)) };
  const computed = [];
  const feeders = [];
  for (const name of RANGE_WIDGETS) {
    const field = rangeField(stackNode, name);
    // Only numbers: the route checks each field against ModelStack's declaration, and a
    // missing field is its default.
    if (field.boundary) request[name] = field.boundary;
    else if (typeof field.value === "number" && Number.isFinite(field.value)) request[name] = field.value;
    if (field.computedBy) computed.push({ name, nodeId: field.computedBy.id, nodeTitle: field.computedBy.title });
    if (field.feeder) feeders.push(field.feeder);
  }
  return {
    legend: {
      name: String(widgetValue(stackNode, "name", "") ?? ""),
      weight: request.weight,
      deviation: Number(widgetValue(stackNode, "deviation", 1.0)),
    },
    request,
    computed,
    feeders,
  };
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
    if (node.type?.startsWith("ModelSampling")) chain.unshift(node);
    const modelInput = node.inputs?.find((input) => input.type === "MODEL");
    source = modelInput ? inputSource(node, modelInput.name) : null;
    if (!modelInput) loader = node;
  }
  return { loader, chain };
}

/** The SIGMAS nodes feeding `source`, as an API-format graph with links as [id, slot]. */
function sigmasGraph(source, feeders) {
  const graph = {};
  const visit = (node, depth) => {
    const id = String(node.id);
    if (graph[id] || depth > MAX_HOPS) return;
    feeders.push(node);
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
function sigmasSource(consumer, feeders) {
  if (consumer?.type === "AMDMSampler") {
    return { sampler: Object.fromEntries(SAMPLER_WIDGETS.map((name) => [name, widgetValue(consumer, name)])) };
  }
  if (consumer?.type === "AMDMGuider") {
    for (const target of outputTargets(consumer, 0)) {
      if (target.node.type !== "SamplerCustomAdvanced") continue;
      const source = inputSource(target.node, "sigmas");
      if (source) return sigmasGraph(source, feeders);
    }
  }
  return null;
}

/**
 * What the chart route needs to know about a schedule node's graph (`body`), the members as
 * the legend names them, the range fields that only a run computes (`computed`), and the
 * widgets the answer depends on (`feeds`: [node, widget names or null for all of them]).
 */
export function chartRequest(scheduleNode) {
  const consumer = scheduleConsumer(scheduleNode);
  const stack = consumer ? stackNodesFeeding(consumer) : [];
  const schedule = widgetValues(scheduleNode);
  const members = stack.map(readMember);
  const target = stack[Number(schedule.target_member ?? 1) - 1] ?? stack[0];
  const path = target ? modelPath(target) : { loader: null, chain: [] };
  const sigmasFeeders = [];
  const body = {
    schedule,
    members: members.map((member) => member.request),
    loader: path.loader && { class_type: path.loader.type, inputs: widgetValues(path.loader) },
    model_sampling: path.chain.map((node) => ({ class_type: node.type, inputs: widgetValues(node) })),
    sigmas: sigmasSource(consumer, sigmasFeeders),
  };
  const feeds = [
    [scheduleNode, null],
    ...stack.map((node) => [node, [...MEMBER_WIDGETS, ...RANGE_WIDGETS]]),
    ...members.flatMap((member) => member.feeders.map((node) => [node, null])),
    ...(consumer?.type === "AMDMSampler" ? [[consumer, SAMPLER_WIDGETS]] : []),
    ...[path.loader, ...path.chain, ...sigmasFeeders].filter(Boolean).map((node) => [node, null]),
  ];
  const computed = members.flatMap((member, m) => member.computed.map((field) => ({ member: m, ...field })));
  return { body, legend: members.map((member) => member.legend), computed, feeds };
}
