"""Slices of a stored DICOM study for the viewer (read-only): the sagittal series the study's
files hold and any slice of them, next to the analysed slice that ``routes_studies`` serves.

* ``GET /api/studies/{key}/series``: ``{"analysed_series": int|null, "series": [{"index",
  "weighting", "description", "series_number", "n_slices", "analysed_slice": int|null,
  "positions": [mm]}]}``. Listed: the analysed series and the MR series imaging the same plane
  in the same patient space (:func:`lumbardx.data.series.same_plane`, e.g. the T1 beside the
  analysed T2), sagittal, not localizers. ``positions`` are the slices' positions along the
  analysed series' normal (mm), so a viewer switching sequence stays at the same place.
  PNG / JPEG studies: no series.
* ``GET /api/studies/{key}/slices/{index}.png?series=S[&center=&width=]``: slice ``index``
  of series ``S`` (default 0, the analysed series) as 8-bit PNG on the analysed slice's pixel
  grid (resampled when the series' grid differs, :func:`lumbardx.data.series.onto_grid`), so
  the findings' boxes keep their place; with ``center`` and ``width`` windowed from the stored
  values.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from lumbardx.app.accounts import User
from lumbardx.app.context import AppContext, ctx, current_user
from lumbardx.app.routes_studies import study_folder
from lumbardx.app.studies import png_bytes
from lumbardx.data.errors import InputError
from lumbardx.data.images import window_to_uint8

router = APIRouter()


@dataclass(frozen=True)
class _Stacks:
    """The browsable series of one study: ``series[analysed]`` holds the analysed slice at
    ``analysed_slice``; ``positions[s][i]`` is slice ``i`` of series ``s`` along the analysed
    series' normal (mm)."""

    series: tuple[Any, ...]
    analysed: int
    analysed_slice: int
    positions: tuple[tuple[float, ...], ...]


_CACHE: dict[tuple[Any, ...], _Stacks | None] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def _scan(folder: Path, analysed_file: str, frame: int | None) -> _Stacks | None:
    """The series of ``folder/original`` that a viewer can browse (module docstring), ``None``
    when the analysed file is in none (e.g. a PNG study). Cached per study folder and files:
    a study whose files are replaced (a study that grows, :meth:`lumbardx.app.studies.StudyStore.ingest`) gets a new
    ``original`` folder, hence a new cache entry."""
    original = folder / "original"
    try:
        st = original.stat()
        version: tuple[int, int] = (st.st_ino, st.st_mtime_ns)
    except OSError:
        version = (0, 0)
    cache_key = (str(folder), analysed_file, frame, version)
    with _CACHE_LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    from lumbardx.data.series import same_plane, scan_dicom_folder

    found = None
    if original.is_dir():
        scan = scan_dicom_folder(original)
        target = (folder / analysed_file).name
        for series in scan.series:
            hit = [i for i, s in enumerate(series.slices)
                   if s.path.name == target and s.frame == frame]
            if hit:
                found = (series, hit[0])
                break
    stacks = None
    if found is not None:
        chosen, at = found
        others = [s for s in scan.series
                  if s is not chosen and s.modality == "MR" and s.is_sagittal
                  and not s.is_localizer and same_plane(chosen, s)
                  and all(x.origin is not None for x in s.slices)]
        listed = (chosen, *others)

        def along(series: Any) -> tuple[float, ...]:
            if chosen.normal is not None and all(x.origin is not None for x in series.slices):
                return tuple(round(float(np.dot(x.origin, chosen.normal)), 3)
                             for x in series.slices)
            return tuple(round(float(x.position), 3) for x in series.slices)

        stacks = _Stacks(listed, 0, at, tuple(along(s) for s in listed))
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[cache_key] = stacks
    return stacks


def _stacks(c: AppContext, key: str) -> tuple[Path, dict[str, Any], _Stacks | None]:
    folder = study_folder(c, key)
    meta = c.studies.meta(key)
    if meta.get("kind") != "dicom":
        return folder, meta, None
    return folder, meta, _scan(folder, meta["analysed_file"], meta.get("frame"))


@router.get("/api/studies/{key}/series")
async def study_series(key: str, user: User = Depends(current_user),
                       c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """The sagittal series of the study a viewer can scroll through (module docstring)."""
    _, _, stacks = await run_in_threadpool(_stacks, c, key)
    if stacks is None:
        return {"analysed_series": None, "series": []}
    return {"analysed_series": stacks.analysed, "series": [
        {"index": i, "weighting": s.weighting, "description": s.description,
         "series_number": s.series_number, "n_slices": len(s),
         "analysed_slice": stacks.analysed_slice if i == stacks.analysed else None,
         "positions": list(stacks.positions[i])}
        for i, s in enumerate(stacks.series)]}


def _slice_png(c: AppContext, key: str, s: int, i: int, center: float | None,
               width: float | None) -> bytes:
    from lumbardx.data.dicom import read_dicom
    from lumbardx.data.series import grid_map, onto_grid

    _, meta, stacks = _stacks(c, key)
    if stacks is None:
        raise HTTPException(404, "this study has no DICOM series to browse")
    if not 0 <= s < len(stacks.series):
        raise HTTPException(404, f"series {s} is not in this study (0..{len(stacks.series) - 1})")
    series = stacks.series[s]
    if not 0 <= i < len(series):
        raise HTTPException(404, f"slice {i} is not in series {s} (0..{len(series) - 1})")
    ref = series.slices[i]
    try:
        image = read_dicom(ref.path, frame=ref.frame, require_mr=True)
    except InputError:
        raise HTTPException(409, f"slice {i} of series {s} cannot be read") from None
    gray = image.display if center is None or width is None else \
        window_to_uint8(image.pixels, center - width / 2, center + width / 2)
    shape = (int(meta["height"]), int(meta["width"]))
    chosen = stacks.series[stacks.analysed]
    mid = chosen.slices[stacks.analysed_slice]
    if mid.origin is not None and ref.origin is not None and chosen.orientation is not None \
            and chosen.pixel_spacing is not None and series.pixel_spacing is not None:
        scale, offset = grid_map(mid, chosen, ref, series)
    elif gray.shape == shape:
        scale, offset = np.ones(2), np.zeros(2)
    else:
        raise HTTPException(409, f"slice {i} of series {s} cannot be placed on the analysed "
                                 "slice's pixel grid")
    gray, _ = onto_grid(gray, scale, offset, shape)
    return png_bytes(gray)


@router.get("/api/studies/{key}/slices/{index}.png")
async def study_slice(key: str, index: int, series: int = 0, center: float | None = None,
                      width: float | None = None, user: User = Depends(current_user),
                      c: AppContext = Depends(ctx)) -> Response:
    """Slice ``index`` of series ``series`` on the analysed slice's grid (module docstring)."""
    windowed = center is not None and width is not None
    if (center is None) != (width is None) or (windowed and (
            not np.isfinite(center) or not np.isfinite(width) or width <= 0)):
        raise HTTPException(422, "give both center and width (width > 0), or neither")
    data = await run_in_threadpool(_slice_png, c, key, series, index, center, width)
    return Response(data, media_type="image/png")
