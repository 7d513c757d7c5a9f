"""The study report as PDF (``report.pdf``), drawn with matplotlib: no browser, no new dependency.

A4 portrait pages laid out top to bottom (:class:`_Flow`): title and the not-a-diagnosis banner,
the header (de-identified study key, source file name, image, date, model and weights hash),
the overlay beside the summary, the findings table by level (continued on the next page when
long), then warnings, method and limits, and timings. Every page carries a footer with the study
key and page number. Content is the same as the HTML report (:mod:`lumbardx.report.html`).
Text is drawn with ``parse_math=False`` so that ``$`` in a file name prints as itself; fonts
are embedded as TrueType (``pdf.fonttype`` 42) so the text stays searchable.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Rectangle
from PIL import Image

from lumbardx import __version__
from lumbardx.clinical.findings import NORMAL
from lumbardx.data.errors import InputError
from lumbardx.report.html import (NOT_A_DIAGNOSIS, TITLE, confidence_note, finding_rows,
                                  header_fields, limits, report_warnings, review_rows,
                                  summary_lines)
from lumbardx.report.fonts import load_font
from lumbardx.report.overlay import class_colours, write_bytes_atomic

if TYPE_CHECKING:
    from lumbardx.study import Study

A4_IN: tuple[float, float] = (8.27, 11.69)  # width, height in inches (210 x 297 mm)
MARGIN_IN = 0.6
INK, GREY, RULE = "#1b1f24", "#57606a", "#c9ced4"
BANNER_EDGE, BANNER_FACE = "#d55e00", "#fff4e5"
UNCERTAIN = "#b35900"
FINDING_COLUMNS: tuple[float, ...] = (0.11, 0.24, 0.12, 0.2, 0.33)  # fractions of text width
REVIEW_COLUMNS: tuple[float, ...] = (0.12, 0.3, 0.1, 0.34, 0.14)
#: Smallest type on the page (points): footers and notes.
FOOTER_PT = 8.0
_PAD = 0.05  # table cell padding, inches
_MEASURE_SCALE = 10  # measure text with a font of 10 px per point


def text_width(s: str, size: float, bold: bool = False) -> float:
    """Width in inches of ``s`` in DejaVu Sans at ``size`` points (the font matplotlib uses)."""
    font = load_font(round(size * _MEASURE_SCALE), bold)
    return float(font.getlength(s)) / _MEASURE_SCALE / 72


def _wrap(text: str, width_in: float, size: float, bold: bool = False) -> list[str]:
    """``text`` wrapped (greedily, at spaces) to lines that fit ``width_in`` inches."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size, bold) <= width_in:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while text_width(word, size, bold) > width_in and len(word) > 1:  # break long words
            cut = max(1, next((i for i in range(len(word), 0, -1)
                               if text_width(word[:i], size, bold) <= width_in), 1))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


class _Flow:
    """Top-to-bottom layout on A4 figures; positions in inches from the top-left corner."""

    def __init__(self) -> None:
        self.pages: list[Figure] = []
        self.y = 0.0
        self.new_page()

    @property
    def fig(self) -> Figure:
        return self.pages[-1]

    @property
    def width(self) -> float:
        return A4_IN[0] - 2 * MARGIN_IN

    def new_page(self) -> None:
        self.pages.append(Figure(figsize=A4_IN))
        self.y = MARGIN_IN

    def ensure(self, height: float) -> None:
        """Start a new page unless ``height`` inches fit above the bottom margin (and footer)."""
        if self.y + height > A4_IN[1] - MARGIN_IN - 0.25:
            self.new_page()

    def text_at(self, x: float, y: float, s: str, size: float = 9, **kw: object) -> None:
        """Text with its top-left corner at ``(x, y)`` inches."""
        self.fig.text(x / A4_IN[0], 1 - y / A4_IN[1], s, fontsize=size, va="top", ha="left",
                      parse_math=False, color=kw.pop("color", INK), **kw)

    def paragraph(self, s: str, size: float = 9, x: float = MARGIN_IN, width: float | None = None,
                  gap: float = 0.04, breakable: bool = True, **kw: object) -> None:
        """Wrapped text from ``(x, self.y)``; moved to a new page when it does not fit, unless
        ``breakable`` is false (text beside the overlay)."""
        lines = _wrap(s, width or (A4_IN[0] - MARGIN_IN - x), size)
        lh = size * 1.35 / 72
        if breakable:
            self.ensure(lh * len(lines))
        for line in lines:
            self.text_at(x, self.y, line, size, **kw)
            self.y += lh
        self.y += gap

    def heading(self, s: str) -> None:
        self.ensure(0.6)
        self.y += 0.12
        self.text_at(MARGIN_IN, self.y, s, 11.5, fontweight="bold")
        self.y += 0.22
        self.rule()
        self.y += 0.06

    def rule(self, colour: str = RULE, lw: float = 0.8, right: float | None = None) -> None:
        """A horizontal line at ``self.y`` from the left margin to ``right`` inches."""
        yy = 1 - self.y / A4_IN[1]
        x2 = (A4_IN[0] - MARGIN_IN if right is None else right) / A4_IN[0]
        self.fig.add_artist(Line2D([MARGIN_IN / A4_IN[0], x2], [yy, yy], color=colour, lw=lw))

    def box(self, x: float, y: float, w: float, h: float, face: str, edge: str = "none",
            round_: bool = False) -> None:
        xy = (x / A4_IN[0], 1 - (y + h) / A4_IN[1])
        size = (w / A4_IN[0], h / A4_IN[1])
        patch = (FancyBboxPatch(xy, *size, boxstyle="round,pad=0,rounding_size=0.006",
                                facecolor=face, edgecolor=edge, lw=0.8)
                 if round_ else Rectangle(xy, *size, facecolor=face, edgecolor=edge, lw=0.8))
        self.fig.add_artist(patch)


def _row_height(cells: Sequence[str], widths: Sequence[float], size: float) -> float:
    """Height in inches of a table row (``widths`` in inches)."""
    lines = max(len(_wrap(c, w - 2 * _PAD, size)) for c, w in zip(cells, widths))
    return lines * size * 1.3 / 72 + 2 * _PAD


def _table_height(rows: Sequence[Sequence[str]], fractions: Sequence[float], width: float,
                  size: float = 8.5) -> float:
    """Height in inches :func:`_table` needs for ``rows`` (plus a one-line header)."""
    widths = [f * width for f in fractions]
    return sum(_row_height(r, widths, size) for r in rows) + size * 1.3 / 72 + 2 * _PAD


def _table(flow: _Flow, header: Sequence[str], rows: Sequence[Sequence[str]],
           fractions: Sequence[float], size: float = 8.5,
           chip: dict[str, tuple[int, int, int]] | None = None, chip_col: int = -1,
           styles: dict[tuple[int, int], dict[str, str]] | None = None) -> None:
    """A table with a shaded header row (repeated after a page break); cell text wraps.

    ``fractions``: column widths as fractions of the text width. Cells of column ``chip_col``
    whose text is a key of ``chip`` are drawn as chips of that colour. ``styles``: matplotlib
    text properties per ``(row, column)`` (e.g. ``{"fontweight": "bold"}``).
    """
    widths = [f * flow.width for f in fractions]
    lh, pad = size * 1.3 / 72, _PAD
    styles = styles or {}

    def draw_row(ri: int, cells: Sequence[str]) -> None:
        head = ri < 0
        kws = [{"fontweight": "bold"} if head else styles.get((ri, ci), {})
               for ci in range(len(cells))]
        wrapped = [_wrap(c, w - 2 * pad, size, kw.get("fontweight") == "bold")
                   for c, w, kw in zip(cells, widths, kws)]
        h = max(len(w) for w in wrapped) * lh + 2 * pad
        if not head and flow.y + h > A4_IN[1] - MARGIN_IN - 0.25:
            flow.new_page()
            draw_row(-1, header)
        if head:
            flow.box(MARGIN_IN, flow.y, sum(widths), h, "#eef0f3")
        x = MARGIN_IN
        for ci, (lines, w, kw) in enumerate(zip(wrapped, widths, kws)):
            if chip is not None and ci == chip_col and not head and cells[ci] in chip:
                r, g, b = chip[cells[ci]]
                tw = min(w - pad, text_width(cells[ci], size, True) + 0.2)
                flow.box(x + pad * 0.6, flow.y + pad * 0.5, tw, lh + pad,
                         (r / 255, g / 255, b / 255), round_=True)
                flow.text_at(x + pad * 0.6 + 0.09, flow.y + pad, cells[ci], size, color="white",
                             fontweight="bold")
            else:
                for li, line in enumerate(lines):
                    flow.text_at(x + pad, flow.y + pad + li * lh, line, size, **kw)
            x += w
        flow.y += h
        flow.rule(right=MARGIN_IN + sum(widths))

    flow.ensure(3 * lh + 4 * pad)
    draw_row(-1, header)
    for i, r in enumerate(rows):
        draw_row(i, r)


def build_report_pages(study: Study, overlay: np.ndarray, *, analysed_at: datetime | None = None,
                       training_data: str | None = None) -> list[Figure]:
    """The report pages as matplotlib figures (A4 portrait).

    Args:
        study: the diagnosed study.
        overlay: uint8 ``[H, W, 3]`` overlay image (:func:`lumbardx.report.overlay.render_overlay`).
        analysed_at: date of analysis printed in the header (default: now).
        training_data: what the weights were trained on (see :func:`.html.limits`).
    """
    f = _Flow()
    f.text_at(MARGIN_IN, f.y, TITLE, 15, fontweight="bold")
    f.y += 0.36
    banner = _wrap(f"{NOT_A_DIAGNOSIS} Findings must be confirmed by a qualified reader on the "
                   "full examination.", f.width - 0.3, 9.5, bold=True)
    bh = len(banner) * 9.5 * 1.35 / 72 + 0.14
    f.box(MARGIN_IN, f.y, f.width, bh, BANNER_FACE, BANNER_EDGE)
    f.box(MARGIN_IN, f.y, 0.06, bh, BANNER_EDGE)
    for i, line in enumerate(banner):
        f.text_at(MARGIN_IN + 0.18, f.y + 0.07 + i * 9.5 * 1.35 / 72, line, 9.5, fontweight="bold")
    f.y += bh + 0.14
    for key, value in header_fields(study, analysed_at):
        f.text_at(MARGIN_IN, f.y, key, 8.5, color=GREY)
        lines = _wrap(value, f.width - 1.75, 8.5)
        for line in lines:
            f.text_at(MARGIN_IN + 1.75, f.y, line, 8.5)
            f.y += 8.5 * 1.35 / 72
    f.y += 0.08
    f.rule(INK, 1.5)
    f.y += 0.15

    # Overlay (left) and summary (right).
    h_px, w_px = overlay.shape[:2]
    rows = finding_rows(study)
    cells = [[r.level, r.status, r.confidence,
              "; ".join(x for x in (r.other, r.reader and f"reader: {r.reader}") if x) or "-",
              r.severity or "-"] for r in rows]
    # Shrink the overlay (down to 3.2 in tall) so that the findings table fits on page 1.
    table_h = 0.9 + _table_height(cells, FINDING_COLUMNS, f.width)
    img_w = 4.6
    room = A4_IN[1] - MARGIN_IN - 0.3 - f.y - 0.1
    img_h = min(img_w * h_px / w_px, max(3.2, room - table_h))
    img_w = img_h * w_px / h_px
    ax = f.fig.add_axes((MARGIN_IN / A4_IN[0], 1 - (f.y + img_h) / A4_IN[1],
                         img_w / A4_IN[0], img_h / A4_IN[1]))
    ax.imshow(overlay, interpolation="antialiased")
    ax.set_axis_off()
    x_side = MARGIN_IN + img_w + 0.2
    side_w = A4_IN[0] - MARGIN_IN - x_side
    y_img_end = f.y + img_h
    f.text_at(x_side, f.y, "Summary", 11.5, fontweight="bold")
    f.y += 0.28
    for line in summary_lines(study):
        f.paragraph(f"- {line}", 9, x=x_side, width=side_w, gap=0.06, breakable=False)
    if study.severity_note and any(r.severity for r in finding_rows(study)):
        f.y += 0.05
        f.paragraph(f"Severity values are estimates: {study.severity_note}.", 8, x=x_side,
                    width=side_w, breakable=False, color=GREY)
    f.y = max(y_img_end, f.y) + 0.1

    f.heading("Findings by level")
    if rows:
        colours = class_colours([*study.model.class_names, *(r.status for r in rows)])
        _table(f, ["Level", "Status", "Confidence", "Also found", "Severity (estimate)"],
               cells, FINDING_COLUMNS, chip=colours, chip_col=1,
               styles={(i, 0): {"fontweight": "bold" if r.status != NORMAL else "normal",
                                **({"color": UNCERTAIN} if r.uncertain else {})}
                       for i, r in enumerate(rows)})
        notes = confidence_note(study)
        if any(r.uncertain for r in rows):
            notes += " A level marked ? may be misnamed (see Warnings)."
        f.y += 0.06
        f.paragraph(notes, 8, color=GREY)
    else:
        f.paragraph("No discs detected.")

    if study.review is not None:
        f.heading("Reader's review")
        f.paragraph(f"{study.review.status_text()}.", 9)
        rows_r = review_rows(study)
        if rows_r:
            _table(f, ["Level", "Finding", "From", "Reader's action", "Model score"],
                   [list(r) for r in rows_r], REVIEW_COLUMNS)
        f.y += 0.06
        f.paragraph("Findings by level are the reviewed findings: the boxes the reader "
                    "confirmed, changed or added; a rejected box is listed here only.", 8,
                    color=GREY)

    f.heading("Warnings")
    for w in report_warnings(study) or ["None."]:
        f.paragraph(f"- {w}", 9)
    f.heading("Method and limits")
    for x in limits(study, training_data):
        f.paragraph(f"- {x}", 9)
    f.heading("Timings")
    if study.timings_ms:
        items = [[k, f"{v:.1f}"] for k, v in study.timings_ms.items()]
        items.append(["total", f"{sum(study.timings_ms.values()):.1f}"])
        _table(f, ["Step", "Time (ms)"], items, [0.3, 0.2],
               styles={(len(items) - 1, c): {"fontweight": "bold"} for c in (0, 1)})
    else:
        f.paragraph("Not recorded.")

    n = len(f.pages)
    for i, fig in enumerate(f.pages, 1):
        page = f"page {i} of {n}"
        room = f.width - text_width(page, FOOTER_PT) - 0.2
        lines = _wrap(f"lumbardx {__version__} - study {study.study_key} - {NOT_A_DIAGNOSIS}",
                      room, FOOTER_PT)
        for li, line in enumerate(lines):  # wrapped, never cut: the footnote stays whole
            fig.text(MARGIN_IN / A4_IN[0],
                     (0.35 + (len(lines) - 1 - li) * FOOTER_PT * 1.3 / 72) / A4_IN[1], line,
                     fontsize=FOOTER_PT, color=GREY, parse_math=False)
        fig.text(1 - MARGIN_IN / A4_IN[0], 0.35 / A4_IN[1], page, fontsize=FOOTER_PT,
                 color=GREY, ha="right")
    return f.pages


def pdf_bytes(pages: Sequence[Figure], title: str = "") -> bytes:
    """The figures as one PDF document (TrueType fonts embedded, no author recorded)."""
    buf = io.BytesIO()
    meta = {"Title": title or TITLE, "Creator": f"lumbardx {__version__}",
            "Subject": NOT_A_DIAGNOSIS}
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(buf, metadata=meta) as pdf:
        for fig in pages:
            pdf.savefig(fig)
    return buf.getvalue()


def write_pdf_report(study: Study, path: str | Path, overlay_path: str | Path, *,
                     analysed_at: datetime | None = None,
                     training_data: str | None = None) -> Path:
    """Write ``report.pdf`` for ``study`` atomically, with the overlay PNG at ``overlay_path``.

    Raises:
        InputError: the overlay file cannot be read as an image.
    """
    overlay_path = Path(overlay_path)
    try:
        with Image.open(overlay_path) as im:
            overlay = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputError(overlay_path, f"overlay image cannot be read: {exc}") from exc
    pages = build_report_pages(study, overlay, analysed_at=analysed_at,
                               training_data=training_data)
    return write_bytes_atomic(path, pdf_bytes(pages, f"lumbardx report {study.study_key}"))
