"""Diagnose a study: read, detect, findings per disc, severity -- the pipeline behind
``lumbardx diagnose`` and :func:`lumbardx.diagnose`.

>>> from lumbardx import Diagnoser
>>> dx = Diagnoser(weights="runs/yolov5s/best.pt")            # doctest: +SKIP
>>> study = dx("case_001.png")                                # doctest: +SKIP
>>> [(d.level, d.status, d.confidence) for d in study.findings.discs]  # doctest: +SKIP

Steps of :meth:`Diagnoser.diagnose` (each timed in ``Study.timings_ms``, milliseconds,
``time.perf_counter``):

1. ``read``: :func:`lumbardx.data.series.load_study` -- a PNG / JPEG, a DICOM file, or a study
   folder (best sagittal series, its middle slice). A detector trained on T1/T2 pairs
   (``ModelInfo.inputs == "T1+T2"``) reads a study folder with
   :func:`lumbardx.data.series.load_study_pair`: the same slice of the co-registered series of
   the other sequence comes with it when the study has one (``Study.partner_series``). Without
   one (an image file, a study with one sequence), the slice goes to the single-slice model
   that came with the pair model (``Diagnoser(single_slice=...)``; for shipped weights the
   ``"single"`` choice, :func:`lumbardx.models.pretrained.shipped_single_slice`), or, when there
   is none, to the pair model alone; a warning says which.
2. ``preprocess``: the 8-bit display image (``uint8 [H, W]``) letterboxed to the model's square
   input (:func:`lumbardx.engine.letterbox.letterbox`, pad 0 as in evaluation), gray repeated
   to ``float32 [1, 3, S, S]`` in [0, 1]; a T1/T2 pair gives the channels T1, T2 and their mean
   (:func:`lumbardx.engine.model_input.three_channels`).
3. ``detect``: the backend (PyTorch in inference mode or ONNX Runtime), boxes mapped back from
   input pixels to image pixels (``Letterbox.unmap_boxes``; xyxy, 0-based continuous).
4. ``findings``: :func:`lumbardx.clinical.findings.build_findings` with the model's per-class
   decision thresholds (levels, one status per disc).
5. ``severity``: Meyerding slip and posterior herniation extent (mm, from the pixel spacing)
   from :mod:`lumbardx.clinical.severity`, on the raw pixel intensities.

``overlay`` and ``reports`` are timed by :meth:`Diagnoser.write_outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lumbardx.clinical import severity as sev
from lumbardx.clinical.findings import HERNIATION, SLIP, SpineFindings, build_findings
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.data.images import MedicalImage
from lumbardx.engine.letterbox import Letterbox, letterbox_planes
from lumbardx.engine.model_input import three_channels
from lumbardx.models.pretrained import SHIPPED, LoadedModel, load_detector, shipped_single_slice
from lumbardx.study import ModelInfo, Study, pixel_key

if TYPE_CHECKING:
    from lumbardx.data.series import StudyPair

log = logging.getLogger(__name__)

#: Letterbox padding value, as in evaluation (``lumbardx.engine.evaluate.predict``).
PAD_VALUE = 0
SEVERITY_NOTE = f"Slip: {sev.SLIP_VALIDATION} Herniation extent: " \
                f"{sev.HERNIATION_VALIDATION}".rstrip(".")


@dataclass
class Result:
    """The outcome for one input of :meth:`Diagnoser.diagnose_many`.

    Attributes:
        path: the input file or folder.
        study: the diagnosed study, or ``None`` when it failed.
        error: why it failed (an :class:`~lumbardx.data.errors.InputError` for bad input).
    """

    path: Path
    study: Study | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """Whether the study was diagnosed."""
        return self.study is not None

    @property
    def reason(self) -> str:
        """The failure in words (``""`` when it succeeded)."""
        if self.error is None:
            return ""
        if isinstance(self.error, InputError):
            return self.error.problem
        return f"internal error ({type(self.error).__name__}: {self.error})"


class _Clock:
    """Accumulates named wall times in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - t0)


def _anterior_left(image: MedicalImage) -> bool:
    """Whether the patient faces image left: from the DICOM row direction (patient LPS, +y is
    posterior), else the usual sagittal display (anterior left)."""
    if image.header is None:
        return True
    from lumbardx.data.dicom import image_orientation

    cosines = image_orientation(image.header)
    if cosines is None or abs(cosines[0][1]) < 0.5:
        return True
    return bool(cosines[0][1] > 0)


def _slice_position(path: Path, image: MedicalImage) -> tuple[int | None, int]:
    """``(index of the analysed slice in position order, slices in its series)``."""
    if image.kind != "dicom" or image.header is None:
        return None, 1
    if path.is_file():
        from lumbardx.data.dicom import number_of_frames

        n = number_of_frames(image.header)
        return (image.frame, n) if n > 1 else (None, 1)
    from lumbardx.data.series import scan_dicom_folder

    for series in scan_dicom_folder(path).series:
        for k, ref in enumerate(series.slices):
            if ref.path == image.source and ref.frame == image.frame:
                return k, len(series)
    return None, 1


def estimate_severity(image: MedicalImage, spine: SpineFindings,
                      anterior_left: bool = True) -> list[str]:
    """Severity estimates on the raw pixels, in place
    (:func:`lumbardx.clinical.severity.annotate_severity`: Meyerding slip on discs with a
    spondylolisthesis finding, posterior extent in mm on discs with a herniation finding).

    Returns:
        warnings for estimates that could not be made.
    """
    sev.annotate_severity(image.pixels, spine, image.pixel_spacing, anterior_left)
    warnings: list[str] = []
    for disc in spine.discs:
        if disc.has(SLIP) and disc.slip_percent is None:
            warnings.append(f"{disc.level}: slip grade not measurable on this slice")
        if disc.has(HERNIATION) and disc.herniation_extent_mm is None \
                and image.pixel_spacing is not None:
            warnings.append(f"{disc.level}: herniation extent not measurable on this slice")
    if image.pixel_spacing is None and any(d.has(HERNIATION) for d in spine.discs):
        warnings.append("pixel spacing unknown (not DICOM): herniation extent in mm not "
                        "measured")
    return warnings


def _findings_warnings(spine: SpineFindings) -> list[str]:
    out: list[str] = []
    if not spine.discs:
        out.append("no discs found: check that the image is a sagittal lumbar spine MRI")
        return out
    out.extend(spine.level_reasons)
    if spine.missing_levels:
        out.append(f"levels presumed undetected: {', '.join(spine.missing_levels)}")
    if spine.off_spine:
        out.append(f"{len(spine.off_spine)} box(es) away from the spine were set aside")
    return out


class Diagnoser:
    """A loaded detector that diagnoses studies; load once, call many times.

    Args:
        weights: checkpoint ``.pt`` / exported ``.onnx``; ``None`` uses the shipped ``model``.
        model: shipped weights choice, ``"default"``, ``"best"`` or ``"single"``.
        backend: ``"auto"`` (ONNX Runtime on the CPU when installed and exportable), ``"torch"``
            or ``"onnx"``.
        device: ``"cpu"``, ``"cuda"``...
        threads: CPU threads for PyTorch (``torch.set_num_threads``, process-wide) and ONNX
            Runtime; ``None`` leaves the libraries' defaults.
        thresholds: class name -> decision threshold, or a JSON file written by
            :func:`lumbardx.clinical.thresholds.save_thresholds`; overrides the checkpoint's.
        loaded: an already :class:`~lumbardx.models.pretrained.LoadedModel` (other arguments
            but ``thresholds`` and ``single_slice`` are then ignored).
        single_slice: for a model trained on T1/T2 pairs, the model that reads the slices that
            come without a partner: a weights file or a loaded model (loaded with the same
            backend and device). ``None`` with shipped weights takes the shipped ``"single"``
            choice when installed (:func:`~lumbardx.models.pretrained.shipped_single_slice`).
            Ignored for a model that reads single slices.

    Raises:
        NoShippedWeightsError, InputError: as :func:`lumbardx.models.pretrained.load_detector`.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        model: str = "default",
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        thresholds: Mapping[str, float] | str | Path | None = None,
        loaded: LoadedModel | None = None,
        single_slice: str | Path | LoadedModel | None = None,
    ) -> None:
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        self.loaded = loaded or load_detector(weights, device, model=model, backend=backend,
                                              threads=threads)
        #: The model for slices without a T1/T2 partner (``None``: the main model reads them).
        self.single_slice: LoadedModel | None = None
        if self.loaded.info.reads_pairs:
            if single_slice is None and weights is None and loaded is None:
                single_slice = shipped_single_slice(model)
            if isinstance(single_slice, LoadedModel):
                self.single_slice = single_slice
            elif single_slice is not None:
                self.single_slice = load_detector(single_slice, device, backend=backend,
                                                  threads=threads)
            if self.single_slice is not None and self.single_slice.info.reads_pairs:
                raise InputError(self.single_slice.source, "the single-slice model was "
                                 "trained on T1/T2 pairs; it must read single slices")
            if self.single_slice is not None \
                    and self.single_slice.class_names != self.loaded.class_names:
                raise InputError(self.single_slice.source, "the single-slice model's classes "
                                 f"{self.single_slice.class_names} differ from the pair "
                                 f"model's {self.loaded.class_names}")
        if isinstance(thresholds, (str, Path)):
            from lumbardx.clinical.thresholds import load_thresholds

            thresholds = load_thresholds(thresholds)
        if thresholds:
            for m in self.models:
                m.set_thresholds(thresholds)

    @property
    def models(self) -> list[LoadedModel]:
        """The main model, then the single-slice model when there is one."""
        return [self.loaded] + ([self.single_slice] if self.single_slice is not None else [])

    @property
    def info(self) -> ModelInfo:
        """The model (name, version, weights hash, classes, input size, backend)."""
        return self.loaded.info

    @property
    def thresholds(self) -> dict[str, float]:
        """Decision threshold per class."""
        return dict(self.loaded.thresholds)

    def warmup(self) -> None:
        """Run the network once on a blank image, so that one-time library start-up costs
        (kernel selection, allocations) are not counted in the first study's timings."""
        for m in self.models:
            blank = np.zeros((m.image_size, m.image_size), np.uint8)
            with torch.inference_mode():
                self._detect(m, *self._preprocess(m, blank))

    def detect(self, display: np.ndarray) -> list[Box]:
        """Boxes of the main model on one ``uint8 [H, W]`` image, in its pixels (xyxy), scores
        and class names."""
        with torch.inference_mode():
            return self._detect(self.loaded, *self._preprocess(self.loaded, display))

    @staticmethod
    def _preprocess(m: LoadedModel, display: np.ndarray,
                    pair: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[torch.Tensor, Letterbox]:
        """``[1, 3, S, S]`` in [0, 1] of ``display``, or of ``pair`` (T1, T2 displays of the
        same size) when given, at the input size of ``m``; and the letterbox geometry."""
        image = display if pair is None else np.stack(pair)
        lb, geo = letterbox_planes(image, m.image_size, PAD_VALUE)
        x = torch.from_numpy(lb)[None].float().div_(255.0)
        return three_channels(x), geo  # [1, C, S, S] -> [1, 3, S, S]

    @staticmethod
    def _detect(m: LoadedModel, x: torch.Tensor, geo: Letterbox) -> list[Box]:
        det = m.backend(x)[0]
        boxes = geo.unmap_boxes(det["boxes"].float().numpy())  # [K, 4] image pixels
        names = m.class_names
        out = []
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist()):
            if x2 > x1 and y2 > y1:  # boxes entirely in the padding collapse when clipped
                out.append(Box(names[int(label)], x1, y1, x2, y2, score=float(score)))
        return out

    def diagnose_image(self, image: MedicalImage, source: str | Path | None = None,
                       slice_index: int | None = None, n_slices: int = 1,
                       timings: Mapping[str, float] | None = None,
                       pair: StudyPair | None = None) -> Study:
        """Diagnose an image already read (steps 2-5 of the module docstring); ``pair`` (of
        :func:`lumbardx.data.series.load_study_pair`, ``pair.image`` being ``image``) gives a
        detector trained on T1/T2 pairs the co-registered slice of the other sequence."""
        clock = _Clock()
        clock.ms.update(timings or {})
        partner = pair is not None and pair.partner is not None and self.info.reads_pairs
        m = self.loaded if partner or self.single_slice is None else self.single_slice
        with torch.inference_mode():
            with clock("preprocess"):
                x, geo = self._preprocess(m, image.display, pair.t1_t2() if partner else None)
            with clock("detect"):
                boxes = self._detect(m, x, geo)
        with clock("findings"):
            spine = build_findings(boxes, (image.width, image.height), m.thresholds,
                                   classes=m.class_names)
        warnings = _findings_warnings(spine)
        unchosen = [n for n in m.class_names if n not in m.chosen]
        if unchosen:
            warnings.append("decision thresholds not chosen on validation data for "
                            f"{', '.join(unchosen)}: default "
                            f"{', '.join(f'{m.thresholds[n]:g}' for n in unchosen)}")
        if self.info.reads_pairs and not partner:
            why = pair.reason if pair is not None and pair.reason else "one slice was given"
            known = pair is not None and pair.image_weighting in ("T1", "T2")
            what = f"the {pair.image_weighting} slice" if known and pair else "the slice"
            if m is self.loaded:
                warnings.append(f"the model reads T1 and T2 together; {why}: {what} was "
                                "read alone")
            else:
                log.info("%s: %s; read by the single-slice model", source, why)
                warnings.append(f"no T1/T2 pair ({why}): {what} was read by the "
                                f"single-slice model ({m.info.version})")
        with clock("severity"):
            warnings += estimate_severity(image, spine, _anterior_left(image))
        return Study(source=Path(source) if source is not None else image.source, image=image,
                     findings=spine, model=m.info, study_key=pixel_key(image.pixels),
                     slice_index=slice_index, n_slices=n_slices,
                     partner_series=pair.partner_series if partner and pair else None,
                     timings_ms=clock.ms, warnings=warnings, severity_note=SEVERITY_NOTE)

    def diagnose(self, path: str | Path) -> Study:
        """Diagnose one study: an image file, a DICOM file or a study folder.

        Raises:
            InputError: naming the file or folder when it cannot be used.
        """
        from lumbardx.data.series import load_study, load_study_pair

        path = Path(path)
        clock = _Clock()
        pair = None
        with clock("read"):
            if self.info.reads_pairs:
                pair = load_study_pair(path)
                image = pair.image
            else:
                image = load_study(path, 1)[0]
            index, count = _slice_position(path, image)
        return self.diagnose_image(image, path, index, count, clock.ms, pair)

    __call__ = diagnose

    def diagnose_many(self, paths: Iterable[str | Path]) -> Iterator[Result]:
        """Diagnose each path in turn; a failing one yields a :class:`Result` with its error
        and the rest continue."""
        for p in paths:
            path = Path(p)
            try:
                yield Result(path, study=self.diagnose(path))
            except InputError as exc:  # expected bad input: the Result carries it
                log.info("%s", exc)
                yield Result(path, error=exc)
            except Exception as exc:  # noqa: BLE001 - one study must not stop the batch
                log.exception("%s: diagnosis failed", path)
                yield Result(path, error=exc)

    def write_outputs(self, study: Study, out_dir: str | Path, *, dicom: bool = True,
                      pdf: bool = True) -> dict[str, Path]:
        """Write the study's files into ``out_dir`` (see :func:`write_outputs`)."""
        return write_outputs(study, out_dir, dicom=dicom, pdf=pdf)


def write_outputs(study: Study, out_dir: str | Path, *, dicom: bool = True,
                  pdf: bool = True) -> dict[str, Path]:
    """Overlay, ``findings.json``, report (HTML, PDF) and, for DICOM input with ``dicom``, the
    SR (TID 1500) and overlay Secondary Capture, in ``out_dir``.

    ``study.timings_ms`` gets ``overlay`` (before ``findings.json`` is written) and then
    ``reports`` (everything else, so it is not in the file); ``study.outputs`` the paths.

    Raises:
        InputError: the DICOM outputs cannot be made from this study's header.
        OSError: ``out_dir`` cannot be written.
    """
    from PIL import Image

    from lumbardx import report

    t0 = time.perf_counter()
    out = Path(out_dir)
    paths = report.write_study_outputs(study, out, pdf=pdf)
    if dicom and study.image.kind == "dicom" and study.image.header is not None:
        from lumbardx.pacs import write_dicom_outputs

        with Image.open(paths["overlay"]) as im:  # the pixels just written, not a re-render
            rgb = np.asarray(im.convert("RGB"))
        dicom_paths = write_dicom_outputs(study, rgb, out)
        study.outputs.update(dicom_paths)
        paths = {**paths, **dicom_paths}
    total = 1000.0 * (time.perf_counter() - t0)
    study.timings_ms["reports"] = max(0.0, total - study.timings_ms.get("overlay", 0.0))
    return dict(paths)


_cached: tuple[tuple[Any, ...], Diagnoser] | None = None


def diagnose(path: str | Path, model: Diagnoser | str | Path | None = None,
             **kw: Any) -> Study:
    """Diagnose one study with ``model``: a :class:`Diagnoser`, a weights file, a shipped
    choice (``"default"`` / ``"best"``) or ``None`` (shipped default). Keywords go to
    :class:`Diagnoser`; the last model loaded this way is kept for the next call."""
    global _cached
    if isinstance(model, Diagnoser):
        return model.diagnose(path)
    if isinstance(model, str) and model in SHIPPED and not Path(model).exists():
        kw.setdefault("model", model)
        model = None
    key = (str(model), tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if _cached is None or _cached[0] != key:
        _cached = (key, Diagnoser(model, **kw))
    return _cached[1].diagnose(path)
