// Parts of the viewer toolbar: window/level presets and sliders, and the patient details card
// (shown only on request: GET /api/studies/{key}/patient is audited as view_identity).

import { api } from "./api.js";
import { h, replace } from "./dom.js";

/**
 * Window/level controls.
 * @param {Array} presets from viewer.windowPresets.
 * @param {[number, number]} range lowest and highest stored pixel value.
 * @param {{center: number, width: number}} base the study's default window.
 * @param {(win: ({center:number,width:number}|null)) => void} onChange
 * @returns {{element: HTMLElement, show: (win) => void}} show() reflects a window set elsewhere.
 */
export function windowControls(presets, range, base, onChange) {
  const [lo, hi] = range;
  const span = Math.max(1, hi - lo);
  const step = span > 1000 ? 1 : span / 500;
  const select = h("select", { id: "wl-preset", "aria-label": "Window preset", title: "Window preset" },
    ...presets.map((p) => h("option", { value: p.id }, p.label)),
    h("option", { value: "custom", hidden: true }, "Custom"));
  const width = h("input", { type: "range", id: "wl-width", min: Math.max(step, span / 100), max: span * 2, step,
    value: base.width, "aria-label": "Window width (contrast)" });
  const center = h("input", { type: "range", id: "wl-center", min: lo - span / 2, max: hi + span / 2, step,
    value: base.center, "aria-label": "Window level (brightness)" });

  function show(win) {
    const w = win || base;
    width.value = w.width;
    center.value = w.center;
    if (!win) select.value = "analysed";
    else {
      const p = presets.find((x) => x.window && Math.abs(x.window.center - win.center) < 1e-6
        && Math.abs(x.window.width - win.width) < 1e-6);
      select.value = p ? p.id : "custom";
    }
  }
  select.addEventListener("change", () => {
    const p = presets.find((x) => x.id === select.value);
    if (!p) return;
    show(p.window);
    onChange(p.window);
  });
  const fromSliders = () => {
    const win = { center: Number(center.value), width: Number(width.value) };
    select.value = "custom";
    onChange(win);
  };
  width.addEventListener("input", fromSliders);
  center.addEventListener("input", fromSliders);
  show(null);
  const element = h("div.group.wl", { role: "group", "aria-label": "Window and level" },
    select, h("label.slider", {}, h("span", {}, "Contrast"), width),
    h("label.slider", {}, h("span", {}, "Brightness"), center));
  return { element, show };
}

const IDENTITY_FIELDS = [["patient_name", "Name"], ["patient_id", "Patient ID"], ["birth_date", "Born"],
  ["sex", "Sex"], ["study_date", "Study date"], ["study_description", "Description"], ["accession_number", "Accession"]];

/** Toggle the patient details card in `host` (fetched on each opening; audited by the server). */
export async function identityCard(host, key) {
  if (host.firstChild) { replace(host); return; }
  replace(host, h("div.identity.muted", {}, "Loading patient details..."));
  try {
    const p = await api("GET", `/api/studies/${key}/patient`);
    const known = IDENTITY_FIELDS.filter(([f]) => p[f]);
    replace(host, h("div.identity", { role: "region", "aria-label": "Patient details" },
      known.length ? h("dl", {}, ...known.flatMap(([f, label]) => [h("dt", {}, label), h("dd", {}, String(p[f]))]))
        : h("span.muted", {}, "No patient details: this study is an image file without a DICOM header."),
      h("button", { type: "button", onclick: () => replace(host) }, "Hide")));
  } catch (e) {
    replace(host, h("div.identity", { role: "alert" }, `Patient details unavailable: ${e.message}`,
      h("button", { type: "button", onclick: () => replace(host) }, "Hide")));
  }
}
