"""Diagnose a study: read, detect, findings per disc, severity -- the pipeline behind
``lumbardx diagnose`` and :func:`lumbardx.diagnose`.

>>> from lumbardx import Diagnoser
>>> dx = Diagnoser(weights="runs/yolov5s/best.pt")            # doctest: +SKIP
>>> study = dx("case_001.png")                                # doctest: +SKIP
>>> [(d.level, d.status, d.confidence) for d in study.findings.discs]  # doctest: +SKIP

Steps of :meth:`Diagnoser.diagnose`, each a module of :mod:`lumbardx.stages` and timed in
``Study.timings_ms`` (milliseconds, ``time.perf_counter``): ``read``
(:mod:`~lumbardx.stages.read`), the model and partner slice (:mod:`~lumbardx.stages.pair`),
``preprocess`` and ``detect`` (:mod:`~lumbardx.stages.detect`), ``findings``
(:mod:`~lumbardx.stages.findings`), ``segments`` (:mod:`~lumbardx.stages.segments`, when a
segment reader is loaded), ``severity`` (:mod:`~lumbardx.stages.severity`). Before detection
and after the findings, :mod:`~lumbardx.stages.plausibility` refuses what cannot be a sagittal
lumbar spine MRI (uniform image, pixel noise, no disc found).
``overlay`` and ``reports`` are timed by :meth:`Diagnoser.write_outputs`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.data.images import EXIF_ORIENTATIONS, MedicalImage
from lumbardx.models.pretrained import SHIPPED, LoadedModel, load_detector, shipped_single_slice
from lumbardx.stages import Clock
from lumbardx.stages import detect as detect_stage
from lumbardx.stages.findings import drop_stale, find, findings_warnings
from lumbardx.stages.outputs import write_outputs
from lumbardx.stages.pair import choose_reader
from lumbardx.stages.plausibility import NO_DISC, image_problem, spine_problem
from lumbardx.stages.read import read_study
from lumbardx.stages.segments import SegmentStage, shipped_segment_reader
from lumbardx.stages.severity import SEVERITY_NOTE, anterior_left, estimate_severity
from lumbardx.study import ModelInfo, Study, pixel_key

if TYPE_CHECKING:
    from lumbardx.data.series import StudyPair

__all__ = ["Diagnoser", "Result", "diagnose", "write_outputs"]

#: Why an image in which the detector finds no disc is refused
#: (:mod:`lumbardx.stages.plausibility`).
NOT_A_SPINE = NO_DISC

log = logging.getLogger(__name__)


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
        segments: the segment reader (:mod:`lumbardx.stages.segments`): a weights file, a
            loaded :class:`~lumbardx.stages.segments.SegmentStage`, ``None`` (with shipped
            weights, the shipped ``segments.pt`` when installed) or ``False`` (none).
        extra_findings: call stenosis and degeneration as findings (``--classes all``); their
            probabilities are reported either way.
        refuse_without_discs: refuse (:class:`~lumbardx.data.errors.InputError`, "not a
            sagittal lumbar spine MRI: <reason>") a uniform image, pixel noise, or an image in
            which no disc is found, rather than report it without findings
            (:mod:`lumbardx.stages.plausibility`).

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
        segments: str | Path | SegmentStage | bool | None = None,
        extra_findings: bool = False,
        refuse_without_discs: bool = True,
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
        if segments is None and weights is None and loaded is None:
            segments = shipped_segment_reader()
        #: The segment reader, or ``None``.
        self.segments: SegmentStage | None = (
            segments if isinstance(segments, SegmentStage)
            else SegmentStage.load(segments) if isinstance(segments, (str, Path)) else None)
        self.extra_findings = extra_findings
        self.refuse_without_discs = refuse_without_discs
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
        """Run the networks once on a blank image, so that one-time library start-up costs
        (kernel selection, allocations) are not counted in the first study's timings."""
        for m in self.models:
            detect_stage.warmup(m)
        if self.segments is not None:
            self.segments.warmup()

    def detect(self, display: np.ndarray) -> list[Box]:
        """Boxes of the main model on one ``uint8 [H, W]`` image, in its pixels (xyxy), scores
        and class names."""
        with torch.inference_mode():
            return detect_stage.detect(self.loaded,
                                       *detect_stage.preprocess(self.loaded, display))

    def diagnose_image(self, image: MedicalImage, source: str | Path | None = None,
                       slice_index: int | None = None, n_slices: int = 1,
                       timings: Mapping[str, float] | None = None,
                       pair: StudyPair | None = None) -> Study:
        """Diagnose an image already read (steps 2-5 of the module docstring); ``pair`` (of
        :func:`lumbardx.data.series.load_study_pair`, ``pair.image`` being ``image``) gives a
        detector trained on T1/T2 pairs the co-registered slice of the other sequence."""
        clock = Clock()
        clock.ms.update(timings or {})
        where = Path(source) if source is not None else image.source
        problem = image_problem(image.display) if self.refuse_without_discs else None
        if problem:
            raise InputError(where, problem)
        reader = choose_reader(self.loaded, self.single_slice, pair, source)
        m = reader.model
        with torch.inference_mode():
            with clock("preprocess"):
                x, geo = detect_stage.preprocess(m, image.display, reader.planes)
            with clock("detect"):
                boxes = detect_stage.detect(m, x, geo)
        with clock("findings"):
            spine, warnings = find(boxes, image, m)
        problem = spine_problem(spine) if self.refuse_without_discs else None
        if problem:
            raise InputError(where, problem)
        warnings += reader.warnings
        if image.exif_orientation != 1:
            warnings.append(f"the image file's EXIF orientation ({image.exif_orientation}: "
                            f"{EXIF_ORIENTATIONS[image.exif_orientation]}) was applied, as "
                            "image viewers do: check that the slice reads upright")
        anterior = anterior_left(image)
        if self.segments is not None and spine.discs:
            with clock("segments"):
                planes = np.stack(reader.planes if reader.planes is not None
                                  else (image.display, image.display))
                readings = self.segments.read(planes, spine, anterior)
                before = findings_warnings(spine)
                added = self.segments.apply(spine, readings, self.extra_findings, boxes,
                                            m.class_names)
                warnings = drop_stale(warnings, before, spine) + added
        with clock("severity"):
            warnings += estimate_severity(image, spine, anterior)
        return Study(source=Path(source) if source is not None else image.source, image=image,
                     findings=spine, model=m.info, study_key=pixel_key(image.pixels),
                     slice_index=slice_index, n_slices=n_slices,
                     partner_series=reader.partner_series,
                     timings_ms=clock.ms, warnings=warnings, severity_note=SEVERITY_NOTE,
                     segment_reader=None if self.segments is None else self.segments.summary)

    def diagnose(self, path: str | Path) -> Study:
        """Diagnose one study: an image file, a DICOM file or a study folder.

        Raises:
            InputError: naming the file or folder when it cannot be used.
        """
        path = Path(path)
        clock = Clock()
        with clock("read"):
            read = read_study(path, self.info.reads_pairs)
        return self.diagnose_image(read.image, path, read.slice_index, read.n_slices, clock.ms,
                                   read.pair)

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
