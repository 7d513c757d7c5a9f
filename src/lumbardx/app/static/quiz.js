// Teaching mode (#/teaching): a quiz over synthetic or labelled cases. The learner calls every
// listed level, sees the truth after answering, and gets sensitivity / specificity with 95%
// intervals at the end (computed by the server, docs/api.md "Teaching mode").
// The history lists the learner's quizzes with the cases answered and the levels called right;
// an unfinished quiz resumes at its next case, a finished one opens its review: the score, then
// every case with the call, the truth and right / wrong per level (GET .../review).

import { api } from "./api.js";
import { clock, h, isTyping, pct, replace, svg, toast, when } from "./dom.js";
import { classColour, className } from "./colours.js";

/** A class name with its colour swatch. */
function classChip(label, choices) {
  const sw = h("span.swatch", { "aria-hidden": "true" });
  sw.style.background = classColour(label, choices);   // CSSOM: allowed under the CSP
  return h("span.class-chip", {}, sw, className(label));
}

function interval(p) {
  if (!p || p.estimate === null || p.estimate === undefined) return h("span.muted", {}, "not measurable");
  return h("span", {}, h("strong.big.num", {}, pct(p.estimate)),
    h("span.num.ci", {}, ` 95% CI ${pct(p.ci_low)} \u2013 ${pct(p.ci_high)}`),
    h("span.num.muted", {}, ` (${p.successes}/${p.total})`));
}

/** Mount the teaching page into `root`; returns the unmount function. */
export function mountQuiz(root) {
  let stopped = false;
  let tick = null;
  let keyHandler = null;
  const cleanup = () => { clearInterval(tick); if (keyHandler) document.removeEventListener("keydown", keyHandler); keyHandler = null; };

  async function start() {
    cleanup();
    let sources = { synthetic: true, folders: [] };
    let sessions = [];
    try {
      [sources, { sessions }] = await Promise.all([api("GET", "/api/teaching/sources"), api("GET", "/api/teaching/sessions")]);
    } catch (e) { toast(`Teaching mode is unavailable: ${e.message}`, "error"); }
    if (stopped) return;
    const source = h("select", { id: "quiz-source" },
      sources.synthetic ? h("option", { value: "synthetic:" }, "Synthetic cases (exact truth)") : null,
      ...(sources.folders || []).map((f) => h("option", { value: `folder:${f}` }, `Labelled set: ${f}`)));
    const n = h("input", { type: "number", id: "quiz-n", min: 1, max: 50, value: 10 });
    const seed = h("input", { type: "number", id: "quiz-seed", placeholder: "random" });
    const go = h("button.primary", { type: "submit", id: "quiz-start" }, "Start quiz");
    const form = h("form.stack.quiz-start", { onsubmit: async (e) => {
      e.preventDefault();
      const [kind, folder] = source.value.split(/:(.*)/s);
      go.disabled = true;
      try {
        const s = await api("POST", "/api/teaching/sessions", { source: kind, folder: folder || null,
          n_cases: Math.min(50, Math.max(1, Number(n.value) || 10)), seed: seed.value === "" ? null : Number(seed.value) });
        showCase(s.session_id, 0, s.n_cases);
      } catch (err) { toast(`The quiz cannot start: ${err.message}`, "error"); go.disabled = false; }
    } },
    h("label", { for: "quiz-source" }, "Cases"), source,
    h("label", { for: "quiz-n" }, "Number of cases"), n,
    h("label", { for: "quiz-seed" }, "Seed (same seed, same cases)"), seed, go);
    const past = sessions.length ? h("table.compact.quiz-history", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Started"), h("th", {}, "Cases"), h("th", {}, "Answered"),
        h("th", { title: "Levels called exactly right, of the levels answered" }, "Levels right"), h("th", {}, ""))),
      h("tbody", {}, ...sessions.map((s) => {
        const finished = Boolean(s.finished);
        return h("tr", { dataset: { session: s.session_id, finished: String(finished) } },
          h("td.num", {}, when(s.created_at)),
          h("td", {}, s.source === "folder" ? `Labelled set ${s.folder}` : "Synthetic"),
          h("td.num.answered", {}, `${s.n_answered} of ${s.n_cases}`),
          h("td.num.right", {}, s.discs_answered ? `${s.discs_correct} of ${s.discs_answered}` : "-"),
          h("td", {}, finished
            ? h("button", { type: "button", title: "Your score and every answer against the truth",
              onclick: () => showReview(s.session_id) }, "Review")
            : h("button", { type: "button", title: `Go on at case ${s.n_answered + 1}`,
              onclick: () => resume(s.session_id) }, "Resume")));
      })))
      : h("p.muted", {}, "No quiz yet.");
    replace(root, h("section.quiz-page.narrow", {},
      h("h2", {}, "Teaching mode"),
      h("p.muted", {}, "Call every marked disc level as normal, herniation or spondylolisthesis. The truth is shown "
        + "after each case; at the end you get your sensitivity and specificity with 95% confidence intervals."),
      h("div.quiz-columns", {}, h("section.panel", {}, h("h3", {}, "New quiz"), form),
        h("section.panel", {}, h("h3", {}, "Your quizzes"), past))));
  }

  async function resume(sid) {
    try {
      const s = await api("GET", `/api/teaching/sessions/${sid}`);
      if (s.next_case === null || s.next_case === undefined) showReview(sid); else showCase(sid, s.next_case, s.n_cases);
    } catch (e) { toast(e.message, "error"); }
  }

  async function showCase(sid, i, total) {
    cleanup();
    let c;
    try { c = await api("GET", `/api/teaching/sessions/${sid}/cases/${i}`); } catch (e) { toast(e.message, "error"); return; }
    if (stopped) return;
    const calls = {};
    let active = 0;
    let answered = null;
    const started = Date.now();
    const timer = h("span.timer.num", { "aria-label": "Time on this case" }, "00:00");
    tick = setInterval(() => { timer.textContent = clock((Date.now() - started) / 1000); }, 500);

    const pic = svg("svg", { viewBox: `0 0 ${c.width} ${c.height}`, class: "quiz-image", role: "img",
      "aria-label": `Case ${i + 1} image with ${c.levels.length} marked levels` });
    const rows = h("div.quiz-levels");
    const submit = h("button.primary.wide", { type: "button", id: "quiz-submit" }, "Submit calls");
    const feedback = h("div.quiz-feedback", { "aria-live": "polite" });

    function draw() {
      const r = Math.max(3, c.width / 90);
      replace(pic, svg("image", { href: c.image_url, x: 0, y: 0, width: c.width, height: c.height }),
        ...c.levels.map((l, j) => svg("g", { class: `marker${j === active ? " active" : ""}`, dataset: { level: l.level } },
          answered ? svg("circle", { cx: l.centre[0], cy: l.centre[1], r: r * 1.9, class: "truth",
            stroke: classColour(answered.truth[l.level], c.choices) }) : null,
          svg("circle", { cx: l.centre[0], cy: l.centre[1], r, fill: calls[l.level] ? classColour(calls[l.level], c.choices) : "none" }),
          svg("text", { x: l.centre[0] - r * 2.2, y: l.centre[1], "text-anchor": "end", "dominant-baseline": "middle",
            "font-size": Math.max(9, c.width / 32) }, l.level))));
      replace(rows, ...c.levels.map((l, j) => {
        const truth = answered && answered.truth[l.level];
        const ok = answered && answered.correct[l.level];
        return h("div.quiz-level", { class: j === active ? "active" : null, dataset: { level: l.level },
          onclick: () => { active = j; draw(); } },
        h("strong.level-name", {}, l.level),
        h("div.segmented", { role: "group", "aria-label": `Call for ${l.level}` }, ...c.choices.map((ch, k) => h("button", {
          type: "button", disabled: Boolean(answered), "aria-pressed": String(calls[l.level] === ch), dataset: { choice: ch },
          title: `${className(ch)} (${k + 1})`,
          onclick: (e) => { e.stopPropagation(); calls[l.level] = ch; active = Math.min(c.levels.length - 1, j + 1); draw(); } },
        className(ch)))),
        answered ? h("span.verdict", { dataset: { correct: String(ok) } }, ok ? "\u2713 " : "\u2715 Truth: ", className(truth)) : null);
      }));
      submit.disabled = !answered && c.levels.some((l) => !calls[l.level]);
      submit.textContent = answered ? (i + 1 < total ? "Next case" : "See my score") : "Submit calls";
    }

    async function act() {
      if (answered) { if (i + 1 < total) showCase(sid, i + 1, total); else showReview(sid); return; }
      if (c.levels.some((l) => !calls[l.level])) return;
      submit.disabled = true;
      try {
        answered = await api("POST", `/api/teaching/sessions/${sid}/cases/${i}/answer`, { calls });
        clearInterval(tick);
        timer.textContent = clock(answered.seconds);
        const right = Object.values(answered.correct).filter(Boolean).length;
        replace(feedback, h("p", {}, `${right} of ${c.levels.length} levels called right in ${answered.seconds.toFixed(0)} s.`));
      } catch (e) { toast(`The answer was not recorded: ${e.message}`, "error"); }
      draw();
    }
    submit.addEventListener("click", act);
    keyHandler = (e) => {
      if (isTyping(e.target) || document.querySelector("dialog[open]")) return;
      if (e.key === "ArrowDown") { active = Math.min(c.levels.length - 1, active + 1); draw(); e.preventDefault(); }
      else if (e.key === "ArrowUp") { active = Math.max(0, active - 1); draw(); e.preventDefault(); }
      else if (/^[1-9]$/.test(e.key) && !answered && c.choices[Number(e.key) - 1] && c.levels[active]) {
        calls[c.levels[active].level] = c.choices[Number(e.key) - 1];
        active = Math.min(c.levels.length - 1, active + 1);
        draw();
      } else if (e.key === "Enter" && e.target.tagName !== "BUTTON") { act(); e.preventDefault(); }
    };
    document.addEventListener("keydown", keyHandler);
    replace(root, h("section.quiz-page", {},
      h("div.toolbar", {}, h("button", { type: "button", onclick: start }, "\u2190 Quizzes"),
        h("h2", {}, `Case ${i + 1} of ${total}`), h("progress", { max: total, value: i }), h("span.spacer"), timer),
      h("div.quiz-body", {}, h("div.quiz-stage", {}, pic),
        h("aside.quiz-side", {}, h("h3", {}, "Your call per level"), rows, submit, feedback,
          h("p.small.muted", {}, "Keys: \u2191 \u2193 choose the level, 1 2 3 call it, Enter submits.")))));
    draw();
  }

  /** A case of the review: the image with the levels (ring: truth, dot: your call) and the table. */
  function reviewCase(c, choices) {
    const r = Math.max(3, c.width / 90);
    const pic = svg("svg", { viewBox: `0 0 ${c.width} ${c.height}`, class: "quiz-image review-image", role: "img",
      "aria-label": `Case ${c.case + 1}: rings show the truth, dots your calls` },
    svg("image", { href: c.image_url, x: 0, y: 0, width: c.width, height: c.height }),
    ...c.levels.map((l) => svg("g", { class: "marker", dataset: { level: l.level } },
      svg("circle", { cx: l.centre[0], cy: l.centre[1], r: r * 1.9, class: "truth", stroke: classColour(l.truth, choices) }),
      svg("circle", { cx: l.centre[0], cy: l.centre[1], r, fill: classColour(l.call, choices) }),
      svg("text", { x: l.centre[0] - r * 2.2, y: l.centre[1], "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": Math.max(9, c.width / 32) }, l.level))));
    const time = c.seconds === null || c.seconds === undefined ? "" : ` \u00b7 ${c.seconds.toFixed(0)} s`;
    return h("article.review-case", { dataset: { case: c.case } },
      h("div.review-thumb", {}, pic),
      h("div.review-detail", {},
        h("h4", {}, `Case ${c.case + 1}`, h("span.case-tally.muted", {}, ` ${c.correct} of ${c.discs} right${time}`)),
        h("table.compact.review-levels", {},
          h("thead", {}, h("tr", {}, ...["Level", "Your call", "Truth", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...c.levels.map((l) => h("tr", { dataset: { level: l.level, correct: String(l.correct) } },
            h("th", {}, l.level),
            h("td.call", { dataset: { label: l.call } }, classChip(l.call, choices)),
            h("td.truth", { dataset: { label: l.truth } }, classChip(l.truth, choices)),
            h("td.verdict", { dataset: { correct: String(l.correct) } }, l.correct ? "\u2713 right" : "\u2715 wrong")))))));
  }

  /** The score and the review of the answers (every answered case; a finished quiz's end page). */
  async function showReview(sid) {
    cleanup();
    let r;
    let s = null;
    try {
      r = await api("GET", `/api/teaching/sessions/${sid}/review`);
      if (r.cases.length) s = await api("GET", `/api/teaching/sessions/${sid}/score`);
    } catch (e) { toast(e.message, "error"); return; }
    if (stopped) return;
    const choices = r.choices || [];
    const perFinding = (r.per_finding || []).map((f) => `${className(f.finding)} ${f.correct} of ${f.discs}`).join(" \u00b7 ");
    replace(root, h("section.quiz-page.narrow.quiz-score", {},
      h("div.toolbar", {}, h("button", { type: "button", onclick: start }, "\u2190 Quizzes"),
        h("h2", {}, r.finished ? "Your score" : "Your score so far"),
        r.finished ? null : h("span.spacer"),
        r.finished ? null : h("button.primary", { type: "button", id: "quiz-resume", onclick: () => resume(sid) },
          `Resume at case ${r.cases_answered + 1} of ${r.n_cases}`)),
      s ? [
        h("p.muted", {}, `${s.cases_answered} case${s.cases_answered === 1 ? "" : "s"}, ${s.discs} discs (${s.positive_discs} with a finding, ${s.negative_discs} normal).`
          + (s.timed_cases ? ` Mean time per case ${s.mean_seconds_per_case.toFixed(0)} s.` : "")),
        h("dl.score-grid", {},
          h("dt", {}, "Sensitivity", h("span.muted.small", {}, " (discs with a finding called abnormal)")), h("dd", { id: "score-sensitivity" }, interval(s.sensitivity)),
          h("dt", {}, "Specificity", h("span.muted.small", {}, " (normal discs called normal)")), h("dd", { id: "score-specificity" }, interval(s.specificity)),
          h("dt", {}, "Accuracy"), h("dd", {}, interval(s.accuracy)),
          h("dt", {}, "Exact class agreement"), h("dd", {}, interval(s.exact_agreement))),
        (s.per_finding || []).length ? h("table.compact", {},
          h("thead", {}, h("tr", {}, ...["Finding", "Discs", "Called abnormal", "Called exactly"].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...s.per_finding.map((f) => h("tr", {}, h("td", {}, className(f.finding)), h("td.num", {}, String(f.discs)),
            h("td", {}, interval(f.detected)), h("td", {}, interval(f.exact)))))) : null,
        h("p.small.muted", {}, "Wilson 95% confidence intervals. Discs of one case are not independent, so treat the intervals as approximate."),
      ] : h("p.muted", {}, "No case answered yet."),
      r.cases.length ? h("section.quiz-review", { "aria-labelledby": "review-title" },
        h("h3", { id: "review-title" }, "Your answers"),
        h("p", { id: "review-tally" }, h("strong.num", {}, `${r.discs_correct} of ${r.discs}`), " levels called right",
          perFinding ? h("span.muted", {}, ` (${perFinding})`) : null),
        h("div.review-cases", {}, ...r.cases.map((c) => reviewCase(c, choices)))) : null));
  }

  start();
  return () => { stopped = true; cleanup(); };
}
