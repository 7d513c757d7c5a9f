// Upload panel: drag-and-drop or pickers for DICOM files / a DICOM folder / a ZIP / PNG or JPEG
// slices; one POST /api/studies per drop (per image when several PNG/JPEG files are sent: each
// is its own study), with a progress bar and the server's error in words.

import { uploadStudy } from "./api.js";
import { h, replace } from "./dom.js";

function size(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** Read every file under dropped folders (DataTransferItem.webkitGetAsEntry). */
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry())
    .filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  async function walk(entry) {
    if (entry.isFile) {
      files.push(await new Promise((res, rej) => entry.file(res, rej)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e);
      }
    }
  }
  for (const e of entries) await walk(e);
  return files;
}

/** A PNG or JPEG image file (by type, or by name when the browser gives no type). */
function isImageFile(f) {
  return f.type === "image/png" || f.type === "image/jpeg" || /\.(png|jpe?g)$/i.test(f.name);
}

const ADVICE = {
  400: "Send the files of one study at a time: one DICOM series (or a ZIP of it), or PNG/JPEG slices without DICOM files.",
  413: "The upload is too large. Send only the sagittal series, or ask the administrator to raise the limit.",
  415: "Only DICOM files, PNG, JPEG or a ZIP of a DICOM folder can be analysed.",
  422: "The files were set aside (quarantined) for the administrator to look at.",
};

/**
 * The upload panel element.
 * @param {(summary: object, duplicate: boolean) => void} onStored called after each study stored.
 */
export function uploadPanel(onStored) {
  const list = h("ul.upload-list", { "aria-live": "polite" });
  const fileInput = h("input.visually-hidden", { type: "file", multiple: true, id: "upload-files",
    accept: ".dcm,.dicom,.ima,.png,.jpg,.jpeg,.zip,application/dicom,image/png,image/jpeg,application/zip,*/*" });
  const dirInput = h("input.visually-hidden", { type: "file", multiple: true, id: "upload-folder",
    webkitdirectory: true });

  async function send(files) {
    const total = files.reduce((a, f) => a + f.size, 0);
    const label = files.length === 1 ? files[0].name : `${files.length} files`;
    const bar = h("progress", { max: 1, value: 0 });
    const state = h("span.upload-state", {}, "Uploading...");
    const item = h("li.upload-item", { dataset: { state: "sending" } },
      h("div.upload-head", {}, h("span.upload-name", {}, label), h("span.muted.num", {}, size(total))),
      bar, state);
    list.prepend(item);
    try {
      const { status, body } = await uploadStudy(files, (f) => {
        bar.value = f;
        if (f >= 1) state.textContent = "Reading the study...";
      });
      bar.value = 1;
      const s = body.study;
      item.dataset.state = "done";
      replace(state, body.duplicate ? "Already in the worklist as " : "Stored as ",
        h("a", { href: `#/study/${s.study_key}` }, s.display_id), status === 201 ? "; analysing." : ".");
      onStored(s, Boolean(body.duplicate));
    } catch (e) {
      item.dataset.state = "error";
      bar.remove();
      const extra = e.body && e.body.quarantine_id ? ` (quarantine ${e.body.quarantine_id})` : "";
      replace(state, h("span.error-text", { role: "alert" }, `Not stored: ${e.message}${extra}`),
        ADVICE[e.status] ? h("span.muted.advice", {}, ADVICE[e.status]) : null);
    }
    while (list.children.length > 6) list.lastElementChild.remove();
  }

  /** Several PNG/JPEG files are several studies: each is sent alone, so that one refused
   * image does not stop the others. Anything else goes as one study. */
  async function submit(files) {
    files = files.filter((f) => f.size > 0 && !f.name.startsWith("."));
    if (!files.length) return;
    if (files.length > 1 && files.every(isImageFile)) {
      for (const f of files) await send([f]);
    } else {
      await send(files);
    }
  }

  const zone = h("div.dropzone", { tabindex: 0, role: "button",
    "aria-label": "Upload a study: drop files here or press Enter to choose files",
    onclick: (e) => { if (e.target === zone || e.target.classList.contains("dz-text")) fileInput.click(); },
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); } },
    ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    ondrop: async (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      submit(await droppedFiles(e.dataTransfer));
    },
  },
  h("p.dz-text", {}, h("strong", {}, "Drop a study here")),
  h("p.dz-text.muted", {}, "DICOM files or folder, a ZIP of a DICOM folder, or PNG / JPEG slices (one study each)"),
  h("div.dz-buttons", {},
    h("label.button", { for: "upload-files" }, "Choose files"),
    h("label.button", { for: "upload-folder" }, "Choose folder")));

  fileInput.addEventListener("change", () => { submit([...fileInput.files]); fileInput.value = ""; });
  dirInput.addEventListener("change", () => { submit([...dirInput.files]); dirInput.value = ""; });

  return h("section.panel.upload-panel", { "aria-labelledby": "upload-title" },
    h("h3", { id: "upload-title" }, "Upload"), zone, fileInput, dirInput, list);
}
