// Nodes 2.0 (Vue nodes): the renderer draws no node titles of ours, so a ModelStack's badge
// is a widget row under its widgets, drawn into the canvas the renderer gives a widget. On
// the classic canvas the row takes no space (classic.js puts the badge in the title).
import { badgeOf } from "./badges.js";
import { drawPill, guarded } from "./paint.js";

export const BADGE_WIDGET = "amdm_member";
const BADGE_ROW_HEIGHT = 22;
// LiteGraph adds this margin to a widget's computeSize height (its computedHeight).
const WIDGET_MARGIN = 4;

export function addBadgeWidget(node) {
  node.addCustomWidget({
    name: BADGE_WIDGET,
    type: BADGE_WIDGET,
    value: null,
    serialize: false,
    // hideInPanel: the side panel would bind a second copy, and a widget redraws only one.
    options: { serialize: false, hideInPanel: true },
    computeSize: (width) => [width ?? 0, LiteGraph.vueNodesMode ? BADGE_ROW_HEIGHT : -WIDGET_MARGIN],
    draw(ctx, drawnNode, width, y, height) {
      if (!LiteGraph.vueNodesMode) return;
      const rowHeight = BADGE_ROW_HEIGHT + WIDGET_MARGIN;
      if (!(height >= BADGE_ROW_HEIGHT) && this.computedHeight !== rowHeight) {
        // Switched to Nodes 2.0 with the graph open: the renderer sized this row from the
        // classic canvas's layout, where it has no height. Give it its height, draw again.
        this.computedHeight = rowHeight;
        requestAnimationFrame(() => this.triggerDraw?.());
        return;
      }
      guarded(drawnNode, () => {
        const { label, color } = badgeOf(drawnNode);
        ctx.save();
        ctx.fillStyle = color;
        ctx.fillRect(0, y + 2, 4, BADGE_ROW_HEIGHT - 4);
        ctx.restore();
        drawPill(ctx, label, color, width - 10, y + 2, BADGE_ROW_HEIGHT - 4, width - 24);
      });
    },
  });
}
