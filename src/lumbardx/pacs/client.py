"""DICOMweb client for a PACS: find sagittal MR series, pull them, push results back.

Built on ``dicomweb-client`` (:class:`dicomweb_client.api.DICOMwebClient`):

* search: QIDO-RS ``search_for_series`` (filters Modality, PatientID, StudyInstanceUID). QIDO
  does not return Image Orientation (Patient), so the plane of each series is read from the
  WADO-RS metadata of its middle instance (by Instance Number) and judged with
  :func:`lumbardx.data.dicom.plane_name` / :func:`~lumbardx.data.dicom.is_sagittal`;
* pull: WADO-RS ``iter_series`` asking for the stored transfer syntax (``transfer-syntax=*``,
  no transcoding on the server), each instance written as ``<SOPInstanceUID>.dcm`` through a
  temporary file renamed into place;
* push: STOW-RS ``store_instances`` in batches; instances the server refuses are reported with
  the server's failure reason.

Errors are :class:`PacsError` naming the service URL (never credentials or query parameters
such as a Patient ID), the operation and the problem (connection refused, authentication
failed, not found, ...). Transient answers (HTTP 429 / 502 / 503 / 504, connection resets) are
retried a few times with a short back-off by ``urllib3``; the library's own retry loop, which
also retries a refused connection for about 15 s, is switched off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from lumbardx.data.dicom import plane_name, read_header
from lumbardx.data.errors import ImageReadError, LumbardxError
from lumbardx.pacs import save_atomic
from lumbardx.pacs.config import DEFAULT_TIMEOUT_S, PacsSettings, redact_url

log = logging.getLogger(__name__)
# dicomweb-client logs request URLs (with query parameters such as PatientID) at DEBUG level;
# patient identifiers must not reach application logs.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

STORE_BATCH = 20  # instances per STOW-RS request (bounded memory and request size)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SERIES_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                  "SeriesDescription", "NumberOfSeriesRelatedInstances", "StudyDate")
T = TypeVar("T")


class PacsError(LumbardxError):
    """A PACS request that failed. ``url`` has no credentials; ``status`` is the HTTP status
    code when the server answered, else ``None``."""

    def __init__(self, url: str, problem: str, status: int | None = None) -> None:
        self.url = redact_url(url)
        self.problem = problem
        self.status = status
        super().__init__(f"{self.url}: {problem}")


@dataclass(frozen=True)
class SeriesInfo:
    """One series found on the PACS (no patient name or ID).

    Attributes:
        study_uid, series_uid: Study / Series Instance UID.
        modality: e.g. ``"MR"``.
        series_number: Series Number, ``None`` when absent.
        description: Series Description (``""`` when absent).
        n_instances: number of instances the PACS holds, ``None`` when not reported.
        plane: ``"sagittal"``, ``"coronal"``, ``"axial"``, ``"oblique"`` or ``"unknown"``.
        study_date: Study Date as ``YYYYMMDD`` (``""`` when absent).
    """

    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    n_instances: int | None
    plane: str
    study_date: str = ""

    @property
    def is_sagittal(self) -> bool:
        """Whether the series' slices are sagittal."""
        return self.plane == "sagittal"


def _value(item: dict[str, Any], keyword: str) -> Any:
    """First value of ``keyword`` in a DICOM JSON object, ``None`` when absent."""
    tag = tag_for_keyword(keyword)
    element = item.get(f"{tag:08X}", {}) if tag is not None else {}
    values = element.get("Value") or [None]
    return values[0]


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class PacsClient:
    """DICOMweb access to one PACS.

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
        user, password: HTTP Basic credentials (``None``: no authentication).
        verify: TLS verification: ``True``, ``False`` or a CA bundle path.
        timeout_s: seconds to wait for a connection and for each answer.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None,
                 verify: bool | str = True, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = PacsSettings(url=url, user=user, password=password, verify=verify,
                                     timeout_s=timeout_s)
        session = requests.Session()
        session.auth = self.settings.auth
        session.verify = self.settings.verify
        retry = Retry(total=3, connect=0, read=1, status=2, backoff_factor=0.5,
                      status_forcelist=(429, 502, 503, 504), allowed_methods=("GET",),
                      raise_on_status=False)
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        self._session = session
        self._web = DICOMwebClient(self.settings.url, session=session,
                                   timeout=self.settings.timeout_s)
        self._web.set_http_retry_params(retry=False)

    @classmethod
    def from_settings(cls, settings: PacsSettings) -> PacsClient:
        """A client for resolved :class:`~lumbardx.pacs.config.PacsSettings`."""
        return cls(settings.url, settings.user, settings.password, settings.verify,
                   settings.timeout_s)

    @property
    def url(self) -> str:
        """The DICOMweb root (without credentials)."""
        return self.settings.url

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- error mapping -------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request, turning transport and HTTP failures into :class:`PacsError`."""
        try:
            return fn()
        except requests.exceptions.SSLError:
            raise PacsError(self.url, f"{what}: TLS certificate verification failed; give the "
                                      "PACS's CA bundle (--ca-bundle)") from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            reason = ("connection refused: is the PACS running and the port right?"
                      if "refused" in text.lower() else
                      "host name not found" if "resolve" in text.lower() or "name or service"
                      in text.lower() else "cannot connect to the PACS")
            raise PacsError(self.url, f"{what}: {reason}") from None
        except requests.exceptions.Timeout:
            raise PacsError(self.url, f"{what}: no answer within "
                                      f"{self.settings.timeout_s:g} s") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise PacsError(self.url, f"{what}: {_http_problem(status)}", status) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(self.url, f"{what}: request failed ({type(exc).__name__})") from None

    # -- search ----------------------------------------------------------------------------------
    def find_series(self, patient_id: str | None = None, study_uid: str | None = None,
                    modality: str | None = "MR", sagittal_only: bool = True
                    ) -> list[SeriesInfo]:
        """Series matching the filters, with their plane read from instance metadata.

        Args:
            patient_id: Patient ID to match exactly (``None``: any).
            study_uid: Study Instance UID to search in (``None``: all studies).
            modality: Modality to match (``None``: any).
            sagittal_only: keep only series whose plane is sagittal.

        Returns:
            Series sorted by study date, study UID and series number.

        Raises:
            PacsError: connection, authentication or server failure.
        """
        filters: dict[str, Any] = {}
        if modality:
            filters["Modality"] = modality
        if patient_id:
            filters["PatientID"] = patient_id
        found = self._call("search for series", lambda: self._web.search_for_series(
            study_instance_uid=study_uid, fields=_SERIES_FIELDS, search_filters=filters,
            get_remaining=True))
        series = []
        for item in found:
            study = _value(item, "StudyInstanceUID") or study_uid
            uid = _value(item, "SeriesInstanceUID")
            if not study or not uid:
                continue
            series.append(SeriesInfo(
                study_uid=str(study), series_uid=str(uid),
                modality=str(_value(item, "Modality") or ""),
                series_number=_as_int(_value(item, "SeriesNumber")),
                description=str(_value(item, "SeriesDescription") or ""),
                n_instances=_as_int(_value(item, "NumberOfSeriesRelatedInstances")),
                plane=self.series_plane(str(study), str(uid)),
                study_date=str(_value(item, "StudyDate") or "")))
        if sagittal_only:
            series = [s for s in series if s.is_sagittal]
        return sorted(series, key=lambda s: (s.study_date, s.study_uid,
                                             s.series_number if s.series_number is not None
                                             else 1 << 30, s.series_uid))

    def series_plane(self, study_uid: str, series_uid: str) -> str:
        """Plane of a series from the WADO-RS metadata of its middle instance (by Instance
        Number): ``"sagittal"``, ``"coronal"``, ``"axial"``, ``"oblique"`` or ``"unknown"``."""
        instances = self._call("search for instances", lambda: self._web.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid,
            fields=("SOPInstanceUID", "InstanceNumber"), get_remaining=True))
        uids = [(_as_int(_value(i, "InstanceNumber")) or 0, str(_value(i, "SOPInstanceUID")))
                for i in instances if _value(i, "SOPInstanceUID")]
        if not uids:
            return "unknown"
        _, sop_uid = sorted(uids)[len(uids) // 2]
        meta = self._call("read instance metadata", lambda: self._web.retrieve_instance_metadata(
            study_instance_uid=study_uid, series_instance_uid=series_uid,
            sop_instance_uid=sop_uid))
        try:
            header = Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, uri: b"")
        except Exception as exc:  # malformed DICOM JSON from the server
            log.warning("%s: metadata of one instance is not valid DICOM JSON (%s)",
                        self.url, type(exc).__name__)
            return "unknown"
        return plane_name(header)

    # -- pull ------------------------------------------------------------------------------------
    def pull_series(self, study_uid: str, series_uid: str, dest: str | Path) -> list[Path]:
        """Retrieve every instance of a series into ``dest`` as ``<SOPInstanceUID>.dcm``.

        Instances arrive as stored on the PACS (no transcoding). Each file is written to a
        temporary name and renamed into place, so ``dest`` never holds half a file; files
        already written stay when a later instance fails.

        Returns:
            The written paths, in the order the PACS sent them.

        Raises:
            PacsError: connection / authentication failure, unknown series (404), or an
                instance without a valid SOP Instance UID.
        """
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        what = "retrieve series"
        stream: Iterator[Dataset] = self._call(what, lambda: self._web.iter_series(
            study_instance_uid=study_uid, series_instance_uid=series_uid,
            media_types=(("application/dicom", "*"),)))
        written: list[Path] = []
        while True:
            ds = self._call(what, lambda: next(stream, None))
            if ds is None:
                break
            uid = str(ds.get("SOPInstanceUID", ""))
            if not _UID.match(uid) or len(uid) > 64:
                raise PacsError(self.url, f"{what}: the PACS sent an instance without a valid "
                                          "SOP Instance UID")
            written.append(save_atomic(ds, out / f"{uid}.dcm"))
        if not written:
            raise PacsError(self.url, f"{what}: the series holds no instances", 404)
        return written

    # -- push ------------------------------------------------------------------------------------
    def push(self, paths: Iterable[str | Path],
             on_error: Callable[[Path, Exception], None] | None = None) -> list[Path]:
        """Store DICOM Part 10 files on the PACS (STOW-RS), ``STORE_BATCH`` per request.

        Args:
            paths: DICOM files (e.g. ``sr.dcm`` and ``overlay_sc.dcm`` of a diagnose run).
            on_error: called with ``(path, error)`` for a file that cannot be read or that the
                PACS refuses; the others are still stored. ``None``: raise on the first one.

        Returns:
            The files the PACS stored.

        Raises:
            InputError: (when ``on_error`` is ``None``) a file is not readable DICOM.
            PacsError: connection / authentication failure; (when ``on_error`` is ``None``) a
                refused instance.
        """
        stored: list[Path] = []
        batch: list[tuple[Path, Dataset]] = []
        for path in map(Path, paths):
            try:
                batch.append((path, _read_instance(path)))
            except LumbardxError as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
            if len(batch) >= STORE_BATCH:
                stored += self._store(batch, on_error)
                batch = []
        if batch:
            stored += self._store(batch, on_error)
        return stored

    def _store(self, batch: list[tuple[Path, Dataset]],
               on_error: Callable[[Path, Exception], None] | None) -> list[Path]:
        answer = self._call("store instances", lambda: self._web.store_instances(
            [ds for _, ds in batch]))
        failed = {str(item.get("ReferencedSOPInstanceUID", "")): item.get("FailureReason")
                  for item in (answer.get("FailedSOPSequence") or [])} if answer else {}
        stored = []
        for path, ds in batch:
            uid = str(ds.SOPInstanceUID)
            if uid not in failed:
                stored.append(path)
                continue
            reason = failed[uid]
            error = PacsError(self.url, f"store instances: {path.name} was refused by the PACS"
                                        + (f" (failure reason 0x{int(reason):04X})"
                                           if reason is not None else ""))
            if on_error is None:
                raise error
            on_error(path, error)
        return stored


def _http_problem(status: int | None) -> str:
    """Plain-language meaning of an HTTP error status for a PACS user."""
    if status == 401:
        return "authentication failed (HTTP 401): wrong or missing user name or password"
    if status == 403:
        return "access denied (HTTP 403): the user may not do this on the PACS"
    if status == 404:
        return ("not found (HTTP 404): check the DICOMweb root in the URL (for Orthanc "
                "http://host:8042/dicom-web) and the study / series UIDs")
    if status == 413:
        return "the PACS refused the upload as too large (HTTP 413)"
    if status is not None and status >= 500:
        return f"the PACS reported an internal error (HTTP {status})"
    return f"the PACS refused the request (HTTP {status})"


def _read_instance(path: Path) -> Dataset:
    """The full data set of a DICOM Part 10 file that a PACS can file (has the UIDs)."""
    read_header(path)  # refuses non-Part-10, damaged and empty files with a clear message
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # damaged after the header (truncated pixel data, ...)
        raise ImageReadError(path, f"damaged or truncated DICOM file: {exc}") from None
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            raise ImageReadError(path, f"has no {keyword}; a PACS cannot file it")
    return ds
