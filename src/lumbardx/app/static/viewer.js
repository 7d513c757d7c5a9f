// The slice on a <canvas>, with zoom, pan and window/level.
//
// Coordinates: image pixels use the lumbardx box convention (0-based continuous corners; the
// whole image is [0, 0, width, height]); screen coordinates are CSS pixels relative to the stage.
// screen = image * scale + offset, the same for x and y (square pixels on screen; the analysed
// image is already resampled to its display grid by the server).
//
// Window/level: the server windows the stored pixel values at full bit depth
// (GET /api/studies/{key}/image.png?center=&width=, docs/api.md); this view only asks for the
// newest window and swaps the image in when it has arrived, so dragging stays smooth.

const MIN_SCALE = 0.05;
const MAX_SCALE = 40;

export class SliceView {
  /**
   * @param {HTMLElement} stage positioned container; receives the canvas.
   * @param {string} imageUrl base URL of the windowed PNG (no query).
   * @param {number} width analysed image width in pixels.
   * @param {number} height analysed image height in pixels.
   */
  constructor(stage, imageUrl, width, height) {
    this.stage = stage;
    this.imageUrl = imageUrl;
    this.iw = width;
    this.ih = height;
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.userMoved = false;
    this.window = null;            // {center, width} or null for the display image
    this.image = null;             // HTMLImageElement currently drawn
    this.listeners = new Set();
    this.wanted = null;            // newest window asked for
    this.loading = false;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "slice-canvas";
    this.canvas.setAttribute("aria-label", "Analysed MRI slice");
    this.canvas.setAttribute("role", "img");
    stage.prepend(this.canvas);
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(stage);
    this.resize();
  }

  /** Call `fn()` after each redraw (the overlay redraws itself then). */
  onChange(fn) { this.listeners.add(fn); }

  destroy() { this.resizeObserver.disconnect(); this.listeners.clear(); }

  /** Stage size in CSS pixels. */
  size() { return [this.stage.clientWidth, this.stage.clientHeight]; }

  resize() {
    const [w, h] = this.size();
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(w * dpr));
    this.canvas.height = Math.max(1, Math.round(h * dpr));
    this.canvas.style.width = `${w}px`;      // CSSOM, allowed under the page's CSP
    this.canvas.style.height = `${h}px`;
    if (!this.userMoved) this.fit(false);
    this.draw();
  }

  /** Fit the whole image in the stage with a small margin. */
  fit(redraw = true) {
    const [w, h] = this.size();
    if (w < 2 || h < 2) return;
    this.scale = Math.min(w / this.iw, h / this.ih) * 0.96;
    this.tx = (w - this.iw * this.scale) / 2;
    this.ty = (h - this.ih * this.scale) / 2;
    this.userMoved = false;
    if (redraw) this.draw();
  }

  /** Image pixel coordinates of a stage point. @returns {[number, number]} */
  toImage(sx, sy) { return [(sx - this.tx) / this.scale, (sy - this.ty) / this.scale]; }

  /** Stage coordinates of an image point. @returns {[number, number]} */
  toScreen(x, y) { return [x * this.scale + this.tx, y * this.scale + this.ty]; }

  /** Zoom by `factor` keeping the stage point (sx, sy) fixed (default: the stage centre). */
  zoomBy(factor, sx, sy) {
    const [w, h] = this.size();
    if (sx === undefined) { sx = w / 2; sy = h / 2; }
    const next = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * factor));
    const [ix, iy] = this.toImage(sx, sy);
    this.scale = next;
    this.tx = sx - ix * next;
    this.ty = sy - iy * next;
    this.userMoved = true;
    this.draw();
  }

  panBy(dx, dy) { this.tx += dx; this.ty += dy; this.userMoved = true; this.draw(); }

  /** Load the slice for `win` ({center, width}, or null for the analysed display image). */
  setWindow(win) {
    this.window = win;
    this.wanted = win;
    if (!this.loading) this.fetchWanted();
  }

  /**
   * Show another slice on the same pixel grid (another slice of the series, or the other
   * sequence resampled onto the analysed grid by the server): zoom and pan are kept.
   * @param {string} imageUrl URL of the PNG (the window is added to its query).
   * @param {({center:number,width:number}|null)} win window for it (null: its display image).
   */
  setSource(imageUrl, win = null) {
    this.imageUrl = imageUrl;
    this.setWindow(win);
  }

  /** Resolves when the first image is on screen; rejects when it cannot be loaded. */
  load() {
    return new Promise((resolve, reject) => {
      this.firstLoad = { resolve, reject };
      this.setWindow(this.window);
    });
  }

  fetchWanted() {
    const win = this.wanted;
    this.wanted = undefined;
    const url = win ? `${this.imageUrl}${this.imageUrl.includes("?") ? "&" : "?"}center=${win.center.toFixed(2)}&width=${Math.max(1e-3, win.width).toFixed(2)}`
      : this.imageUrl;
    const img = new Image();
    this.loading = true;
    img.onload = () => {
      this.loading = false;
      this.image = img;
      this.canvas.dataset.src = url;   // which slice and window is on screen (tests read it)
      this.draw();
      if (this.firstLoad) { this.firstLoad.resolve(); this.firstLoad = null; }
      if (this.wanted !== undefined) this.fetchWanted();
    };
    img.onerror = () => {
      this.loading = false;
      if (this.firstLoad) { this.firstLoad.reject(new Error("the image could not be loaded")); this.firstLoad = null; }
      if (this.wanted !== undefined) this.fetchWanted();
    };
    img.src = url;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (this.image) {
      ctx.setTransform(dpr * this.scale, 0, 0, dpr * this.scale, dpr * this.tx, dpr * this.ty);
      // Smooth when shown at about native size or smaller; crisp pixels when zoomed well in.
      ctx.imageSmoothingEnabled = this.scale < 3;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(this.image, 0, 0, this.iw, this.ih);
    }
    for (const fn of this.listeners) fn();
  }
}

/**
 * Window presets for MR (no Hounsfield scale: presets are relative to the study's own window).
 * @param {{center: number, width: number}} base the study's default window.
 * @param {[number, number]} range lowest and highest stored pixel value.
 * @returns {Array<{id: string, label: string, window: ({center:number,width:number}|null)}>}
 */
export function windowPresets(base, range) {
  const [lo, hi] = range;
  return [
    { id: "analysed", label: "As analysed", window: null },
    { id: "default", label: "Default window", window: { ...base } },
    { id: "full", label: "Full range", window: { center: (lo + hi) / 2, width: Math.max(1, hi - lo) } },
    { id: "contrast", label: "High contrast", window: { center: base.center, width: base.width * 0.6 } },
    { id: "soft", label: "Low contrast", window: { center: base.center, width: base.width * 1.5 } },
    { id: "bright", label: "Brighter (fluid)", window: { center: base.center - base.width * 0.15, width: base.width } },
  ];
}
