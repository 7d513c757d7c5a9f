// PACS panel of the worklist (only when the server has a PACS configured): search series by
// Patient ID or Study Instance UID (POST, so no identifier lands in a URL) and pull one.

import { api } from "./api.js";
import { h, replace } from "./dom.js";

/** Fill `host` with the PACS panel, or leave it empty when no PACS is configured. */
export async function pacsPanel(host, onStored) {
  let info;
  try { info = await api("GET", "/api/pacs"); } catch (_) { return; }
  if (!info.configured) return;

  const pid = h("input", { type: "text", id: "pacs-patient", autocomplete: "off", spellcheck: "false" });
  const uid = h("input", { type: "text", id: "pacs-study", autocomplete: "off", spellcheck: "false" });
  const sagittal = h("input", { type: "checkbox", id: "pacs-sagittal", checked: true });
  const message = h("p.form-message", { role: "alert", hidden: true });
  const results = h("div.pacs-results");
  const go = h("button.primary", { type: "submit" }, "Search");

  function say(text, kind = "error") { message.textContent = text; message.dataset.kind = kind; message.hidden = !text; }

  async function pull(series, button) {
    button.disabled = true;
    button.textContent = "Pulling...";
    try {
      const body = await api("POST", "/api/pacs/pull", { study_uid: series.study_uid, series_uid: series.series_uid });
      button.textContent = body.duplicate ? "Already here" : "Pulled";
      onStored(body.study, Boolean(body.duplicate));
    } catch (e) {
      button.disabled = false;
      button.textContent = "Pull";
      say(`Pull failed: ${e.message}`);
    }
  }

  async function search(e) {
    e.preventDefault();
    const body = { patient_id: pid.value.trim() || null, study_uid: uid.value.trim() || null,
      sagittal_only: sagittal.checked };
    if (!body.patient_id && !body.study_uid) { say("Enter a Patient ID or a Study Instance UID."); return; }
    say("");
    go.disabled = true;
    replace(results, h("p.muted", {}, "Searching the PACS..."));
    try {
      const { series } = await api("POST", "/api/pacs/search", body);
      if (!series.length) { replace(results, h("p.muted", {}, "No matching series.")); return; }
      replace(results, h("table.compact", {},
        h("thead", {}, h("tr", {}, ...["Date", "Series", "Plane", "Images", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, ...series.map((s) => {
          const b = h("button", { type: "button" }, "Pull");
          b.addEventListener("click", () => pull(s, b));
          return h("tr", {}, h("td.num", {}, s.study_date || "-"),
            h("td", {}, `${s.series_number ?? ""} ${s.description || s.modality || ""}`.trim() || "-"),
            h("td", {}, s.plane || "-"), h("td.num", {}, String(s.n_instances ?? "-")), h("td", {}, b));
        }))));
    } catch (err) {
      replace(results);
      say(`PACS search failed: ${err.message}`);
    } finally {
      go.disabled = false;
    }
  }

  replace(host, h("section.panel.pacs-panel", { "aria-labelledby": "pacs-title" },
    h("h3", { id: "pacs-title" }, "PACS"),
    h("p.muted.small", {}, info.url || ""),
    h("form.stack", { onsubmit: search },
      h("label", { for: "pacs-patient" }, "Patient ID"), pid,
      h("label", { for: "pacs-study" }, "Study Instance UID"), uid,
      h("label.check", {}, sagittal, " Sagittal series only"),
      message, go),
    results));
}
