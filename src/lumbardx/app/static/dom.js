// Small DOM helpers. Text always goes in through textContent (never innerHTML), so nothing a
// server or a file name contains can run as markup.

/**
 * Create an element.
 * @param {string} tag e.g. "div", "button.primary", "td.num" (classes after dots).
 * @param {object} [attrs] attributes; `on*` functions become listeners, `dataset` an object,
 *   `class` extra classes, booleans set/omit the attribute.
 * @param {...(Node|string|number|null|false|Array)} children
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name);
  if (classes.length) el.classList.add(...classes);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "class") {
      el.classList.add(...String(value).split(/\s+/).filter(Boolean));
    } else if (key === "value" || key === "checked") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** SVG element with attributes (no styles: CSP forbids inline style attributes). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Remove every child of `el` and append `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Local date and time of an ISO 8601 UTC stamp ("2025-03-01 10:15"), "-" when missing. */
export function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** "3 min ago" style age of an ISO stamp. */
export function ago(iso) {
  if (!iso) return "";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(s)) return "";
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** mm:ss of a number of seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

/** Percentage with no decimals ("82%"), "-" for null. */
export function pct(x) {
  return x === null || x === undefined || Number.isNaN(x) ? "-" : `${Math.round(100 * x)}%`;
}

/** Show a short message in the corner; kind "info" | "ok" | "error". Errors stay until closed. */
export function toast(message, kind = "info") {
  const host = document.getElementById("toasts");
  if (!host) return;
  const close = h("button.toast-close", { type: "button", "aria-label": "Close message" }, "\u00d7");
  const el = h("div.toast", { role: kind === "error" ? "alert" : "status", dataset: { kind } },
    h("span", {}, message), close);
  close.addEventListener("click", () => el.remove());
  host.append(el);
  if (kind !== "error") setTimeout(() => el.remove(), 5000);
}

/** Whether a key event's target is a text field (shortcuts must not fire while typing). */
export function isTyping(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  if (target.tagName !== "INPUT") return false;
  return !["checkbox", "radio", "range", "button", "submit"].includes(target.type);
}
