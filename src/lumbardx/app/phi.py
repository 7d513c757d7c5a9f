"""Keep patient identifiers out of application logs.

The app itself logs studies by ``study_key`` only. As a second line of defence, every
identifier read from an uploaded or pulled DICOM header (Patient's Name and its components,
Patient ID, Other Patient IDs, Accession Number, Patient's Birth Date) is registered with a
:class:`PhiRedactor`, and :func:`install` makes every log record of the process pass through
it: the message is formatted, each registered identifier is replaced by ``[redacted]``, and the
record keeps no arguments. It works for every logger and handler (uvicorn's included) because
it hooks :func:`logging.setLogRecordFactory` (tracebacks are formatted and redacted at
the same time). :class:`PhiFilter` does the same as a :class:`logging.Filter` for handlers a
deployment adds through its own logging configuration.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterable

from pydicom.dataset import Dataset

REDACTED = "[redacted]"
MIN_TERM_LENGTH = 3  # shorter name parts ("Li", "Jo") would blot out ordinary words
_IDENTITY_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate")


def identifiers(header: Dataset) -> set[str]:
    """Patient identifiers in a DICOM header, as they could appear in text: the name as stored
    (``Doe^Jane``), as words (``Jane Doe``, ``Doe Jane``) and its parts; IDs, accession number
    and birth date. Empty values are left out."""
    terms: set[str] = set()
    name = header.get("PatientName")
    if name is not None and str(name).strip():
        raw = str(name).strip()
        parts = [p.strip() for p in re.split(r"[\^=]", raw) if p.strip()]
        terms |= {raw, " ".join(parts), " ".join(reversed(parts)), *parts}
    for keyword in _IDENTITY_KEYWORDS:
        value = header.get(keyword)
        if value is None:
            continue
        values = [value] if isinstance(value, (str, bytes)) or not isinstance(
            value, Iterable) else list(value)
        terms |= {str(v).strip() for v in values if str(v).strip()}
    return {t for t in terms if len(t) >= MIN_TERM_LENGTH}


class PhiRedactor:
    """Replaces registered identifiers in text (case-insensitive, longest first)."""

    def __init__(self) -> None:
        self._terms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def register(self, terms: Iterable[str]) -> None:
        """Add identifiers to hide (shorter than :data:`MIN_TERM_LENGTH` are ignored)."""
        new = {t for t in terms if len(t) >= MIN_TERM_LENGTH}
        with self._lock:
            if new <= self._terms:
                return
            self._terms |= new
            ordered = sorted(self._terms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(t) for t in ordered), re.IGNORECASE)

    def register_header(self, header: Dataset) -> None:
        """Register the identifiers of one DICOM header (see :func:`identifiers`)."""
        self.register(identifiers(header))

    def redact(self, text: str) -> str:
        """``text`` with every registered identifier replaced by ``[redacted]``."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


_active: weakref.WeakSet[PhiRedactor] = weakref.WeakSet()
_FORMATTER = logging.Formatter()
_hooked = False
_install_lock = threading.Lock()


def _redact_all(text: str) -> str:
    for redactor in list(_active):
        text = redactor.redact(text)
    return text


def install(redactor: PhiRedactor) -> None:
    """Route every log record of the process through ``redactor`` (and through every other
    installed redactor still alive: several apps may run in one process)."""
    global _hooked
    with _install_lock:
        _active.add(redactor)
        if _hooked:
            return
        base = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = base(*args, **kwargs)
            if not any(r._pattern is not None for r in list(_active)):
                return record
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string stays as it was
                return record
            record.msg, record.args = _redact_all(message), None
            if record.exc_info and not record.exc_text:  # tracebacks can quote values too
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = _redact_all(record.exc_text)
            return record

        logging.setLogRecordFactory(factory)
        _hooked = True


class PhiFilter(logging.Filter):
    """A :class:`logging.Filter` applying a :class:`PhiRedactor` (for handlers configured
    outside this process' record factory, e.g. a file handler in a logging config)."""

    def __init__(self, redactor: PhiRedactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        record.msg, record.args = self.redactor.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        return True
