// Page shell: session, top bar, sign-out, shortcut help and the hash router
// (#/ worklist, #/study/<study_key> viewer, #/teaching quiz).
// Each view module exports mount(container, params) and returns an unmount function.

import { api, setCsrfToken, setSigningOut, toLogin } from "./api.js";
import { h, isTyping, replace, toast } from "./dom.js";
import { mountWorklist } from "./worklist.js";
import { mountStudy } from "./study.js";
import { mountQuiz } from "./quiz.js";

const main = document.getElementById("main");
let unmount = null;

const ROUTES = [
  { re: /^#?\/?$/, nav: "worklist", mount: (el) => mountWorklist(el) },
  { re: /^#\/study\/([0-9a-fA-F]{16})$/, nav: "worklist", mount: (el, m) => mountStudy(el, m[1]) },
  { re: /^#\/teaching$/, nav: "teaching", mount: (el) => mountQuiz(el) },
];

function route() {
  const hash = window.location.hash || "#/";
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } unmount = null; }
  for (const r of ROUTES) {
    const m = hash.match(r.re);
    if (!m) continue;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.toggleAttribute("aria-current", a.dataset.nav === r.nav);
    }
    main.replaceChildren();
    unmount = r.mount(main, m) || null;
    return;
  }
  replace(main, h("section.empty-state", {},
    h("h2", {}, "Page not found"), h("p", {}, h("a", { href: "#/" }, "Back to the worklist"))));
}

async function signOut() {
  setSigningOut(true);  // a poll answered 401 meanwhile must not say "session ended"
  try { await api("POST", "/api/auth/logout"); } catch (e) {
    if (e.status !== 401) {
      setSigningOut(false);
      toast(`Sign-out failed: ${e.message}`, "error");
      return;
    }
  }
  toLogin("signedout");
}

async function start() {
  let info;
  try {
    info = await api("GET", "/api/auth/session");
  } catch (e) {
    if (e.status !== 401) replace(main, h("p.form-message", { role: "alert" }, e.message));
    return;
  }
  setCsrfToken(info.csrf_token);
  replace(document.getElementById("who"), h("span.user", {}, info.user),
    h("span.role", {}, info.role));
  // The buttons stay disabled (index.html) until the session and its CSRF token are known:
  // a click before that would otherwise be lost.
  const logout = document.getElementById("logout-button");
  logout.addEventListener("click", signOut);
  logout.disabled = false;
  const help = document.getElementById("help-dialog");
  const helpButton = document.getElementById("help-button");
  helpButton.addEventListener("click", () => help.showModal());
  helpButton.disabled = false;
  document.addEventListener("keydown", (e) => {
    if (e.key === "?" && !isTyping(e.target) && !help.open) { e.preventDefault(); help.showModal(); }
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
