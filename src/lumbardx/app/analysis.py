"""Running the detector on stored studies: one model, one study at a time.

:class:`Analyser` loads the :class:`lumbardx.diagnosis.Diagnoser` on first use (or takes one
already loaded), diagnoses ``studies/<key>/`` input, writes the outputs of
:func:`lumbardx.diagnosis.write_outputs` into the study folder, starts the review and updates
the worklist row (``new`` -> ``analysed`` or ``failed``). Background work runs on one worker
thread so that studies queue instead of competing for the CPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lumbardx.app.accounts import utc_now
from lumbardx.app.files import read_json, write_json
from lumbardx.app.review import initial_review
from lumbardx.app.settings import AppSettings
from lumbardx.app.studies import StudyStore
from lumbardx.data.errors import InputError

log = logging.getLogger(__name__)


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
        from lumbardx.diagnosis import write_outputs

        folder = self.studies.folder(key)
        meta = self.studies.meta(key)
        try:
            with self._lock:
                dx = self.diagnoser
                study = dx.diagnose(folder / meta["input"])
                if study.study_key != key:
                    raise InputError(None, "the stored files no longer give the analysed slice "
                                           f"(key {study.study_key} instead of {key})")
                try:
                    write_outputs(study, folder, dicom=True, pdf=True)
                    dicom_error = None
                except InputError as exc:  # DICOM outputs impossible: keep the others
                    write_outputs(study, folder, dicom=False, pdf=True)
                    dicom_error = exc.problem
            findings = read_json(folder / "findings.json")
            discs = findings["findings"]
            positive = [d["level"] for d in discs if d["label"] != "normal"]
            review_path = folder / "review.json"
            if not review_path.exists() or read_json(review_path).get("state") != "complete":
                write_json(review_path, initial_review(findings, dx.info.class_names))
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

    def shutdown(self) -> None:
        """Stop the worker (queued studies stay ``new`` and can be analysed again)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
