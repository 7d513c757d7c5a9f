// The viewer page (#/study/<study_key>): toolbar, the slice with findings, side panel, keyboard.
// A DICOM study's series can be browsed (GET /api/studies/{key}/series): wheel, arrow keys or
// the slider over the stage go through the slices, and a T1 / T2 switch shows the other
// sequence at the same place (served on the analysed slice's pixel grid, so the marks stay put;
// they belong to the analysed slice and are dimmed on the others).

import { api } from "./api.js";
import { h, isTyping, replace, toast, when } from "./dom.js";
import { statusChip } from "./worklist.js";
import { SliceView, windowPresets } from "./viewer.js";
import { drawOverlay } from "./overlay.js";
import { attachEditor } from "./editor.js";
import { ReviewStore } from "./review.js";
import { displayControls, renderFindings, renderReview } from "./panel.js";
import { identityCard, windowControls } from "./studybar.js";

/** Mount the viewer for study `key` into `root`; returns the unmount function. */
export function mountStudy(root, key) {
  let stopped = false;
  let pollTimer = null;
  const cleanups = [];
  const state = { threshold: 0, hiddenClasses: new Set(), showRejected: true, selected: null,
    mode: "select", drawLabel: "herniation", hidden: false, draft: null };

  replace(root, h("section.study-page.loading", {}, h("p.loading", {}, "Opening the study...")));

  function waiting(summary) {
    replace(root, h("section.study-page.waiting", {},
      h("div.toolbar", {}, h("a.button", { href: "#/" }, "\u2190 Worklist"),
        h("h2", {}, summary.display_id), statusChip(summary.status)),
      h("div.empty-state", {}, h("div.spinner", { "aria-hidden": "true" }),
        h("p", {}, "The model is analysing this study. The page opens by itself when it is done."))));
    pollTimer = setTimeout(load, 2000);
  }

  async function load() {
    if (stopped) return;
    let body;
    try {
      body = await api("GET", `/api/studies/${key}`);
    } catch (e) {
      if (stopped) return;
      replace(root, h("section.study-page", {}, h("div.toolbar", {}, h("a.button", { href: "#/" }, "\u2190 Worklist")),
        h("p.form-message", { role: "alert" }, e.status === 404 ? "This study does not exist (any more)." : `The study cannot be opened: ${e.message}`)));
      return;
    }
    if (stopped) return;
    if (body.study.status === "new") waiting(body.study); else build(body);
  }

  function build(body) {
    const { study, findings, image } = body;
    const classes = (body.review && body.review.classes) || (findings && findings.model.classes) || [];
    if (!classes.includes(state.drawLabel) && classes.length) state.drawLabel = classes[Math.min(1, classes.length - 1)];
    const store = body.review && findings ? new ReviewStore(key, body.review, () => { redraw(); drawReview(); }) : null;
    if (store) store.onRename = (from, to) => { if (state.selected === from) state.selected = to; };
    const discs = findings ? findings.findings : [];

    const stage = h("div.stage", { tabindex: 0, "aria-label": "Image viewer: wheel for the next slice (Ctrl + wheel zooms), drag to pan, right-drag for window and level" });
    const overlay = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    overlay.classList.add("overlay");
    overlay.setAttribute("aria-hidden", "true");
    const readout = h("div.hud.readout.num");
    stage.append(overlay, h("div.hud.notice", { role: "note" }, "Decision support, not a diagnosis"), readout);
    const findingsHost = h("div");
    const reviewHost = h("div");
    const side = h("aside.study-side", {});
    const base = image.default_window || { center: 127.5, width: 255 };
    const range = image.pixel_range || [0, 255];
    const presets = windowPresets(base, range);
    let win = null;
    let pointer = null;

    const analysedUrl = `/api/studies/${key}/image.png`;
    stage.style.setProperty("--aspect", (image.height / image.width).toFixed(4));  // CSSOM (CSP)
    const view = new SliceView(stage, analysedUrl, image.width, image.height);
    cleanups.push(() => view.destroy());
    const wl = windowControls(presets, range, base, (next) => setWindow(next, false));

    // -- slices and sequences ---------------------------------------------------------------
    // stack.list: the series of GET /api/studies/{key}/series; the view shows slice
    // stack.slice of series stack.series; each series keeps its own window (T1 and T2 values
    // differ), restored when the reader comes back to it.
    const stack = { list: [], analysed: null, series: null, slice: null, wins: new Map() };
    const seqSwitch = h("div.segmented.sequence-switch", { id: "sequence-switch", role: "group", "aria-label": "Sequence (T)" });
    const sliceLabel = h("label.slice-label.num", { for: "slice-slider" });
    const sliceSlider = h("input", { type: "range", id: "slice-slider", min: 0, max: 0, step: 1, value: 0,
      "aria-label": "Slice (wheel, \u2191 \u2193)" });
    const backButton = h("button", { type: "button", id: "slice-analysed", title: "Back to the analysed slice (Home)",
      onclick: () => showSlice(stack.analysed, stack.list[stack.analysed].analysed_slice) }, "Analysed slice");
    const sliceNote = h("span.slice-note.small", { hidden: true }, "Marks are from the analysed slice");
    const stageBar = h("div.stage-bar", { hidden: true, role: "group", "aria-label": "Slices and sequences" },
      seqSwitch, h("div.slice-control", {}, sliceLabel, sliceSlider), backButton, sliceNote);
    sliceSlider.addEventListener("input", () => showSlice(stack.series, Number(sliceSlider.value)));

    const onAnalysed = () => stack.series === stack.analysed
      && stack.slice === stack.list[stack.analysed].analysed_slice;
    const canScroll = () => stack.series !== null && stack.list[stack.series].n_slices > 1;
    const seriesName = (s) => (stack.list.filter((x) => x.weighting === s.weighting).length > 1 || s.weighting === "unknown"
      ? `${s.weighting === "unknown" ? "Series" : s.weighting} ${s.series_number ?? s.index + 1}` : s.weighting);

    function sliceUrl(s, k) {
      return s === stack.analysed && k === stack.list[s].analysed_slice ? analysedUrl
        : `/api/studies/${key}/slices/${k}.png?series=${s}`;
    }

    function syncStageBar() {
      const s = stack.list[stack.series];
      const n = s.n_slices;
      sliceSlider.max = String(n - 1);
      sliceSlider.value = String(stack.slice);
      sliceSlider.disabled = n < 2;
      sliceLabel.textContent = `Slice ${stack.slice + 1} / ${n}`;
      for (const b of seqSwitch.children) b.setAttribute("aria-pressed", String(Number(b.dataset.series) === stack.series));
      backButton.disabled = onAnalysed();
      sliceNote.hidden = onAnalysed();
      stage.classList.toggle("off-slice", !onAnalysed());
      stage.dataset.series = String(stack.series);
      stage.dataset.slice = String(stack.slice);
    }

    /** Show slice `k` of series `s` (clamped); returns whether it changed. */
    function showSlice(s, k) {
      if (stack.series === null || !stack.list[s]) return false;
      k = Math.min(stack.list[s].n_slices - 1, Math.max(0, k));
      if (s === stack.series && k === stack.slice) return false;
      if (s !== stack.series) {
        stack.wins.set(stack.series, win);
        win = stack.wins.has(s) ? stack.wins.get(s) : null;
        wl.show(win);
      }
      stack.series = s;
      stack.slice = k;
      view.setSource(sliceUrl(s, k), win);
      syncStageBar();
      redraw();
      return true;
    }

    /** The slice of series `s` nearest to where the reader is now. */
    function switchSeries(s) {
      if (s === stack.series || !stack.list[s]) return;
      const here = stack.list[stack.series].positions[stack.slice];
      const pos = stack.list[s].positions;
      let best = 0;
      for (let k = 1; k < pos.length; k += 1) if (Math.abs(pos[k] - here) < Math.abs(pos[best] - here)) best = k;
      showSlice(s, best);
    }

    async function loadSeries() {
      if (study.kind !== "dicom") return;
      let body;
      try { body = await api("GET", `/api/studies/${key}/series`); } catch (e) {
        if (!stopped) toast(`The other slices of the series cannot be listed: ${e.message}`, "error");
        return;
      }
      if (stopped || body.analysed_series === null || !body.series.length) return;
      stack.list = body.series;
      stack.analysed = body.analysed_series;
      stack.series = stack.analysed;
      stack.slice = body.series[stack.analysed].analysed_slice;
      replace(seqSwitch, ...(stack.list.length > 1 ? stack.list.map((s) => h("button", { type: "button",
        dataset: { series: s.index, weighting: s.weighting }, title: `${s.description || seriesName(s)} (${s.n_slices} slices)`,
        onclick: () => switchSeries(s.index) }, seriesName(s))) : []));
      seqSwitch.hidden = stack.list.length < 2;
      const multi = stack.list.some((s) => s.n_slices > 1);
      sliceSlider.closest(".slice-control").hidden = !multi;
      stageBar.hidden = !multi && stack.list.length < 2;
      syncStageBar();
      hud();
    }

    function setWindow(next, fromDrag = true) {
      win = next;
      view.setWindow(next);
      if (fromDrag) wl.show(next);
      hud();
    }

    function hud() {
      const w = win || base;
      const auto = !win && stack.series !== null && stack.series !== stack.analysed;  // its own display window
      const parts = [`Zoom ${Math.round(view.scale * 100)}%`, auto ? "W/L auto" : `W ${Math.round(w.width)} L ${Math.round(w.center)}`];
      if (stack.series !== null) parts.unshift(`${seriesName(stack.list[stack.series])} ${stack.slice + 1}/${stack.list[stack.series].n_slices}`);
      if (pointer) parts.push(`x ${pointer[0].toFixed(0)} y ${pointer[1].toFixed(0)}`);
      readout.textContent = parts.join("  \u00b7  ");
    }

    function visibleBoxes() {
      if (!store) return [];
      return store.boxes.filter((b) => !state.hiddenClasses.has(b.label)
        && !(b.origin === "model" && b.score !== null && b.score !== undefined && b.score < state.threshold)
        && !(b.decision === "rejected" && !state.showRejected));
    }

    function redraw() {
      drawOverlay(overlay, view, { boxes: visibleBoxes(), discs, classes, selected: state.selected,
        draft: state.draft, draftLabel: state.drawLabel, hidden: state.hidden });
      hud();
    }
    view.onChange(redraw);

    function select(id) { state.selected = id; redraw(); drawReview(); }

    function step(dir) {
      const boxes = visibleBoxes().sort((a, b) => (a.box[1] + a.box[3]) - (b.box[1] + b.box[3]));
      if (!boxes.length) return;
      const i = boxes.findIndex((b) => b.id === state.selected);
      select(boxes[(i + dir + boxes.length) % boxes.length].id);
    }

    function setMode(mode) { state.mode = mode; stage.classList.toggle("drawing", mode === "draw"); drawReview(); }

    const actions = {
      select,
      accept: (id) => store.accept(id),
      reject: (id) => store.reject(id),
      setLabel: (id, label) => { const b = store.box(id); if (b && b.label !== label) store.edit(id, { label }); },
      remove: (id) => { store.remove(id); if (state.selected === id) state.selected = null; redraw(); drawReview(); },
      setDrawLabel: (label) => { state.drawLabel = label; drawReview(); },
      toggleDraw: () => setMode(state.mode === "draw" ? "select" : "draw"),
      complete: async () => {
        const pending = store.boxes.filter((b) => b.decision === "pending").length;
        if (pending && !window.confirm(`${pending} box${pending === 1 ? " is" : "es are"} still to review. `
          + "Accept them as the model proposed them and complete the review?")) return;
        try {
          await store.completeReview(pending > 0);
          toast("Review complete. The corrected boxes were saved as training data.", "ok");
          refreshHeader();
        } catch (e) { toast(`The review cannot be completed: ${e.message}`, "error"); }
      },
    };

    function drawReview() { if (store) renderReview(reviewHost, store, state, actions); }
    function drawFindings() {
      if (findings) renderFindings(findingsHost, findings, state, classes, (d) => {
        const b = store && store.boxes.find((x) => x.level === d.level && x.label === d.label);
        if (b) select(b.id);
      });
    }

    const chipHost = h("span", {}, statusChip(study.status));
    async function refreshHeader() {
      try { const b = await api("GET", `/api/studies/${key}`); replace(chipHost, statusChip(b.study.status)); } catch (_) { /* keep */ }
    }

    const idHost = h("div.identity-host");
    const pacsButton = h("button", { type: "button", hidden: true, title: "Send the structured report and the overlay to the PACS",
      onclick: async () => {
        pacsButton.disabled = true;
        try { const r = await api("POST", `/api/studies/${key}/push`); toast(`Sent to PACS: ${r.stored.join(", ")}`, "ok"); }
        catch (e) { toast(`Sending to PACS failed: ${e.message}`, "error"); }
        pacsButton.disabled = false;
      } }, "Send to PACS");
    if (findings && study.kind === "dicom") {
      api("GET", "/api/pacs").then((p) => { pacsButton.hidden = !p.configured; }).catch(() => {});
    }
    const zoom = (f) => view.zoomBy(f);
    const toolbar = h("div.toolbar.study-toolbar", {},
      h("a.button", { href: "#/", title: "Back to the worklist" }, "\u2190 Worklist"),
      h("h2.study-id", { title: `Study key ${key}; ${(study.kind || "").toUpperCase()}, analysed ${when(study.analysed_at)}` }, study.display_id), chipHost,
      h("span.meta", { title: `Analysed ${when(study.analysed_at)}` }, `${(study.kind || "").toUpperCase()} \u00b7 ${when(study.analysed_at)}`),
      h("span.sep"),
      wl.element,
      h("div.group", { role: "group", "aria-label": "Zoom" },
        h("button", { type: "button", title: "Zoom out (-)", onclick: () => zoom(1 / 1.25) }, "\u2212"),
        h("button", { type: "button", title: "Fit the image (R)", onclick: () => view.fit() }, "Fit"),
        h("button", { type: "button", title: "Zoom in (+)", onclick: () => zoom(1.25) }, "+")),
      h("span.spacer"),
      h("button", { type: "button", title: "Show patient details (recorded in the audit log)",
        onclick: () => identityCard(idHost, key) }, "Patient details"),
      findings ? h("a.button", { href: `/api/studies/${key}/report.html`, target: "_blank", rel: "noopener", id: "report-html" }, "Report") : null,
      findings ? h("a.button", { href: `/api/studies/${key}/report.pdf`, download: `lumbardx-${key}.pdf`, id: "report-pdf" }, "PDF") : null,
      pacsButton);

    if (findings) {
      side.append(displayControls(state, classes, () => { redraw(); drawFindings(); }), findingsHost, reviewHost);
    } else {
      side.append(h("section.panel-section", {}, h("h3", {}, "Analysis"),
        h("p.error-text", { role: "alert" }, study.error || "This study has no findings."),
        h("button.primary", { type: "button", onclick: async () => {
          try { await api("POST", `/api/studies/${key}/analyse`); load(); } catch (e) { toast(e.message, "error"); }
        } }, "Analyse again")));
    }
    replace(root, h("section.study-page", {}, toolbar, idHost,
      h("div.study-body", {}, h("div.stage-column", {}, stageBar, stage), side)));
    drawFindings();
    drawReview();
    view.load().then(redraw).catch((e) => {
      stage.append(h("p.stage-error", { role: "alert" }, `The slice cannot be shown: ${e.message}.`));
    });
    loadSeries();
    const slicing = { canScroll, scroll: (step) => showSlice(stack.series, stack.slice + step) };

    if (store) {
      cleanups.push(attachEditor(stage, view, {
        visibleBoxes, store, selected: () => state.selected, select,
        mode: () => state.mode, drawLabel: () => state.drawLabel, drawDone: () => setMode("select"),
        setDraft: (b) => { state.draft = b; redraw(); },
        getWindow: () => win || base, setWindow, range: () => range, redraw,
        onPointer: (x, y) => { pointer = x === null ? null : [x, y]; hud(); }, ...slicing,
      }));
    } else {
      cleanups.push(attachEditor(stage, view, { visibleBoxes: () => [], store: null, selected: () => null,
        select: () => {}, mode: () => "select", drawLabel: () => "", drawDone: () => {}, setDraft: () => {},
        getWindow: () => win || base, setWindow, range: () => range, redraw,
        onPointer: (x, y) => { pointer = x === null ? null : [x, y]; hud(); }, ...slicing }));
    }

    function onKey(e) {
      if (isTyping(e.target) || e.ctrlKey || e.metaKey || e.altKey || document.querySelector("dialog[open]")) return;
      const k = e.key;
      const sel = state.selected && store ? store.box(state.selected) : null;
      const handled = () => e.preventDefault();
      if (k === "+" || k === "=") { zoom(1.25); handled(); }
      else if (k === "-" || k === "_") { zoom(1 / 1.25); handled(); }
      else if (k === "r" || k === "R") { view.fit(); handled(); }
      else if (k === "w" || k === "W") { setWindow(null); wl.show(null); handled(); }
      else if (k === "h" || k === "H") { state.hidden = !state.hidden; redraw(); handled(); }
      else if ((k === "ArrowUp" || k === "ArrowDown" || k === "PageUp" || k === "PageDown") && canScroll()
        && e.target.tagName !== "INPUT") {
        showSlice(stack.series, stack.slice + (k === "ArrowUp" || k === "PageUp" ? -1 : 1)); handled();
      } else if (k === "Home" && stack.series !== null && e.target.tagName !== "INPUT") { backButton.click(); handled(); }
      else if ((k === "t" || k === "T") && stack.list.length > 1) {
        switchSeries((stack.series + 1) % stack.list.length); handled();
      }
      else if (!store) return;
      else if (k === "n" || k === "N") { step(1); handled(); }
      else if (k === "p" || k === "P") { step(-1); handled(); }
      else if ((k === "a" || k === "A") && sel) { store.accept(sel.id); handled(); }
      else if ((k === "x" || k === "X") && sel) { store.reject(sel.id); handled(); }
      else if (k === "d" || k === "D") { actions.toggleDraw(); handled(); }
      else if (/^[1-9]$/.test(k) && classes[Number(k) - 1]) {
        const label = classes[Number(k) - 1];
        if (sel) actions.setLabel(sel.id, label); else actions.setDrawLabel(label);
        handled();
      } else if ((k === "Delete" || k === "Backspace") && sel && sel.origin === "reader") { actions.remove(sel.id); handled(); }
      else if (k === "Escape") { state.draft = null; setMode("select"); select(null); handled(); }
    }
    document.addEventListener("keydown", onKey);
    cleanups.push(() => document.removeEventListener("keydown", onKey));
    const unload = (e) => { if (store && store.dirty) { e.preventDefault(); e.returnValue = ""; } };
    window.addEventListener("beforeunload", unload);
    cleanups.push(() => window.removeEventListener("beforeunload", unload));
    stage.focus({ preventScroll: true });
  }

  load();
  return () => { stopped = true; clearTimeout(pollTimer); for (const c of cleanups) c(); };
}
