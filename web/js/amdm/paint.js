// Canvas helpers shared by the chart and the badges: member colours, text that fits, pills.

const MEMBER_COLORS = ["#f0a04b", "#4fb3f0", "#7ccf6f", "#ef6fa0", "#b58cf0", "#e8d75a", "#4fd1c1", "#ff8a65"];

export function memberColor(index) {
  return MEMBER_COLORS[index % MEMBER_COLORS.length];
}

export function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > maxWidth) cut = cut.slice(0, -1);
  return cut + "…";
}

export function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0$/, "");
}

/** A rounded pill in a member's colour, right-aligned at `right`. */
export function drawPill(ctx, label, color, right, y, height, maxWidth) {
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

const failedNodes = new WeakSet();

/** Logs a failure once per node instead of on every frame. */
export function reportOnce(node, what, error) {
  if (failedNodes.has(node)) return;
  failedNodes.add(node);
  console.error(`AMDM: could not ${what} ${node.type} #${node.id}`, error);
}

/** Runs a drawing of an expanded node; a failure is logged, never thrown into the renderer. */
export function guarded(node, draw) {
  if (node.flags?.collapsed) return;
  try {
    draw();
  } catch (error) {
    reportOnce(node, "draw", error);
  }
}
