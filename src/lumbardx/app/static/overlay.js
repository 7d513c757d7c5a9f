// Findings drawn over the slice as SVG in stage (screen) coordinates, redrawn after every view
// change: one <g class="mark"> per shown box (data-box-id, data-label, data-decision), level
// names on the left of each disc, class and confidence on the right, in the class colour over
// a dark halo (as in the reports). Hit testing for the editor works in the same coordinates.

import { svg } from "./dom.js";
import { classColour, className } from "./colours.js";

const EDGE_TOL = 8;       // px: how close to an edge a pointer grabs it (large hit target)
const LABEL_H = 17;       // px: line height of overlay labels

const DECISION_MARK = { accepted: " \u2713", rejected: " \u2715 rejected", edited: " \u270e", added: " +" };

/** Screen rectangle [x1, y1, x2, y2] of an image box. */
export function screenRect(view, box) {
  const [x1, y1] = view.toScreen(box[0], box[1]);
  const [x2, y2] = view.toScreen(box[2], box[3]);
  return [x1, y1, x2, y2];
}

/** Push labels apart vertically (sorted by wanted y) so that they do not overlap. */
function spread(labels) {
  labels.sort((a, b) => a.y - b.y);
  let bottom = -Infinity;
  for (const l of labels) {
    if (l.y < bottom + LABEL_H) l.y = bottom + LABEL_H;
    bottom = l.y;
  }
  return labels;
}

function haloText(x, y, text, attrs) {
  return svg("text", { x, y, class: `label ${attrs.class || ""}`, fill: attrs.fill || "#fff",
    "text-anchor": attrs.anchor || "start", "dominant-baseline": "middle" }, text);
}

/**
 * Redraw the overlay.
 * @param {SVGSVGElement} root the overlay <svg>, same size as the stage.
 * @param {import("./viewer.js").SliceView} view
 * @param {object} model {boxes: review boxes shown, discs: findings.json findings,
 *   classes, selected: id|null, hover: {id, edges}|null, draft: [x1,y1,x2,y2]|null (image px),
 *   draftLabel, hidden: boolean (marks hidden with H)}.
 */
export function drawOverlay(root, view, model) {
  const [w, h] = view.size();
  root.setAttribute("width", w);
  root.setAttribute("height", h);
  root.setAttribute("viewBox", `0 0 ${w} ${h}`);
  root.replaceChildren();
  if (model.hidden) return;
  const marks = svg("g", { class: "marks" });
  const right = [];
  const left = [];
  const ordered = [...model.boxes].sort((a, b) => (a.id === model.selected) - (b.id === model.selected));
  for (const b of ordered) {
    const [x1, y1, x2, y2] = screenRect(view, b.box);
    const colour = classColour(b.label, model.classes);
    const selected = b.id === model.selected;
    const g = svg("g", { class: `mark${selected ? " selected" : ""}`,
      dataset: { boxId: b.id, label: b.label, decision: b.decision, origin: b.origin } });
    const rect = { x: x1, y: y1, width: Math.max(1, x2 - x1), height: Math.max(1, y2 - y1) };
    g.append(svg("rect", { ...rect, class: "halo" }));
    g.append(svg("rect", { ...rect, class: `edge decision-${b.decision}`, stroke: colour }));
    if (selected) {
      for (const [hx, hy] of [[x1, y1], [x2, y1], [x1, y2], [x2, y2],
        [(x1 + x2) / 2, y1], [(x1 + x2) / 2, y2], [x1, (y1 + y2) / 2], [x2, (y1 + y2) / 2]]) {
        g.append(svg("rect", { x: hx - 4, y: hy - 4, width: 8, height: 8, class: "handle", stroke: colour }));
      }
    }
    marks.append(g);
    const readers = b.origin === "reader" || (b.model_label && b.model_label !== b.label);
    const score = b.score === null || b.score === undefined ? (readers ? " (reader)" : "")
      : ` ${b.score.toFixed(2)}`;
    right.push({ x: x2 + 6, y: (y1 + y2) / 2, text: `${className(b.label)}${score}${DECISION_MARK[b.decision] || ""}`,
      fill: colour, cls: `finding-label${selected ? " selected" : ""}${b.decision === "rejected" ? " rejected" : ""}` });
  }
  for (const d of model.discs) {
    const [x1, y1, , y2] = screenRect(view, d.box);
    left.push({ x: x1 - 8, y: (y1 + y2) / 2, text: `${d.level}${d.level_uncertain ? "?" : ""}`,
      fill: "#ffffff", cls: "level-label" });
  }
  const labels = svg("g", { class: "labels" });
  for (const l of spread(right)) labels.append(haloText(l.x, l.y, l.text, { fill: l.fill, class: l.cls }));
  for (const l of spread(left)) labels.append(haloText(l.x, l.y, l.text, { fill: l.fill, class: l.cls, anchor: "end" }));
  root.append(marks, labels);
  // A label that would run off the stage (a box at the border of an image that fills the stage's
  // width, as on a narrow screen) is pulled back inside it.
  for (const t of labels.children) {
    const x = Number(t.getAttribute("x"));
    const len = t.getComputedTextLength();
    if (t.getAttribute("text-anchor") === "end") { if (x - len < 2) t.setAttribute("x", Math.min(w - 2, len + 2)); }
    else if (x + len > w - 2) t.setAttribute("x", Math.max(2, w - 2 - len));
  }
  if (model.draft) {
    const [x1, y1, x2, y2] = screenRect(view, model.draft);
    const colour = classColour(model.draftLabel, model.classes);
    root.append(svg("rect", { x: Math.min(x1, x2), y: Math.min(y1, y2), width: Math.abs(x2 - x1),
      height: Math.abs(y2 - y1), class: "draft", stroke: colour }));
  }
}

/**
 * What is under a stage point: a box edge (to resize), a box interior (to select / move),
 * or nothing. Selected box first, then the smallest box containing the point.
 * @returns {{id: string, edges: {l:boolean,r:boolean,t:boolean,b:boolean}}|null}
 */
export function hitTest(view, boxes, selected, sx, sy) {
  const order = [...boxes].sort((a, b) => {
    if (a.id === selected) return -1;
    if (b.id === selected) return 1;
    return (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) - (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]);
  });
  for (const b of order) {
    const [x1, y1, x2, y2] = screenRect(view, b.box);
    const inX = sx >= x1 - EDGE_TOL && sx <= x2 + EDGE_TOL;
    const inY = sy >= y1 - EDGE_TOL && sy <= y2 + EDGE_TOL;
    if (!inX || !inY) continue;
    const edges = { l: Math.abs(sx - x1) <= EDGE_TOL, r: Math.abs(sx - x2) <= EDGE_TOL,
      t: Math.abs(sy - y1) <= EDGE_TOL, b: Math.abs(sy - y2) <= EDGE_TOL };
    if (edges.l && edges.r) { edges.l = sx < (x1 + x2) / 2; edges.r = !edges.l; }
    if (edges.t && edges.b) { edges.t = sy < (y1 + y2) / 2; edges.b = !edges.t; }
    const onEdge = edges.l || edges.r || edges.t || edges.b;
    const inside = sx > x1 && sx < x2 && sy > y1 && sy < y2;
    if (onEdge || inside) return { id: b.id, edges: onEdge ? edges : null };
  }
  return null;
}

/** CSS cursor for a hit. */
export function cursorFor(hit) {
  if (!hit) return "grab";
  if (!hit.edges) return "move";
  const { l, r, t, b } = hit.edges;
  if ((l && t) || (r && b)) return "nwse-resize";
  if ((r && t) || (l && b)) return "nesw-resize";
  return l || r ? "ew-resize" : "ns-resize";
}
