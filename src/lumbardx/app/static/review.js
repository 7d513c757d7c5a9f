// Corrections of one study: the review object (docs/api.md, "Corrections") and a save queue.
//
// Changes show at once (optimistic) and are sent one at a time in order; the page shows
// "saving", "saved" or "not saved" with a retry. A box drawn but not yet stored has a
// temporary id ("new1") that later changes are mapped onto once the server has named it.

import { api } from "./api.js";

export class ReviewStore {
  /**
   * @param {string} key study_key.
   * @param {object} review the review object from GET /api/studies/{key}.
   * @param {() => void} onChange called after every local or server change.
   */
  constructor(key, review, onChange) {
    this.key = key;
    this.review = review;
    this.onChange = onChange;
    this.queue = [];           // [{describe, run: async () => review}]
    this.running = false;
    this.state = "saved";      // "saved" | "saving" | "error"
    this.error = null;
    this.savedAt = review.updated_at ? new Date(review.updated_at) : null;
    this.tempIds = new Map();  // temporary id -> server id
    this.nextTemp = 1;
  }

  get boxes() { return this.review.boxes; }
  get classes() { return this.review.classes; }
  get complete() { return this.review.state === "complete"; }
  get dirty() { return this.queue.length > 0 || this.running || this.state === "error"; }

  box(id) { return this.review.boxes.find((b) => b.id === id) || null; }

  base() { return `/api/studies/${this.key}/review`; }

  realId(id) { return this.tempIds.get(id) || id; }

  enqueue(describe, run) {
    this.queue.push({ describe, run });
    this.onChange();
    this.pump();
  }

  async pump() {
    if (this.running || this.state === "error") return;
    this.running = true;
    this.state = "saving";
    this.onChange();
    while (this.queue.length) {
      const op = this.queue[0];
      try {
        const review = await op.run();
        this.queue.shift();
        if (!this.queue.length && review) this.review = review;
      } catch (e) {
        this.state = "error";
        this.error = `${op.describe}: ${e.message}`;
        this.running = false;
        this.onChange();
        return;
      }
    }
    this.running = false;
    this.state = "saved";
    this.error = null;
    this.savedAt = new Date();
    this.onChange();
  }

  /** Send the failed change and the rest again. */
  retry() { this.state = "saving"; this.error = null; this.running = false; this.pump(); }

  /** Drop unsent changes and reload the review from the server. */
  async discard() {
    this.queue = [];
    const body = await api("GET", `/api/studies/${this.key}`);
    this.review = body.review;
    this.state = "saved";
    this.error = null;
    this.onChange();
  }

  setDecision(id, decision) {
    const b = this.box(id);
    if (!b) return;
    b.decision = decision;
    const verb = decision === "accepted" ? "accept" : "reject";
    this.enqueue(`${verb} ${b.level || "box"}`, () => api("POST", `${this.base()}/boxes/${this.realId(id)}/${verb}`));
  }

  accept(id) { this.setDecision(id, "accepted"); }

  reject(id) { this.setDecision(id, "rejected"); }

  /** Move edges and/or change class. @param {{box?: number[], label?: string}} change */
  edit(id, change) {
    const b = this.box(id);
    if (!b) return;
    if (change.box) b.box = change.box.slice();
    if (change.label) b.label = change.label;
    if (b.decision !== "added") b.decision = "edited";
    const what = change.label ? `change class of ${b.level || "box"}` : `move edges of ${b.level || "box"}`;
    this.enqueue(what, () => api("PATCH", `${this.base()}/boxes/${this.realId(id)}`, change));
  }

  /** Add a reader box; returns its (temporary) id. */
  add(label, box) {
    const temp = `new${this.nextTemp++}`;
    this.review.boxes.push({ id: temp, label, box: box.slice(), score: null, origin: "reader",
      decision: "added", level: null });
    this.enqueue("add a box", async () => {
      const before = new Set(this.review.boxes.map((b) => this.realId(b.id)));
      const review = await api("POST", `${this.base()}/boxes`, { label, box });
      const created = review.boxes.find((b) => b.origin === "reader" && !before.has(b.id));
      if (created) {
        this.tempIds.set(temp, created.id);
        const local = this.box(temp);
        if (local) local.id = created.id;
        this.onRename && this.onRename(temp, created.id);
      }
      return review;
    });
    return temp;
  }

  /** Delete a reader box (model boxes are rejected instead). */
  remove(id) {
    const b = this.box(id);
    if (!b || b.origin !== "reader") return;
    this.review.boxes = this.review.boxes.filter((x) => x !== b);
    this.enqueue("delete a box", () => api("DELETE", `${this.base()}/boxes/${this.realId(id)}`));
  }

  /** Mark the review complete (after the queue has drained). */
  completeReview(acceptPending) {
    return new Promise((resolve, reject) => {
      this.enqueue("complete the review", async () => {
        try {
          const review = await api("POST", `${this.base()}/complete`, { accept_pending: acceptPending });
          resolve(review);
          return review;
        } catch (e) {
          if (e.status === 409) { reject(e); return null; }   // not a save failure: report it
          throw e;
        }
      });
    });
  }
}
