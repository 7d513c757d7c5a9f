// Worklist: studies with status, times and findings count; upload and PACS panels beside it.
// Polls GET /api/studies every 3 s while a study is being analysed, every 30 s otherwise.

import { api } from "./api.js";
import { ago, h, replace, toast, when } from "./dom.js";
import { uploadPanel } from "./upload.js";
import { pacsPanel } from "./pacs.js";

const STATUSES = ["new", "analysed", "reviewed", "failed"];
const STATUS_WORDS = { new: "Analysing", analysed: "Analysed", reviewed: "Reviewed", failed: "Failed" };

/** Status chip ("analysed" etc.) used by the worklist and the viewer. */
export function statusChip(status) {
  return h("span.chip.status", { dataset: { status } }, STATUS_WORDS[status] || status);
}

function findingsCell(s) {
  if (s.status === "new") return h("span.muted", {}, "analysis running...");
  if (s.status === "failed") return h("span.error-text", {}, s.error || "analysis failed");
  if (s.n_discs === null || s.n_discs === undefined) return h("span.muted", {}, "-");
  const count = h("span.count", { dataset: { positive: s.n_findings > 0 ? "yes" : "no" } },
    s.n_findings === 0 ? "no findings" : `${s.n_findings} finding${s.n_findings === 1 ? "" : "s"}`);
  const levels = (s.levels_with_findings || []).join(", ");
  return h("span", {}, count, h("span.muted", {}, ` of ${s.n_discs} discs`),
    levels ? h("span.levels", {}, levels) : null);
}

function row(s, highlight) {
  const open = () => { window.location.hash = `#/study/${s.study_key}`; };
  return h("tr", {
    tabindex: 0, dataset: { key: s.study_key, status: s.status },
    class: highlight === s.study_key ? "highlight" : null,
    onclick: open,
    onkeydown: (e) => { if (e.key === "Enter") open(); },
  },
  h("td", {}, h("a.study-link", { href: `#/study/${s.study_key}` }, s.display_id || s.study_key)),
  h("td", {}, statusChip(s.status)),
  h("td.num", { title: s.created_at || "" }, when(s.created_at), h("span.age", {}, ago(s.created_at))),
  h("td.num", {}, when(s.analysed_at)),
  h("td", {}, (s.kind || "-").toUpperCase(), s.origin === "pacs" ? h("span.muted", {}, " (PACS)") : null,
    s.n_files ? h("span.muted", {}, ` \u00b7 ${s.n_files} file${s.n_files === 1 ? "" : "s"}`) : null),
  h("td.findings-cell", {}, findingsCell(s)),
  h("td", {}, s.uploaded_by || "-"));
}

/** Mount the worklist page into `root`; returns the unmount function. */
export function mountWorklist(root) {
  let filter = sessionStorage.getItem("worklist-filter") || "";
  let studies = [];
  let timer = null;
  let highlight = null;
  let stopped = false;

  const filters = h("div.segmented", { role: "group", "aria-label": "Filter by status" });
  const tbody = h("tbody");
  const updated = h("span.muted.updated", { "aria-live": "polite" });
  const table = h("table.worklist", {},
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Study"), h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Received"), h("th", { scope: "col" }, "Analysed"),
      h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Findings"),
      h("th", { scope: "col" }, "By"))),
    tbody);

  function renderFilters() {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, studies.filter((x) => x.status === s).length]));
    replace(filters, ...[["", "All", studies.length], ...STATUSES.map((s) => [s, STATUS_WORDS[s], counts[s]])]
      .map(([value, label, n]) => h("button", {
        type: "button", "aria-pressed": String(filter === value), dataset: { filter: value },
        onclick: () => { filter = value; sessionStorage.setItem("worklist-filter", value); render(); },
      }, label, h("span.badge", {}, String(n)))));
  }

  function render() {
    renderFilters();
    const shown = filter ? studies.filter((s) => s.status === filter) : studies;
    if (!shown.length) {
      replace(tbody, h("tr.empty", {}, h("td", { colspan: 7 },
        studies.length ? "No study with this status." :
          "No studies yet. Drop a DICOM series, a ZIP of one, or a PNG/JPEG slice on the upload panel.")));
      return;
    }
    replace(tbody, ...shown.map((s) => row(s, highlight)));
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const body = await api("GET", "/api/studies?limit=500");
      if (stopped) return;
      studies = body.studies || [];
      updated.textContent = `Updated ${when(new Date().toISOString())}`;
      render();
    } catch (e) {
      if (stopped) return;
      updated.textContent = `Could not refresh: ${e.message}`;
    }
    if (!stopped) {
      const busy = studies.some((s) => s.status === "new");
      timer = setTimeout(refresh, busy ? 3000 : 30000);
    }
  }

  function onStored(summary, duplicate) {
    highlight = summary.study_key;
    toast(duplicate ? `Study ${summary.display_id} is already in the worklist (same pixels).`
      : `Study ${summary.display_id} stored; analysis started.`, "ok");
    refresh();
  }

  const side = h("aside.worklist-side", {}, uploadPanel(onStored));
  const pacsHost = h("div");
  side.append(pacsHost);
  pacsPanel(pacsHost, onStored);

  replace(root, h("section.worklist-page", {},
    h("div.worklist-main", {},
      h("div.toolbar", {}, h("h2", {}, "Worklist"), filters, h("span.spacer"), updated,
        h("button", { type: "button", onclick: refresh, title: "Refresh the list" }, "Refresh")),
      h("div.table-wrap", {}, table)),
    side));
  render();
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
