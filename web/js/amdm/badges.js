// Member badges on ModelStack nodes: the member's number in its chain, the chain's length,
// its name and chart colour, the target starred. Read from the graph when it changes (see
// hooks.js), drawn by classic.js on the classic canvas and by nodes2.js under Nodes 2.0.
import { memberInfo, widgetValue } from "./graph.js";
import { memberColor } from "./paint.js";

/** Per ModelStack node: its badge as last read from the graph. */
const badges = new WeakMap();

/** Reads a ModelStack's badge from the graph; true when it changed. */
export function updateBadge(node) {
  const info = memberInfo(node);
  const name = String(widgetValue(node, "name", "") ?? "");
  let label = `#${info.index + 1}${info.total ? "/" + info.total : ""}`;
  if (name) label += ` ${name}`;
  if (info.isTarget) label += " ★";
  const badge = { label, color: memberColor(info.index) };
  const previous = badges.get(node);
  badges.set(node, badge);
  return previous?.label !== badge.label || previous?.color !== badge.color;
}

/** A ModelStack's badge (read now if the graph has not been read since the node was made). */
export function badgeOf(node) {
  if (!badges.has(node)) updateBadge(node);
  return badges.get(node);
}
