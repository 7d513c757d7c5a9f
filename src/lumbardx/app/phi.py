"""Keep patient identifiers out of application logs.

The app itself logs studies by ``study_key`` only. As a second line of defence, every
identifier read from an uploaded or pulled DICOM header (Patient's Name and its components,
Patient ID, Other Patient IDs, Accession Number, Patient's Birth Date) is registered with a
:class:`PhiRedactor`, and :func:`install` makes every log record of the process pass through
it: each registered identifier is replaced by ``[redacted]`` in the message template and in the
arguments, which keep their shape (a tuple stays a tuple, numbers stay numbers), so formatters
that read ``record.args`` themselves (uvicorn's access log unpacks the client, method, path,
HTTP version and status code) keep working. It works for every logger and handler (uvicorn's
included) because it hooks :func:`logging.setLogRecordFactory` (tracebacks are formatted and
redacted at the same time). :class:`PhiFilter` does the same as a :class:`logging.Filter` for handlers a
deployment adds through its own logging configuration.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping

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


_PLAIN = (int, float, bool, type(None))


def _redact_value(value: object, redact: Callable[[str], str]) -> object:
    """A log argument with identifiers replaced: strings redacted, numbers kept, anything
    else kept when its text holds no identifier and replaced by the redacted text otherwise."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    text = str(value)
    clean = redact(text)
    return value if clean == text else clean


def redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Redact ``record`` in place: its template, its arguments (same shape) and its traceback
    text. A record whose message cannot be formatted is left as it is."""
    try:
        record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string stays as it was
        return
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_value(a, redact) for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: _redact_value(v, redact) for k, v in record.args.items()}
    elif record.args is not None:
        record.args = _redact_value(record.args, redact)  # type: ignore[assignment]
    try:
        record.getMessage()
    except Exception:  # noqa: BLE001 - redaction changed a value a format spec needs
        record.msg, record.args = redact(str(record.msg)), None
    if record.exc_info and not record.exc_text:  # tracebacks can quote values too
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)


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
            if any(r._pattern is not None for r in list(_active)):
                redact_record(record, _redact_all)
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
        redact_record(record, self.redactor.redact)
        return True
