"""The named stages of a diagnosis, each in its own module, composed by
:class:`lumbardx.diagnosis.Diagnoser`:

1. :mod:`~lumbardx.stages.read` -- the study's analysed slice (and its slice position);
2. :mod:`~lumbardx.stages.pair` -- which model reads it: a T1+T2 model with the co-registered
   slice of the other sequence, or the single-slice model;
3. :mod:`~lumbardx.stages.detect` -- letterbox, network, boxes in image pixels;
4. :mod:`~lumbardx.stages.findings` -- boxes grouped into discs with levels and statuses;
5. :mod:`~lumbardx.stages.segments` -- each motion segment read by the segment reader
   (per-level probabilities, slip measured, level count checked);
6. :mod:`~lumbardx.stages.severity` -- slip grade and herniation extent on the raw pixels;
7. :mod:`~lumbardx.stages.outputs` -- overlay, ``findings.json``, reports, DICOM results.

:mod:`~lumbardx.stages.reviewed` turns a study into the record of a reader's review (the
reviewed findings the outputs then state).

:mod:`~lumbardx.stages.plausibility` refuses, before detection and after the findings, what
cannot be a sagittal lumbar spine MRI.

Each stage's wall time is recorded in ``Study.timings_ms`` (:class:`Clock`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Clock:
    """Accumulates named wall times in milliseconds (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - t0)
