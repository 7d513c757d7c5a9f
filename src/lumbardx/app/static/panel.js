// The viewer's side panel: display controls (confidence slider, class toggles), the findings
// table by level (model output, severity as estimates) and the review of each box
// (accept / reject / change class / delete) with the save state.

import { h, replace, when } from "./dom.js";
import { classColour, className } from "./colours.js";

const DECISION_WORDS = { pending: "to review", accepted: "accepted", rejected: "rejected",
  edited: "edited", added: "added" };

function swatch(label, classes) {
  const s = h("span.swatch", { "aria-hidden": "true" });
  s.style.background = classColour(label, classes);   // CSSOM: allowed under the CSP
  return s;
}

function classChip(label, classes) {
  return h("span.class-chip", { dataset: { label } }, swatch(label, classes), className(label));
}

/**
 * Display controls, built once.
 * @param {object} state {threshold, hiddenClasses: Set, showRejected}
 * @param {string[]} classes
 * @param {() => void} onChange
 */
export function displayControls(state, classes, onChange) {
  const value = h("output.num", { for: "conf-slider" }, state.threshold.toFixed(2));
  const slider = h("input", { type: "range", id: "conf-slider", min: 0, max: 1, step: 0.05,
    value: state.threshold, "aria-describedby": "conf-help" });
  slider.addEventListener("input", () => {
    state.threshold = Number(slider.value);
    value.textContent = state.threshold.toFixed(2);
    onChange();
  });
  const toggles = classes.map((c) => {
    const box = h("input", { type: "checkbox", checked: !state.hiddenClasses.has(c), dataset: { classToggle: c } });
    box.addEventListener("change", () => {
      if (box.checked) state.hiddenClasses.delete(c); else state.hiddenClasses.add(c);
      onChange();
    });
    return h("label.toggle", {}, box, swatch(c, classes), className(c));
  });
  const rejected = h("input", { type: "checkbox", checked: state.showRejected, id: "show-rejected" });
  rejected.addEventListener("change", () => { state.showRejected = rejected.checked; onChange(); });
  return h("section.panel-section", { "aria-labelledby": "display-title" },
    h("h3", { id: "display-title" }, "Display"),
    h("div.slider-row", {}, h("label", { for: "conf-slider" }, "Minimum confidence"), slider, value),
    h("p.small.muted", { id: "conf-help" }, "Model findings below this confidence are hidden. Boxes you drew always show."),
    h("div.toggles", {}, ...toggles, h("label.toggle", {}, rejected, "Rejected boxes")));
}

function severityText(sev) {
  if (!sev) return "";
  const parts = [];
  if (sev.meyerding_grade || sev.slip_percent !== null && sev.slip_percent !== undefined) {
    const pct = sev.slip_percent === null || sev.slip_percent === undefined ? "" : ` (slip ${Math.round(sev.slip_percent)}%)`;
    parts.push(`Meyerding ${sev.meyerding_grade || "?"}${pct}`);
  }
  if (sev.herniation_extent_mm !== null && sev.herniation_extent_mm !== undefined) {
    parts.push(`posterior extent ${sev.herniation_extent_mm.toFixed(1)} mm`);
  }
  return parts.join("; ");
}

/**
 * Findings by level (findings.json "findings", top to bottom).
 * @param {HTMLElement} host
 * @param {object} findings findings.json object.
 * @param {object} state {threshold}
 * @param {string[]} classes
 * @param {(disc: object) => void} onPick row clicked.
 */
export function renderFindings(host, findings, state, classes, onPick) {
  const discs = findings.findings || [];
  const rows = discs.map((d) => {
    const below = d.score !== null && d.score !== undefined && d.score < state.threshold;
    const others = (d.findings || []).filter((f) => f.label !== d.label && f.label !== "normal")
      .map((f) => `${className(f.label)} ${f.score === null ? "" : f.score.toFixed(2)}`.trim());
    const sev = severityText(d.severity);
    return h("tr", { tabindex: 0, class: below ? "below" : null, dataset: { level: d.level, label: d.label },
      title: below ? "Below the confidence shown" : "", onclick: () => onPick(d),
      onkeydown: (e) => { if (e.key === "Enter") onPick(d); } },
    h("th", { scope: "row" }, d.level, d.level_uncertain ? h("span.uncertain", { title: "Level name uncertain" }, "?") : null),
    h("td", {}, classChip(d.label, classes), others.length ? h("span.also", {}, `also ${others.join(", ")}`) : null),
    h("td.num", {}, d.score === null || d.score === undefined ? "ref." : d.score.toFixed(2)),
    h("td", {}, sev ? h("span.estimate", {}, sev, h("span.est-tag", {}, "estimate")) : h("span.muted", {}, "-")));
  });
  const levelNote = findings.sacrum_recognised ? null
    : h("p.level-note", { role: "note" }, "Level names are uncertain (marked ?): ",
      findings.sacrum_reason || "the sacrum was not recognised", ".");
  const notes = [...(findings.warnings || [])];
  // only the findings the detector calls in this study (findings.json leaves out the others)
  const evidence = Object.entries((findings.model && findings.model.sensitivity_evidence) || {})
    .filter(([name, e]) => name !== "normal" && e.positives > 0)
    .map(([name, e]) => `${className(name)} ${Math.round((100 * e.called) / e.positives)}% (${e.called} of ${e.positives})`);
  if (evidence.length) {
    notes.push(`Discs with a finding that this model called, on ${findings.model.sensitivity_basis || "held-out discs"}: `
      + `${evidence.join("; ")}. A finding that is not shown is not excluded.`);
  }
  const estimateNote = discs.map((d) => d.severity && d.severity.estimate_note).find(Boolean);
  if (estimateNote) notes.push(`About the severity estimates: ${estimateNote}`);
  replace(host, h("section.panel-section", { "aria-labelledby": "findings-title" },
    h("h3", { id: "findings-title" }, "Findings by level"),
    discs.length ? h("table.findings", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Level"), h("th", { scope: "col" }, "Finding"),
        h("th", { scope: "col" }, "Conf."), h("th", { scope: "col" }, "Severity (estimate)"))),
      h("tbody", {}, ...rows))
      : h("p.muted", {}, "No discs were detected on the analysed slice. Check that it is a sagittal lumbar MRI."),
    levelNote,
    notes.length ? h("details.notes", {}, h("summary", {}, `Notes from the analysis (${notes.length})`),
      h("ul", {}, ...notes.map((n) => h("li", {}, n)))) : null));
}

function saveBadge(store) {
  if (store.state === "saving") return h("span.save-state", { dataset: { state: "saving" } }, "Saving...");
  if (store.state === "error") return h("span.save-state", { dataset: { state: "error" } }, "Not saved");
  return h("span.save-state", { dataset: { state: "saved" } },
    store.savedAt ? `All changes saved ${when(store.savedAt.toISOString()).slice(11)}` : "No changes yet");
}

/**
 * The review section.
 * @param {object} actions {select(id), accept(id), reject(id), setLabel(id, label), remove(id),
 *   setDrawLabel(label), toggleDraw(), complete()}
 */
export function renderReview(host, store, state, actions) {
  const classes = store.classes;
  const sel = state.selected ? store.box(state.selected) : null;
  const counts = {};
  for (const b of store.boxes) counts[b.decision] = (counts[b.decision] || 0) + 1;
  const classButtons = (current, onPick, name) => h("div.segmented.classes", { role: "group", "aria-label": name },
    ...classes.map((c, i) => h("button", { type: "button", "aria-pressed": String(current === c),
      dataset: { setClass: c }, title: `${className(c)} (${i + 1})`, onclick: () => onPick(c) },
    swatch(c, classes), className(c))));

  const selected = sel ? h("div.selected-card", { dataset: { boxId: sel.id } },
    h("div.sel-head", {}, h("strong", {}, sel.level || "No level"), " ",
      classChip(sel.label, classes),
      h("span.muted", {}, sel.score !== null && sel.score !== undefined ? ` confidence ${sel.score.toFixed(2)}`
        : sel.origin === "reader" ? " drawn by a reader"
          : ` the reader's call (model: ${className(sel.model_label || sel.label)})`),
      h("span.decision", { dataset: { decision: sel.decision } }, DECISION_WORDS[sel.decision])),
    classButtons(sel.label, (c) => actions.setLabel(sel.id, c), "Class of the selected box"),
    h("div.sel-actions", {},
      h("button.accept", { type: "button", onclick: () => actions.accept(sel.id), title: "Accept (A)" }, "\u2713 Accept", h("kbd", {}, "A")),
      h("button.reject", { type: "button", onclick: () => actions.reject(sel.id), title: "Reject (X)" }, "\u2715 Reject", h("kbd", {}, "X")),
      sel.origin === "reader" ? h("button.danger", { type: "button", onclick: () => actions.remove(sel.id), title: "Delete (Del)" }, "Delete") : null),
    h("p.small.muted", {}, "Drag an edge or corner to adjust the box; drag inside it to move it."))
    : h("p.muted.small.selected-card.empty", {}, "Select a box on the image or in the list (N / P) to accept, reject or correct it.");

  const list = h("table.boxes", {}, h("tbody", {}, ...store.boxes.map((b) => h("tr", {
    class: b.id === state.selected ? "selected" : null, dataset: { boxId: b.id, decision: b.decision },
    onclick: () => actions.select(b.id) },
  h("td", {}, b.level || "-"), h("td", {}, classChip(b.label, classes)),
  h("td.num", {}, b.score === null || b.score === undefined ? "reader" : b.score.toFixed(2)),
  h("td", {}, h("span.decision", { dataset: { decision: b.decision } }, DECISION_WORDS[b.decision]))))));

  const pending = counts.pending || 0;
  replace(host, h("section.panel-section.review", { "aria-labelledby": "review-title" },
    h("div.section-head", {}, h("h3", { id: "review-title" }, "Review"), saveBadge(store)),
    store.state === "error" ? h("div.form-message", { role: "alert" }, store.error, " ",
      h("button", { type: "button", onclick: () => store.retry() }, "Retry"),
      h("button", { type: "button", onclick: () => store.discard() }, "Discard")) : null,
    selected,
    h("div.draw-row", {},
      h("button", { type: "button", id: "draw-button", "aria-pressed": String(state.mode === "draw"),
        onclick: actions.toggleDraw, title: "Draw a new box (D)" }, "+ Draw box", h("kbd", {}, "D")),
      h("span.new-label", {}, "as"), classButtons(state.drawLabel, actions.setDrawLabel, "Class of new boxes")),
    h("p.small.muted.counts", {}, `${pending} to review \u00b7 ${counts.accepted || 0} accepted \u00b7 `
      + `${counts.rejected || 0} rejected \u00b7 ${(counts.edited || 0) + (counts.added || 0)} corrected`),
    list,
    h("button.primary.wide", { type: "button", id: "complete-review", onclick: actions.complete },
      store.complete ? "Review complete \u2013 save again" : "Complete review")));
}
