// Pointer interactions on the viewer stage:
//   wheel              next / previous slice when the series has several (ctx.scroll), else
//                      zoom about the pointer; Ctrl + wheel (and a trackpad pinch) always zooms
//   left-drag          pan (on empty image), move a selected box (inside it), or move an edge
//                      or corner of a box (within 8 px of it)
//   middle-drag        pan
//   right-drag         window (left-right) / level (up-down)
//   draw mode          left-drag draws a new box of the chosen class
// Boxes are changed locally while dragging and saved once on release (ReviewStore.edit / add).

import { cursorFor, hitTest } from "./overlay.js";

const CLICK_SLOP = 3;   // px: a press that moves less than this is a click
const WHEEL_STEP = 40;  // px of wheel travel per slice (a mouse notch is about 100)

/** Round a box to whole pixel corners inside the image, at least 1 px wide and high. */
export function clampBox(box, width, height) {
  let [x1, y1, x2, y2] = box.map((v) => Math.round(v));
  if (x2 < x1) [x1, x2] = [x2, x1];
  if (y2 < y1) [y1, y2] = [y2, y1];
  x1 = Math.min(Math.max(0, x1), width - 1);
  y1 = Math.min(Math.max(0, y1), height - 1);
  x2 = Math.min(Math.max(x1 + 1, x2), width);
  y2 = Math.min(Math.max(y1 + 1, y2), height);
  return [x1, y1, x2, y2];
}

/**
 * Wire the stage.
 * @param {HTMLElement} stage
 * @param {import("./viewer.js").SliceView} view
 * @param {object} ctx {visibleBoxes(): boxes, store: ReviewStore|null, selected(): id|null,
 *   select(id|null), mode(): "select"|"draw", drawLabel(): string, setDraft(box|null),
 *   getWindow(): {center,width}, setWindow(win), range(): [lo, hi], redraw(), onPointer(x, y),
 *   canScroll(): boolean and scroll(step) (optional: whether the series has other slices, and
 *   show the next (+1) / previous (-1) one; without them the wheel zooms)}.
 * @returns {() => void} detach.
 */
export function attachEditor(stage, view, ctx) {
  let drag = null;

  function local(e) {
    const r = stage.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  function down(e) {
    const [sx, sy] = local(e);
    stage.setPointerCapture(e.pointerId);
    if (e.button === 2) {
      drag = { kind: "window", sx, sy, win: { ...ctx.getWindow() } };
    } else if (e.button === 1) {
      drag = { kind: "pan", sx, sy, lx: sx, ly: sy };
    } else if (e.button === 0 && ctx.mode() === "draw" && ctx.store) {
      const [ix, iy] = view.toImage(sx, sy);
      drag = { kind: "draw", sx, sy, ix, iy };
    } else if (e.button === 0) {
      const boxes = ctx.store ? ctx.visibleBoxes() : [];
      const hit = hitTest(view, boxes, ctx.selected(), sx, sy);
      if (hit && hit.edges) {
        const b = ctx.store.box(hit.id);
        ctx.select(hit.id);
        drag = { kind: "resize", id: hit.id, edges: hit.edges, start: b.box.slice(), sx, sy };
      } else if (hit) {
        const wasSelected = ctx.selected() === hit.id;
        ctx.select(hit.id);
        const b = ctx.store.box(hit.id);
        drag = wasSelected ? { kind: "move", id: hit.id, start: b.box.slice(), sx, sy } : { kind: "none", sx, sy };
      } else {
        drag = { kind: "pan", sx, sy, lx: sx, ly: sy, clickClears: true };
      }
    }
    e.preventDefault();
  }

  function move(e) {
    const [sx, sy] = local(e);
    const [ix, iy] = view.toImage(sx, sy);
    ctx.onPointer(ix, iy);
    if (!drag) {
      if (ctx.mode() === "draw") { stage.style.cursor = "crosshair"; return; }
      const hit = ctx.store ? hitTest(view, ctx.visibleBoxes(), ctx.selected(), sx, sy) : null;
      stage.style.cursor = hit && !hit.edges && hit.id !== ctx.selected() ? "pointer" : cursorFor(hit);
      return;
    }
    drag.moved = drag.moved || Math.hypot(sx - drag.sx, sy - drag.sy) > CLICK_SLOP;
    if (drag.kind === "pan") {
      view.panBy(sx - drag.lx, sy - drag.ly);
      drag.lx = sx; drag.ly = sy;
      stage.style.cursor = "grabbing";
    } else if (drag.kind === "window") {
      const [lo, hi] = ctx.range();
      const span = Math.max(1, hi - lo);
      const width = Math.max(span / 500, drag.win.width + (sx - drag.sx) * span / 400);
      const center = drag.win.center + (sy - drag.sy) * span / 400;
      ctx.setWindow({ center, width });
    } else if (drag.kind === "draw") {
      ctx.setDraft([drag.ix, drag.iy, ix, iy]);
    } else if (drag.kind === "resize" || drag.kind === "move") {
      const b = ctx.store.box(drag.id);
      if (!b) { drag = null; return; }
      const dx = (sx - drag.sx) / view.scale;
      const dy = (sy - drag.sy) / view.scale;
      let [x1, y1, x2, y2] = drag.start;
      if (drag.kind === "move") {
        const w = x2 - x1, h = y2 - y1;
        x1 = Math.min(Math.max(0, x1 + dx), view.iw - w);
        y1 = Math.min(Math.max(0, y1 + dy), view.ih - h);
        x2 = x1 + w; y2 = y1 + h;
      } else {
        if (drag.edges.l) x1 += dx;
        if (drag.edges.r) x2 += dx;
        if (drag.edges.t) y1 += dy;
        if (drag.edges.b) y2 += dy;
      }
      b.box = clampBox([x1, y1, x2, y2], view.iw, view.ih);
      ctx.redraw();
    }
  }

  function up(e) {
    if (!drag) return;
    const d = drag;
    drag = null;
    if (stage.hasPointerCapture(e.pointerId)) stage.releasePointerCapture(e.pointerId);
    if (d.kind === "pan" && d.clickClears && !d.moved) ctx.select(null);
    if (d.kind === "draw") {
      ctx.setDraft(null);
      const [ix, iy] = view.toImage(...local(e));
      const box = clampBox([d.ix, d.iy, ix, iy], view.iw, view.ih);
      if (box[2] - box[0] >= 3 && box[3] - box[1] >= 3) {
        const id = ctx.store.add(ctx.drawLabel(), box);
        ctx.select(id);
        ctx.drawDone();
      }
    }
    if ((d.kind === "resize" || d.kind === "move") && d.moved) {
      const b = ctx.store.box(d.id);
      if (b && b.box.some((v, i) => v !== d.start[i])) ctx.store.edit(d.id, { box: b.box });
    }
    move(e);
  }

  let wheelSum = 0;     // trackpads send many small deltas: one slice per WHEEL_STEP px
  function wheel(e) {
    e.preventDefault();
    const [sx, sy] = local(e);
    const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    const dy = e.deltaY * unit;
    if (!e.ctrlKey && !e.metaKey && ctx.canScroll && ctx.canScroll()) {
      if (Math.sign(dy) !== Math.sign(wheelSum)) wheelSum = 0;
      wheelSum += dy;
      if (Math.abs(wheelSum) >= WHEEL_STEP) { ctx.scroll(Math.sign(wheelSum)); wheelSum = 0; }
      return;
    }
    view.zoomBy(Math.exp(-dy * 0.0015), sx, sy);
  }

  const menu = (e) => e.preventDefault();
  const leave = () => ctx.onPointer(null, null);
  stage.addEventListener("pointerdown", down);
  stage.addEventListener("pointermove", move);
  stage.addEventListener("pointerup", up);
  stage.addEventListener("pointercancel", up);
  stage.addEventListener("pointerleave", leave);
  stage.addEventListener("wheel", wheel, { passive: false });
  stage.addEventListener("contextmenu", menu);
  return () => {
    stage.removeEventListener("pointerdown", down);
    stage.removeEventListener("pointermove", move);
    stage.removeEventListener("pointerup", up);
    stage.removeEventListener("pointercancel", up);
    stage.removeEventListener("pointerleave", leave);
    stage.removeEventListener("wheel", wheel);
    stage.removeEventListener("contextmenu", menu);
  };
}
