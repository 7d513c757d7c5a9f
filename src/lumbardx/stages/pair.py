"""Stage ``pair``: which model reads the slice, and with which partner.

A detector trained on T1/T2 pairs (``ModelInfo.inputs == "T1+T2"``) reads the slice with the
co-registered slice of the other sequence when the study has one. Without one (an image file, a
study with one sequence) the slice goes to the single-slice model that came with the pair model
(``Diagnoser(single_slice=...)``), or, when there is none, to the pair model alone; a warning
says which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lumbardx.models.pretrained import LoadedModel

if TYPE_CHECKING:
    from lumbardx.data.series import StudyPair

log = logging.getLogger(__name__)


@dataclass
class Reader:
    """The model chosen for a slice.

    Attributes:
        model: the loaded detector that reads it.
        planes: ``(T1, T2)`` ``uint8 [H, W]`` displays when read as a pair, else ``None``.
        partner_series: the partner's series description (``None`` without a partner).
        warnings: what the user should know about the choice.
    """

    model: LoadedModel
    planes: tuple[np.ndarray, np.ndarray] | None
    partner_series: str | None
    warnings: list[str] = field(default_factory=list)


def choose_reader(main: LoadedModel, single_slice: LoadedModel | None,
                  pair: StudyPair | None, source: str | Path | None = None) -> Reader:
    """The model and input for one slice (module docstring)."""
    partner = pair is not None and pair.partner is not None and main.info.reads_pairs
    m = main if partner or single_slice is None else single_slice
    reader = Reader(m, pair.t1_t2() if partner and pair else None,
                    pair.partner_series if partner and pair else None)
    if main.info.reads_pairs and not partner:
        why = pair.reason if pair is not None and pair.reason else "one slice was given"
        known = pair is not None and pair.image_weighting in ("T1", "T2")
        what = f"the {pair.image_weighting} slice" if known and pair else "the slice"
        if m is main:
            reader.warnings.append(f"the model reads T1 and T2 together; {why}: {what} was "
                                   "read alone")
        else:
            log.info("%s: %s; read by the single-slice model", source, why)
            reader.warnings.append(f"no T1/T2 pair ({why}): {what} was read by the "
                                   f"single-slice model ({m.info.version})")
    return reader
