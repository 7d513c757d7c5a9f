"""Fonts for images lumbardx draws (overlays): nothing is downloaded.

The first choice is DejaVu Sans, the TrueType font matplotlib ships in
``matplotlib.get_data_path()/fonts/ttf/`` (licence: ``LICENSE_DEJAVU`` beside it); matplotlib is
a lumbardx dependency, so the font is present wherever lumbardx is installed. When the file is
missing or unreadable, Pillow's built-in scalable font (``ImageFont.load_default(size=...)``,
Pillow >= 10.1) is used, and on an older Pillow its fixed bitmap font.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Matplotlib's DejaVu Sans files, regular and bold.
DEJAVU_FILES: dict[bool, str] = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}


def dejavu_path(bold: bool = False) -> Path | None:
    """Path of matplotlib's DejaVu Sans TTF (bold or regular), or ``None`` when absent."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / DEJAVU_FILES[bold]
    return path if path.is_file() else None


@lru_cache(maxsize=64)
def load_font(size: int, bold: bool = False) -> Font:
    """A font of ``size`` pixels (em height), DejaVu Sans when available.

    Args:
        size: font size in pixels, at least 1.
        bold: the bold face (falls back to regular when only that is found).

    Returns:
        A Pillow font usable with ``ImageDraw.text`` (``stroke_width`` works with both the
        TrueType and Pillow's built-in scalable font).
    """
    size = max(1, int(size))
    for candidate in (dejavu_path(bold), dejavu_path(False)):
        if candidate is None:
            continue
        try:
            return ImageFont.truetype(str(candidate), size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def text_size(font: Font, text: str, stroke: int = 0) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` in ``font`` with an outline of ``stroke`` px."""
    x1, y1, x2, y2 = font.getbbox(text, stroke_width=stroke)
    return int(round(x2 - x1)), int(round(y2 - y1))


def line_height(font: Font, stroke: int = 0) -> int:
    """Height in pixels of one line of ``font`` (ascent + descent) plus an outline of ``stroke``
    px above and below: text drawn at ``y + stroke`` (Pillow's default anchor, the ascender
    line) stays inside ``[y, y + line_height)``."""
    metrics = getattr(font, "getmetrics", None)
    if metrics is not None:
        ascent, descent = metrics()
        return int(ascent + descent + 2 * stroke)
    return text_size(font, "Ag", stroke)[1]  # pragma: no cover - bitmap font of old Pillow
