"""Stage ``segments``: every motion segment read by the segment reader.

After the detector's boxes are grouped into discs (stage ``findings``), each disc's motion
segment (upper vertebra, disc, lower vertebra) is resampled along the spine curve from the T1
and T2 slices (the one slice twice without a pair; :mod:`lumbardx.engine.segments`) and read
with its neighbours as context (:class:`lumbardx.models.segment_reader.SegmentReader`, or
several as a :class:`~lumbardx.models.segment_reader.SegmentEnsemble`). Per disc this gives
calibrated probabilities of normal, herniation, spondylolisthesis, stenosis and degeneration,
the measured anterior offset of the upper vertebra, and whether the disc looks
like L5-S1. What changes in the findings (:meth:`SegmentStage.apply`):

* **spondylolisthesis**: with ``slip_call = "reader"`` the reader calls it (a disc is slipped
  when its probability reaches the threshold chosen on the cross-validation's out-of-fold
  discs; the detector's slip boxes are replaced, the box is the slip-box template of the
  training data placed on the disc); with ``"detector"`` the detector's call stands and the
  reader's probability is reported beside it. Which one a checkpoint uses is chosen at release
  from the cross-validation (``docs/segments.md``). With ``slip_measure = "reader"`` a called
  slip's ``slip_percent`` is the measured offset over the lower body's depth (one inter-disc
  spacing, :data:`lumbardx.engine.segments.DEPTH_PER_SPACING`), ``slip_method`` says so;
  with ``"corners"`` the severity stage measures it from the vertebral body corners;
* **stenosis** and **degeneration** become findings (box: the disc's) when ``extra_findings``
  is on (``lumbardx diagnose --classes all``); their probabilities are always reported;
* **herniation** and **normal** stay the detector's calls (its herniation AP is the better
  measured); the reader's probabilities are reported beside them;
* **stacked calls** (a checkpoint holding them, ``disc_call = "stacked"``): herniation and
  spondylolisthesis are called per disc by logistic regressions on the detector's scores and the
  reader's logits together (:mod:`lumbardx.stages.stacked`), instead of the two items above;
* **levels**: when the lowest disc found does not look like L5-S1, every level is flagged
  uncertain and the warning says which miscount is likely (a disc missed at the bottom or a
  view ending above the sacrum; or an extra disc below a disc that does look like L5-S1). When
  it does look like L5-S1 and the geometric sacrum rule refused the sacrum only because the
  field ends close below the lowest disc, the reading counts as evidence of the sacrum
  (:func:`lumbardx.clinical.findings.recognise_sacrum`): the levels lose that rule's flag.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbardx.clinical.findings import (NORMAL, SLIP, DiscFindings, Finding, SpineFindings,
                                        best_per_label, priority_order, recognise_sacrum)
from lumbardx.clinical.levels import SHORT_FIELD
from lumbardx.clinical.severity import meyerding_grade
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.engine.segments import (DEPTH_PER_SPACING, frame_tensor, segment_frames,
                                      template_boxes)
from lumbardx.engine.segment_training import SegmentItem, predict_items
from lumbardx.engine.stacking import StackedCalls
from lumbardx.models.segment_reader import SegmentEnsemble, SegmentReader, load_segment_reader
from lumbardx.stages.stacked import apply_stacked, disc_detector_boxes

#: The shipped segment reader's file in the weights folder.
SHIPPED_FILE = "segments.pt"
#: Labels that become findings only with ``extra_findings`` (``--classes all``).
EXTRA_LABELS: tuple[str, ...] = ("stenosis", "degeneration")
SLIP_METHOD = ("segment reader: anterior offset of the upper vertebral body over the lower "
               "body's depth (taken as one inter-disc spacing), learned from real segments "
               "with synthetic slips of known size")
#: Offsets (spacings) below this are reported as no measurable slip.
MIN_OFFSET = 0.03


@dataclass
class SegmentReading:
    """What the reader says about one disc.

    Attributes:
        probabilities: calibrated probability per label (findings and ``lumbosacral``).
        offset: anterior offset of the upper vertebra, in inter-disc spacings.
        box: the slip-box template placed on the disc (xyxy pixels).
        logits: the raw logit per label, before calibration (what stacked calls read).
    """

    probabilities: dict[str, float]
    offset: float
    box: Box
    logits: dict[str, float] = field(default_factory=dict)


def shipped_segment_reader() -> Path | None:
    """The shipped segment reader (``segments.pt`` in the weights folder), or ``None``."""
    from lumbardx.models.pretrained import weights_folder

    path = weights_folder() / SHIPPED_FILE
    return path if path.is_file() else None


class SegmentStage:
    """A loaded segment reader with its decision thresholds.

    Args:
        reader: the network (eval mode).
        thresholds: label -> decision threshold on the calibrated probability; a label
            without one is never called (only its probability is reported).
        slip_box: ``(dx, dy, w, h)`` of the slip-box template, in spacings.
        level_cut: the lowest disc is taken as L5-S1 when its ``lumbosacral`` probability is
            at least this.
        slip_call: ``"reader"`` or ``"detector"``: who calls spondylolisthesis.
        slip_measure: ``"reader"`` (the measured offset) or ``"corners"`` (the severity
            stage's vertebral-corner estimate) for ``slip_percent``.
        source: where it was loaded from (for messages), and ``info`` its metadata.
        stacked: stacked disc calls (:mod:`lumbardx.stages.stacked`): when given, herniation
            and spondylolisthesis are called per disc from the detector's scores and the
            reader's logits together, and ``slip_call`` does not apply.
    """

    def __init__(self, reader: SegmentReader | SegmentEnsemble, thresholds: dict[str, float],
                 slip_box: tuple[float, float, float, float], level_cut: float = 0.5,
                 source: Path | None = None, info: dict[str, Any] | None = None,
                 slip_call: str = "reader", slip_measure: str = "reader",
                 stacked: StackedCalls | None = None) -> None:
        if slip_call not in ("reader", "detector") or slip_measure not in ("reader", "corners"):
            raise ValueError(f"slip_call {slip_call!r} / slip_measure {slip_measure!r}: use "
                             "reader|detector and reader|corners")
        self.slip_call, self.slip_measure = slip_call, slip_measure
        self.reader = reader.eval()
        self.thresholds = dict(thresholds)
        self.slip_box = slip_box
        self.level_cut = level_cut
        self.source = source
        self.info = dict(info or {})
        self.stacked = stacked

    @property
    def disc_call(self) -> str:
        """``"stacked"`` when herniation and spondylolisthesis are called by the stacked
        regressions, else ``"detector"`` (the detector's calls, the slip per ``slip_call``)."""
        return "detector" if self.stacked is None else "stacked"

    @classmethod
    def load(cls, path: str | Path) -> SegmentStage:
        """Read a segment checkpoint (``torch.load(weights_only=True)``); one that does not say
        who calls the slip leaves it to the detector and the corners.

        Raises:
            InputError: naming the file when it is not a segment reader checkpoint.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            reader = load_segment_reader(raw)
        except FileNotFoundError as exc:
            raise InputError(path, "segment reader weights not found") from exc
        except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
            raise InputError(path, f"not a segment reader checkpoint ({exc})") from exc
        thresholds = {k: float(v) for k, v in dict(raw.get("thresholds", {})).items()}
        box = tuple(float(v) for v in raw.get("slip_box", (0.0, 0.0, 1.7, 1.25)))
        info = {k: raw[k] for k in ("tag", "training_data") if k in raw}
        info["weights_sha256"] = hashlib.sha256(data).hexdigest()  # the bytes just read
        try:
            stacked = StackedCalls.from_dict(raw["stacked"]) if raw.get("stacked") else None
            return cls(reader, thresholds, box, float(raw.get("level_cut", 0.5)), path, info,
                       str(raw.get("slip_call", "detector")),
                       str(raw.get("slip_measure", "corners")), stacked)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(path, str(exc)) from exc

    def warmup(self) -> None:
        """Run the reader once on blank crops (start-up costs off the first study's clock)."""
        c = self.reader.config
        with torch.inference_mode():
            self.reader(torch.zeros(1, 1, c.channels, *c.size), torch.ones(1, 1, dtype=torch.bool),
                        torch.zeros(1, 1, 3))

    @property
    def summary(self) -> dict[str, Any]:
        """``{"version", "weights_sha256", "slip_call", "slip_measure", "disc_call"}`` for
        ``findings.json``."""
        return {"version": str(self.info.get("tag", "segment reader")),
                "weights_sha256": self.info.get("weights_sha256"),
                "slip_call": self.slip_call, "slip_measure": self.slip_measure,
                "disc_call": self.disc_call}

    def read(self, planes: np.ndarray, spine: SpineFindings, anterior_left: bool = True
             ) -> list[SegmentReading]:
        """Read every disc of ``spine`` on ``planes`` (``uint8 [2, H, W]``: T1, T2, or one
        slice twice)."""
        frames = frame_tensor(segment_frames(spine, anterior_left))
        if frames.shape[0] == 0:
            return []
        item = SegmentItem("", "", planes, spine, frames,
                           torch.zeros(frames.shape[0], len(self.reader.config.labels)),
                           np.zeros((0, 4), np.float32))
        with torch.inference_mode():
            logits, offset = predict_items(self.reader, [item])[0]
            probs = self.reader.calibrated(logits)
        labels = self.reader.config.labels
        boxes = template_boxes(frames, self.slip_box, spine.image_size, anterior_left)
        return [SegmentReading({k: round(float(probs[i, j]), 4) for j, k in enumerate(labels)},
                               float(offset[i]), Box(SLIP, *map(float, boxes[i])),
                               {k: float(logits[i, j]) for j, k in enumerate(labels)})
                for i in range(frames.shape[0])]

    def apply(self, spine: SpineFindings, readings: list[SegmentReading],
              extra_findings: bool = False, boxes: Sequence[Box] | None = None,
              classes: Sequence[str] = ()) -> list[str]:
        """Update ``spine`` in place with the readings (module docstring); returns warnings.
        ``boxes``: every box the detector kept and its ``classes``, which stacked calls read
        (without them a stacked checkpoint calls from the boxes of the discs found)."""
        if not readings:
            return []
        stacked_found = None
        if self.stacked is not None:
            disc_boxes = (disc_detector_boxes(spine, boxes, classes) if boxes is not None
                          else [list(d.boxes) for d in spine.discs])
            stacked_found = apply_stacked(spine, self.stacked, disc_boxes,
                                          [rd.logits for rd in readings],
                                          [rd.box for rd in readings],
                                          [rd.probabilities.get(NORMAL) for rd in readings])
        for i, (disc, rd) in enumerate(zip(spine.discs, readings)):
            disc.probabilities = {k: v for k, v in rd.probabilities.items()}
            found = list(disc.findings) if stacked_found is None else stacked_found[i]
            if self.slip_call == "reader" and stacked_found is None:
                found = [f for f in found if f.label != SLIP]
                p_slip = rd.probabilities.get(SLIP, 0.0)
                if SLIP in self.thresholds and p_slip >= self.thresholds[SLIP]:
                    found.append(Finding(SLIP, p_slip, rd.box))
            if self.slip_measure == "reader" and any(f.label == SLIP for f in found):
                pct = 100.0 * rd.offset / DEPTH_PER_SPACING
                if rd.offset >= MIN_OFFSET:
                    disc.slip_percent = round(pct, 1)
                    disc.meyerding_grade = meyerding_grade(pct)
                else:
                    disc.slip_percent, disc.meyerding_grade = None, None
                disc.slip_method = SLIP_METHOD
            if extra_findings:
                for label in EXTRA_LABELS:
                    p = rd.probabilities.get(label, 0.0)
                    if label in self.thresholds and p >= self.thresholds[label]:
                        found.append(Finding(label, p, disc.box))
            if not found:  # a disc made of a slip box only, and the reader sees no slip
                found.append(Finding(NORMAL, rd.probabilities.get(NORMAL), disc.box))
            _set_findings(disc, found)
        return self._check_levels(spine, readings)

    def _check_levels(self, spine: SpineFindings, readings: list[SegmentReading]) -> list[str]:
        ls = [rd.probabilities.get("lumbosacral") for rd in readings]
        if ls[-1] is not None and ls[-1] >= self.level_cut:
            if not spine.sacrum_recognised and spine.sacrum_reason.startswith(SHORT_FIELD):
                recognise_sacrum(spine, "the segment reader reads the lowest disc as L5-S1 "
                                 f"(probability {ls[-1]:.3f}, cut {self.level_cut:.3f}); "
                                 f"geometry alone: {spine.sacrum_reason}")
            return []
        if ls[-1] is None or len(ls) < 2:
            return []
        names = [d.level for d in spine.discs]
        looks = [i for i in range(len(ls) - 1) if (ls[i] or 0.0) >= self.level_cut]
        if looks:
            i = looks[-1]
            n = len(ls) - 1 - i
            why = (f"levels uncertain: the disc named {names[i]} looks like L5-S1 (sacrum below "
                   f"it) and {n} disc(s) were found below it: an extra disc at the bottom, or "
                   "transitional anatomy")
        else:
            why = (f"levels uncertain: the lowest disc found (named {names[-1]}) does not look "
                   "like L5-S1 (no sacrum below it): a disc missed at the bottom, or a view "
                   "that ends above the sacrum")
        for d in spine.discs:
            d.level_uncertain = True
        spine.level_reasons.append(why)
        return [why]


def _set_findings(disc: DiscFindings, found: list[Finding]) -> None:
    """Replace ``disc``'s findings, keeping rule 5 of :mod:`lumbardx.clinical.findings` (one
    finding per label, priority order, status = first, its score and box)."""
    ranked = best_per_label(found, priority_order([f.label for f in found]))
    if not ranked:
        return
    disc.findings = ranked
    disc.status, disc.confidence, disc.box = ranked[0].label, ranked[0].score, ranked[0].box
    disc.scores = {f.label: 1.0 if f.score is None else float(f.score) for f in ranked}

