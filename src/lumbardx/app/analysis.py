"""Running the detector on stored studies: one model, one study at a time.

:class:`Analyser` loads the :class:`lumbardx.diagnosis.Diagnoser` on first use (or takes one
already loaded), diagnoses ``studies/<key>/`` input, writes the outputs of
:func:`lumbardx.diagnosis.write_outputs` into the study folder, starts the review and updates
the worklist row (``new`` -> ``analysed`` or ``failed``). When a reader completes the review,
:meth:`Analyser.write_reviewed` rewrites the overlay, ``findings.json``, reports and SR as
reviewed (the model's ``findings.json`` kept as ``model_findings.json``); a study analysed
again after its review keeps the reviewed record. Background work runs on one worker thread so
that studies queue instead of competing for the CPU.

The model's reading of the last :data:`READINGS_KEPT` studies is kept in memory, so that a
reader's corrections after completing a review rewrite the outputs without diagnosing the study
again; corrections made while a rewrite of the same study is still queued are folded into it
(the rewrite reads ``review.json`` when it starts).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lumbardx.app.accounts import utc_now
from lumbardx.app.files import read_json, write_json
from lumbardx.app.review import REVIEW_LOCK, initial_review
from lumbardx.app.settings import AppSettings
from lumbardx.app.studies import StudyStore
from lumbardx.data.errors import InputError

log = logging.getLogger(__name__)

READINGS_KEPT = 8  # studies whose model reading stays in memory (a few MB each)


def source_label(meta: dict[str, Any], header: Any = None) -> str:
    """What reports call a stored study's source (the store's own names, ``original/`` and
    ``file-000.dcm``, mean nothing to a reader): the series for DICOM (description and number),
    how it arrived and how many files it had."""
    n = int(meta.get("n_files") or 1)
    how = "pulled from PACS" if meta.get("origin") == "pacs" else "uploaded"
    kind = str(meta.get("kind", "")).upper()
    if header is None:
        return f"{kind} image {how} to lumbardx".strip()
    desc = str(header.get("SeriesDescription", "") or "").strip() or "unnamed series"
    number = header.get("SeriesNumber")
    series = f"{desc} (series {number})" if number not in (None, "") else desc
    return f"{series}, {n} DICOM file{'s' if n != 1 else ''} {how} to lumbardx"


def _write(study: Any, folder: Path) -> str | None:
    """All outputs of ``study`` into ``folder``; returns why the DICOM ones could not be made
    (the others are written anyway), or ``None``."""
    from lumbardx.diagnosis import write_outputs

    try:
        write_outputs(study, folder, dicom=True, pdf=True)
        return None
    except InputError as exc:  # DICOM outputs impossible: keep the others
        write_outputs(study, folder, dicom=False, pdf=True)
        return exc.problem


class Analyser:
    """Diagnoses stored studies.

    Args:
        settings: weights, backend and device of the model.
        studies: the study store.
        diagnoser: an already loaded :class:`~lumbardx.diagnosis.Diagnoser` (else loaded on
            first use from ``settings``).
        on_done: called with ``(study_key, meta)`` after each analysis (audit).
    """

    def __init__(self, settings: AppSettings, studies: StudyStore, diagnoser: Any = None,
                 on_done: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.settings, self.studies = settings, studies
        self._dx = diagnoser
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumbardx-analyse")
        self.on_done = on_done
        self._readings: OrderedDict[str, Any] = OrderedDict()  # key -> the model's Study
        self._queued: set[str] = set()  # keys with a reviewed rewrite queued, not started
        self._queue_lock = threading.Lock()

    @property
    def diagnoser(self) -> Any:
        """The loaded model (loads it on first use)."""
        if self._dx is None:
            from lumbardx.diagnosis import Diagnoser

            self._dx = Diagnoser(self.settings.weights, model=self.settings.model,
                                 backend=self.settings.backend, device=self.settings.device,
                                 single_slice=self.settings.single_slice_weights)
        return self._dx

    def submit(self, key: str) -> Future[dict[str, Any]] | dict[str, Any]:
        """Analyse ``key`` now or in the background (``settings.analyse_in_background``)."""
        if self.settings.analyse_in_background:
            return self._pool.submit(self.analyse, key)
        return self.analyse(key)

    def analyse(self, key: str) -> dict[str, Any]:
        """Diagnose one stored study; returns its updated worklist row (never raises for a
        study that fails: the row says ``failed`` with the reason)."""
        folder = self.studies.folder(key)
        meta = self.studies.meta(key)
        try:
            with self._lock:
                study = self._diagnose(key, meta)
                dicom_error = _write(study, folder)
            review_path = folder / "review.json"
            with REVIEW_LOCK:  # no reader action between the check and the write
                if review_path.exists() and read_json(review_path).get("state") == "complete":
                    self.write_reviewed(key, study)  # the record stays the reviewed one
                else:
                    write_json(review_path, initial_review(read_json(folder / "findings.json"),
                                                           study.model.class_names))
            discs = read_json(folder / "findings.json")["findings"]
            positive = [d["level"] for d in discs if d["label"] != "normal"]
            meta = self.studies.update(
                key, status="analysed", analysed_at=utc_now(), error=None,
                n_discs=len(discs), n_findings=len(positive), levels_with_findings=positive,
                dicom_outputs_error=dicom_error)
            log.info("study %s analysed: %d discs, %d with findings", key, len(discs),
                     len(positive))
        except Exception as exc:  # noqa: BLE001 - one study must not stop the worklist
            if isinstance(exc, InputError):
                reason = exc.problem
                log.warning("study %s: analysis failed: %s", key, reason)
            else:
                reason = f"internal error ({type(exc).__name__})"
                log.exception("study %s: analysis failed", key)
            meta = self.studies.update(key, status="failed", error=reason)
        if self.on_done is not None:
            self.on_done(key, meta)
        return meta

    def _diagnose(self, key: str, meta: dict[str, Any]) -> Any:
        """Diagnose the stored input of ``key`` (the model's reading, kept for
        :meth:`write_reviewed`; caller holds the lock)."""
        self._readings.pop(key, None)
        study = self.diagnoser.diagnose(self.studies.folder(key) / meta["input"])
        if study.study_key != key:
            raise InputError(None, "the stored files no longer give the analysed slice "
                                   f"(key {study.study_key} instead of {key})")
        study.source_label = source_label(meta, study.image.header)
        self._readings[key] = study
        while len(self._readings) > READINGS_KEPT:
            self._readings.popitem(last=False)
        return study

    def submit_reviewed(self, key: str) -> Future[None] | None:
        """Rewrite ``key``'s outputs from its complete review, now or in the background; in
        the background, nothing is queued (``None``) while a rewrite of ``key`` that has not
        started yet is queued: it will read the review as it stands then."""
        if self.settings.analyse_in_background:
            with self._queue_lock:
                if key in self._queued:
                    return None
                self._queued.add(key)
            return self._pool.submit(self._write_reviewed_logged, key)
        self.write_reviewed(key)
        return None

    def _write_reviewed_logged(self, key: str) -> None:
        with self._queue_lock:  # from here on, a new correction needs a new rewrite
            self._queued.discard(key)
        try:
            self.write_reviewed(key)
        except Exception:  # noqa: BLE001 - a background job must say why it failed
            log.exception("study %s: writing the reviewed report failed", key)
            self.studies.update(key, report_error="writing the reviewed report failed")

    def write_reviewed(self, key: str, diagnosed: Any = None) -> None:
        """Rewrite the overlay, ``findings.json``, the reports and the DICOM SR of ``key`` as
        its reader reviewed them (:func:`lumbardx.stages.reviewed.reviewed_study`); the
        model's own ``findings.json`` (one without a review) is kept as
        ``model_findings.json``. ``diagnosed``: the model's reading of the stored input when
        the caller has just made it (else it is made again).

        Raises:
            InputError: the stored input cannot be read again.
        """
        from lumbardx.clinical.reviewed import ReviewRecord
        from lumbardx.stages.reviewed import reviewed_study

        folder = self.studies.folder(key)
        record = ReviewRecord.from_json(read_json(folder / "review.json"))
        with self._lock:
            if diagnosed is None:
                diagnosed = self._readings.get(key)
                if diagnosed is None:
                    diagnosed = self._diagnose(key, self.studies.meta(key))
                else:
                    self._readings.move_to_end(key)
            study = reviewed_study(diagnosed, record)
            current = folder / "findings.json"
            if current.exists() and read_json(current).get("review") is None:
                write_json(folder / "model_findings.json", read_json(current))  # the model's
            _write(study, folder)
        self.studies.update(key, report_error=None)
        log.info("study %s: reviewed report written", key)

    def shutdown(self) -> None:
        """Stop the worker (queued studies stay ``new`` and can be analysed again)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
