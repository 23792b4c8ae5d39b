// The order of the pack's cards in ComfyUI's template browser. ComfyUI's server lists a custom
// node's templates by file name only, in the order it finds the files (the file system's, not
// sorted), and both frontends (1.27 and 1.58) show the cards in that order, each under its
// file name. The pack's card list, workflows/templates/index.json (which neither ComfyUI nor
// its frontends read), puts the minimal example first: the frontend's listing is wrapped so
// that the pack's names come in that order. Other packs' lists are left as they are.
import { api } from "../../../../scripts/api.js";

// The pack's folder under custom_nodes, which names its extension files and its templates.
const PACK_MODULE = decodeURIComponent(new URL(import.meta.url).pathname.match(/\/extensions\/([^/]+)\//)[1]);

/** The pack's template names in card order, from workflows/templates/index.json. */
async function cardOrder() {
  const response = await fetch(api.apiURL(`/workflow_templates/${encodeURIComponent(PACK_MODULE)}/templates/index.json`));
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const categories = await response.json();
  return categories.flatMap((category) => category.templates.map((card) => card.name));
}

/** Wraps api.getWorkflowTemplates so that the pack's templates come in card order. */
export function orderTemplateCards() {
  const listTemplates = api.getWorkflowTemplates;
  if (typeof listTemplates !== "function") return;
  api.getWorkflowTemplates = async function (...args) {
    const templates = await listTemplates.apply(this, args);
    const names = templates?.[PACK_MODULE];
    if (!Array.isArray(names)) return templates;
    try {
      const order = await cardOrder();
      const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
      templates[PACK_MODULE] = [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    } catch (error) {
      console.warn("AMDM: the template cards keep the server's order; workflows/templates/index.json:", error);
    }
    return templates;
  };
}
