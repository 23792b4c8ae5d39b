// The classic LiteGraph canvas: a ModelStack's badge in its title bar and a coloured left
// edge, drawn over the node by its onDrawForeground.
import { badgeOf } from "./badges.js";
import { drawPill, guarded } from "./paint.js";

function drawMemberTitle(node, ctx) {
  const { label, color } = badgeOf(node);
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  drawPill(ctx, label, color, node.size[0] - 8, -titleHeight + 5, titleHeight - 10, Math.max(40, node.size[0] * 0.45));
  // A coloured edge so members stay recognisable when the title is off screen.
  ctx.save();
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, 3, node.size[1]);
  ctx.restore();
}

/** Draws the badge over every ModelStack node on the classic canvas (Vue nodes draw no foreground). */
export function addClassicBadge(nodeType) {
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
    const result = onDrawForeground?.apply(this, [ctx, ...rest]);
    guarded(this, () => drawMemberTitle(this, ctx));
    return result;
  };
}
