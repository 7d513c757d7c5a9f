"""The overlay a reader looks at first: the analysed slice with boxes, levels and findings.

Drawing conventions:

* Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), distinct
  for the common colour-vision deficiencies: normal = bluish green, herniation = vermillion,
  spondylolisthesis = reddish purple; further classes take sky blue, yellow, orange, blue
  (:func:`class_colours`).
* Each box is drawn in its class colour over a black outline, so it shows on bright and dark
  tissue alike. All text is drawn with a black outline (halo).
* Level names (``"L4-L5"``, ``"L4-L5?"`` when the name is uncertain) stand on one side of the
  spine, finding name, confidence and severity estimate on the other (the side with more room,
  normally anterior). Labels pushed apart to avoid overlap get a leader line to their disc.
* Boxes set aside as off the spine curve are drawn dashed.
* A band below the image holds the legend and the footer
  ``lumbardx <version> - <model> - decision support, not a diagnosis``.

Small images are enlarged by an integer factor (384 px -> 768 px) so that text stays legible.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from lumbardx import __version__
from lumbardx.clinical.findings import HERNIATION, NORMAL, SLIP, DiscFindings, SpineFindings
from lumbardx.data.boxes import Box
from lumbardx.data.classes import STUDY_ALIASES
from lumbardx.io import atomic_write_bytes
from lumbardx.report.fonts import Font, line_height, load_font, text_size

if TYPE_CHECKING:
    from lumbardx.study import Study

RGB = tuple[int, int, int]

#: Okabe-Ito palette (sRGB 0-255).
OKABE_ITO: dict[str, RGB] = {
    "black": (0, 0, 0), "orange": (230, 159, 0), "sky blue": (86, 180, 233),
    "bluish green": (0, 158, 115), "yellow": (240, 228, 66), "blue": (0, 114, 178),
    "vermillion": (213, 94, 0), "reddish purple": (204, 121, 167),
}
CLASS_COLOURS: dict[str, RGB] = {
    NORMAL: OKABE_ITO["bluish green"],
    HERNIATION: OKABE_ITO["vermillion"],
    SLIP: OKABE_ITO["reddish purple"],
}
#: Colours of further classes, in order of first use (colours of absent study classes last).
EXTRA_ORDER: tuple[str, ...] = ("sky blue", "yellow", "orange", "blue", "bluish green",
                                "vermillion", "reddish purple")
STUDY_ORDER: tuple[str, ...] = (NORMAL, HERNIATION, SLIP)
#: Width in pixels the enlarged image should reach (smaller images are enlarged to it).
TARGET_SIZE = 768
MAX_SCALE = 4
FOOTER_BG: RGB = (20, 20, 20)
TEXT_LIGHT: RGB = (235, 235, 235)
FOOTER_SUFFIX = "decision support, not a diagnosis"


def class_colours(labels: Iterable[str]) -> dict[str, RGB]:
    """Colour of each class in ``labels`` (first appearance order matters).

    The study's classes have fixed colours (:data:`CLASS_COLOURS`); a source name that is an
    alias of one (``"Normal IVD"``, :data:`lumbardx.data.classes.STUDY_ALIASES`) takes that
    colour while it is free; other classes take the next unused colour of :data:`EXTRA_ORDER`,
    so up to seven classes get seven distinct colours (more cycle).
    """
    out: dict[str, RGB] = {}
    uniq = list(dict.fromkeys(labels))
    used = {CLASS_COLOURS[lab] for lab in uniq if lab in CLASS_COLOURS}
    free = [OKABE_ITO[k] for k in EXTRA_ORDER if OKABE_ITO[k] not in used]
    n_extra = 0
    for lab in uniq:
        alias = STUDY_ALIASES.get(lab.strip().lower())
        if lab in CLASS_COLOURS:
            out[lab] = CLASS_COLOURS[lab]
        elif alias is not None and CLASS_COLOURS[alias] in free:
            out[lab] = CLASS_COLOURS[alias]
            free.remove(out[lab])
            used.add(out[lab])
        elif free:
            out[lab] = free.pop(0)
            used.add(out[lab])
        else:
            out[lab] = OKABE_ITO[EXTRA_ORDER[n_extra % len(EXTRA_ORDER)]]
            n_extra += 1
    return out


def text_colour(colour: RGB) -> RGB:
    """``colour`` lightened for text on dark images when its relative luminance is below 0.2
    (Okabe-Ito blue); other colours unchanged."""
    lum = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
    if lum >= 0.2 * 255:
        return colour
    return (round(colour[0] + (255 - colour[0]) * 0.3), round(colour[1] + (255 - colour[1]) * 0.3),
            round(colour[2] + (255 - colour[2]) * 0.3))


def level_label(disc: DiscFindings) -> str:
    """The level as shown to readers: ``"L4-L5"``, or ``"L4-L5?"`` when uncertain."""
    return f"{disc.level}?" if disc.level_uncertain else disc.level


def slip_text(disc: DiscFindings, long: bool = False) -> str | None:
    """``"slip ~18% (grade I, est.)"`` (``long``: ``"slip ~18% (Meyerding grade I)"``), or
    ``None`` without a slip estimate. A negative percent is a retrolisthesis."""
    if disc.slip_percent is None:
        return None
    p = float(disc.slip_percent)
    name = "retrolisthesis" if p < 0 else "slip"
    grade = disc.meyerding_grade
    if long:
        return f"{name} ~{abs(p):.0f}%" + (f" (Meyerding grade {grade})" if grade else "")
    return f"{name} ~{abs(p):.0f}%" + (f" (grade {grade}, est.)" if grade else " (est.)")


def extent_text(disc: DiscFindings, long: bool = False) -> str | None:
    """``"post. extent 4.1 mm (est.)"`` (``long``: ``"posterior extent 4.1 mm"``), or ``None``."""
    if disc.herniation_extent_mm is None:
        return None
    x = float(disc.herniation_extent_mm)
    return f"posterior extent {x:.1f} mm" if long else f"post. extent {x:.1f} mm (est.)"


def auto_scale(height: int, width: int, target: int = TARGET_SIZE) -> int:
    """Integer enlargement making the longer side reach ``target`` px (1 to :data:`MAX_SCALE`)."""
    return int(min(MAX_SCALE, max(1, math.ceil(target / max(1, height, width)))))


@dataclass
class _Label:
    lines: list[tuple[str, RGB, Font]]
    y: float  # desired vertical centre, output pixels
    x: float  # anchor: right edge (anterior side) or left edge (other side), output pixels
    target: tuple[float, float]  # leader-line end on the disc, output pixels
    w: int = 0
    h: int = 0
    top: float = 0.0


def _disc_boxes(disc: DiscFindings) -> list[tuple[str, Box]]:
    """Boxes to draw for a disc: every finding; ``normal`` only when it is the status."""
    return [(f.label, f.box) for f in disc.findings
            if f.label != NORMAL or disc.status == NORMAL]


def _finding_lines(disc: DiscFindings, colours: dict[str, RGB], show_scores: bool,
                   fs: int) -> list[tuple[str, RGB, Font]]:
    bold, regular, small = load_font(fs, True), load_font(fs), load_font(max(8, round(fs * 0.85)))
    lines: list[tuple[str, RGB, Font]] = []
    for lab, _ in _disc_boxes(disc):
        f = next(x for x in disc.findings if x.label == lab)
        text = lab if not show_scores or f.score is None else f"{lab} {f.score:.2f}"
        lines.append((text, text_colour(colours[lab]), regular if lab == NORMAL else bold))
        extra = slip_text(disc) if lab == SLIP else extent_text(disc) if lab == HERNIATION else None
        if extra:
            lines.append((extra, TEXT_LIGHT, small))
    for lab, extra in ((SLIP, slip_text(disc)), (HERNIATION, extent_text(disc))):
        if extra and not disc.has(lab):  # an estimate without its finding: still shown
            lines.append((extra, TEXT_LIGHT, small))
    return lines


def _spread(labels: list[_Label], height: int, gap: int) -> None:
    """Set ``top`` of each label near its desired centre without overlaps, inside ``height``."""
    labels.sort(key=lambda lb: lb.y)
    prev = -math.inf
    for lb in labels:
        lb.top = max(lb.y - lb.h / 2, prev + gap, 0.0)
        prev = lb.top + lb.h
    nxt = math.inf
    for lb in reversed(labels):
        lb.top = min(lb.top, nxt - gap - lb.h, height - lb.h)
        nxt = lb.top
    for lb in labels:
        lb.top = max(lb.top, 0.0)


def _draw_label(draw: ImageDraw.ImageDraw, lb: _Label, right_aligned: bool, stroke: int,
                lead: int) -> None:
    shifted = abs(lb.top + lb.h / 2 - lb.y) > lb.h * 0.35 or abs(lb.x - lb.target[0]) > lb.h
    x0 = lb.x - lb.w if right_aligned else lb.x
    if shifted:
        start = (lb.x, lb.top + lb.h / 2)  # the label's edge facing the disc
        draw.line([start, lb.target], fill=(0, 0, 0), width=3)
        draw.line([start, lb.target], fill=TEXT_LIGHT, width=1)
    y = lb.top
    for text, colour, font in lb.lines:
        w = text_size(font, text, stroke)[0]
        x = x0 + (lb.w - w if right_aligned else 0)
        draw.text((x, y + stroke), text, font=font, fill=colour, stroke_width=stroke,
                  stroke_fill=(0, 0, 0))
        y += line_height(font, stroke) + lead


#: Opacity of the dark plate behind each label: text keeps >= 3:1 contrast over white canal
#: (the plate alone is then ~46 grey) and over dark bone alike.
PLATE_ALPHA = 0.82


def _plate(lb: _Label, right_aligned: bool, pad: int) -> tuple[int, int, int, int]:
    """The label's plate ``(x1, y1, x2, y2)`` pixels: its text block grown by ``pad``."""
    x0 = lb.x - lb.w if right_aligned else lb.x
    return (int(x0 - pad), int(lb.top - pad), int(x0 + lb.w + pad),
            int(lb.top + lb.h + pad))


def _with_plates(base: Image.Image, plates: Sequence[tuple[int, int, int, int]],
                 radius: int) -> Image.Image:
    """``base`` with a translucent dark plate (:data:`PLATE_ALPHA`) under each label, so that
    label text reads over the bright canal and the dark bone; the anatomy stays faintly
    visible under it."""
    if not plates:
        return base
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    pd = ImageDraw.Draw(layer)
    for xyxy in plates:
        pd.rounded_rectangle(xyxy, radius=radius, fill=(0, 0, 0, round(255 * PLATE_ALPHA)))
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


def _block_size(lines: Sequence[tuple[str, RGB, Font]], stroke: int, lead: int) -> tuple[int, int]:
    """``(width, height)`` px of stacked text lines drawn by :func:`_draw_label`."""
    width = max(text_size(f, t, stroke)[0] for t, _, f in lines)
    return width, sum(line_height(f, stroke) for _, _, f in lines) + lead * (len(lines) - 1)


def _rect(draw: ImageDraw.ImageDraw, xyxy: Sequence[float], colour: RGB, width: int,
          dashed: bool = False) -> None:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    if not dashed:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(0, 0, 0), width=width + 2)
        draw.rectangle([x1 + 1, y1 + 1, x2 - 2, y2 - 2], outline=colour, width=width)
        return
    dash = 3 * width + 3
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)),
                 ((x1, y2), (x1, y1))):
        n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // dash))
        for i in range(0, n, 2):
            p = (a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n)
            q = (a[0] + (b[0] - a[0]) * (i + 1) / n, a[1] + (b[1] - a[1]) * (i + 1) / n)
            draw.line([p, q], fill=colour, width=width)


def _fit(text: str, width: int, size: int, bold: bool = False) -> Font:
    """The largest font up to ``size`` px in which ``text`` fits ``width`` px (8 px at least)."""
    while size > 8 and text_size(load_font(size, bold), text)[0] > width:
        size -= 1
    return load_font(size, bold)


def _band(width: int, fs: int, colours: dict[str, RGB], notes: list[str],
          footer: str) -> Image.Image:
    """Legend (wrapped to ``width``) and footer line on a dark band ``[h, width]``."""
    font = load_font(max(8, round(fs * 0.85)))
    pad, sw = max(4, fs // 2), max(8, fs)
    items: list[tuple[RGB | None, str]] = [(c, lab) for lab, c in colours.items()]
    items += [(None, n) for n in notes]
    rows: list[list[tuple[RGB | None, str, int]]] = [[]]
    x = pad
    for colour, text in items:
        w = text_size(font, text)[0] + (sw + pad // 2 if colour else 0)
        if rows[-1] and x + w > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((colour, text, w))
        x += w + 2 * pad
    line_h = max(text_size(font, "Ag")[1], sw) + pad // 2
    ffont = _fit(footer, width - 2 * pad, max(8, round(fs * 0.8)))
    fh = text_size(ffont, "Ag")[1]
    band = Image.new("RGB", (width, pad + len(rows) * line_h + fh + 2 * pad), FOOTER_BG)
    draw = ImageDraw.Draw(band)
    y = pad
    for row in rows:
        x = pad
        for colour, text, w in row:
            tx = x
            if colour is not None:
                draw.rectangle([x, y + 1, x + sw - 1, y + sw], outline=colour,
                               width=max(2, fs // 8))
                tx = x + sw + pad // 2
            draw.text((tx, y), text, font=font, fill=TEXT_LIGHT)
            x += w + 2 * pad
        y += line_h
    draw.line([(pad, y + pad // 2), (width - pad, y + pad // 2)], fill=(90, 90, 90), width=1)
    draw.text((pad, y + pad), footer, font=ffont, fill=(200, 200, 200))
    return band


def footer_text(model: str | None = None) -> str:
    """``"lumbardx <version> - <model> - decision support, not a diagnosis"``."""
    parts = [f"lumbardx {__version__}", *([model] if model else []), FOOTER_SUFFIX]
    return " - ".join(parts)


def render_overlay(image: np.ndarray, findings: SpineFindings, *, scale: int | None = None,
                   show_scores: bool = True, model: str | None = None,
                   classes: Sequence[str] = ()) -> np.ndarray:
    """Draw the findings on the slice.

    Args:
        image: uint8 ``[H, W]`` display image (or ``[H, W, 3]`` RGB) the boxes refer to.
        findings: discs with boxes in pixels of ``image`` (:mod:`lumbardx.data.boxes`).
        scale: integer enlargement; ``None`` picks one with :func:`auto_scale` (384 -> 2).
        show_scores: print each finding's confidence (ground truth has none).
        model: detector name for the footer.
        classes: the detector's class names, listed in the legend in this order (default: the
            study's three classes when every label is one of them, else the labels found).

    Returns:
        uint8 ``[H * scale + band, W * scale, 3]`` RGB: the enlarged slice with boxes and labels,
        and below it a band of ``band`` rows (depends on the width) with legend and footer.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must be uint8 [H, W] or [H, W, 3], got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    k = auto_scale(h, w) if scale is None else int(scale)
    if k < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    W, H = w * k, h * k
    base = Image.fromarray(img).convert("RGB").resize((W, H), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    fs = int(min(40, max(12, round(0.021 * max(W, H)))))
    stroke, lead, lw = max(2, fs // 7), max(1, fs // 8), max(2, round(fs / 7))
    discs = findings.discs
    labels_used = [lab for d in discs for lab, _ in _disc_boxes(d)]
    labels_used += [b.label for b in findings.off_spine]
    if not classes:
        classes = STUDY_ORDER if set(labels_used) <= set(STUDY_ORDER) else ()
    colours = class_colours([*classes, *labels_used])

    for b in findings.off_spine:
        _rect(draw, [v * k for v in b.xyxy()], colours[b.label], max(1, lw - 1), dashed=True)
    for d in sorted(discs, key=lambda d: d.status != NORMAL):
        for lab, b in sorted(_disc_boxes(d), key=lambda x: x[0] == d.status):
            _rect(draw, [v * k for v in b.xyxy()], colours[lab], lw)

    if discs:
        x1s = [min(b.x1 for _, b in _disc_boxes(d)) * k for d in discs]
        x2s = [max(b.x2 for _, b in _disc_boxes(d)) * k for d in discs]
        findings_left = min(x1s) >= W - max(x2s)  # findings on the roomier side
        gap = max(4, fs // 2)
        flabels, llabels = [], []
        for d, a, b in zip(discs, x1s, x2s):
            cy = d.centre[1] * k
            near, far = (a, b) if findings_left else (b, a)
            fl = _Label(_finding_lines(d, colours, show_scores, fs), cy,
                        near - gap if findings_left else near + gap, (near, cy))
            ll = _Label([(level_label(d), (255, 255, 255), load_font(fs, True))], cy,
                        far + gap if findings_left else far - gap, (far, cy))
            for lb in (fl, ll):
                lb.w, lb.h = _block_size(lb.lines, stroke, lead)
            flabels.append(fl)
            llabels.append(ll)
        drawn = [[v * k for v in b.xyxy()] for d in discs for _, b in _disc_boxes(d)]
        placed: list[tuple[_Label, bool]] = []
        for group, right in ((flabels, findings_left), (llabels, not findings_left)):
            _spread(group, H, max(2, fs // 5))
            for lb in group:
                # Keep clear of any box level with the label (e.g. the neighbour's slip box).
                level = [b for b in drawn if b[1] < lb.top + lb.h and b[3] > lb.top]
                if level:
                    lb.x = (min(lb.x, min(b[0] for b in level) - gap) if right
                            else max(lb.x, max(b[2] for b in level) + gap))
                lb.x = min(max(lb.x, lb.w + 2), W - 2) if right else min(max(lb.x, 2), W - lb.w - 2)
                placed.append((lb, right))
        pad = max(2, stroke)
        base = _with_plates(base, [_plate(lb, right, pad) for lb, right in placed], pad)
        draw = ImageDraw.Draw(base)
        for lb, right in placed:
            _draw_label(draw, lb, right, stroke, lead)
    else:
        draw.text((fs, fs), "No discs detected", font=load_font(fs, True), fill=(255, 255, 255),
                  stroke_width=stroke, stroke_fill=(0, 0, 0))

    notes = []
    if any(d.level_uncertain for d in discs):
        notes.append("? = level name uncertain")
    if findings.off_spine:
        notes.append("dashed = set aside (off the spine)")
    band = _band(W, fs, colours, notes, footer_text(model))
    out = Image.new("RGB", (W, H + band.height))
    out.paste(base, (0, 0))
    out.paste(band, (0, H))
    return np.asarray(out, dtype=np.uint8)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a report file atomically with mode ``0o644`` (reports are meant to be shared):
    :func:`lumbardx.io.atomic_write_bytes`. Creates the folder. Returns ``path``."""
    return atomic_write_bytes(path, data, mode=0o644)


def png_bytes(rgb: np.ndarray, description: str = "") -> bytes:
    """PNG encoding of uint8 ``[H, W, 3]`` with ``Software`` (and ``Description``) text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"lumbardx {__version__}")
    if description:
        info.add_text("Description", description)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=info, compress_level=3)
    return buf.getvalue()


def write_overlay(study: Study, path: str | Path, *, scale: int | None = None,
                  show_scores: bool = True) -> Path:
    """Render ``study``'s overlay (:func:`render_overlay`) and write it as PNG, atomically."""
    rgb = render_overlay(study.image.display, study.findings, scale=scale,
                         show_scores=show_scores, model=study.model.name,
                         classes=study.model.class_names)
    return write_bytes_atomic(path, png_bytes(rgb, footer_text(study.model.name)))
