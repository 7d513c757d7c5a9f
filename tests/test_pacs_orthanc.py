"""PACS round trip against a real Orthanc (DICOMweb): push, find sagittal, pull, results back.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (scripts/install-test-deps.sh);
the Orthanc tests skip, saying so, without them. The settings tests at the end need no server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import AXIAL, write_series
from orthanc import OrthancServer, free_loopback_port, orthanc  # noqa: F401 (fixture)
from pydicom.uid import EnhancedSRStorage, SecondaryCaptureImageStorage
from typer.testing import CliRunner

from lumbardx.cli.pacs import app
from lumbardx.clinical.findings import build_findings
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.data.series import load_study
from lumbardx.pacs import write_dicom_outputs
from lumbardx.pacs.client import PacsClient, PacsError
from lumbardx.pacs.config import PacsSettings, read_credentials_file, resolve_settings
from lumbardx.study import ModelInfo, Study, pixel_key

PATIENT_NAME = "Doe^Jane"
MODEL = ModelInfo(name="yolov5s", version="0.1.0+test", weights_sha256="ab" * 32,
                  class_names=["normal", "herniation", "spondylolisthesis"], image_size=640)


class Uploaded:
    """What the module fixture stored on the PACS."""

    def __init__(self, root: Path, patient_id: str, sagittal: list[Path], axial: list[Path]):
        self.root, self.patient_id = root, patient_id
        self.sagittal, self.axial = sagittal, axial
        first = pydicom.dcmread(sagittal[0])
        self.study_uid = str(first.StudyInstanceUID)
        self.sagittal_series = str(first.SeriesInstanceUID)
        self.axial_series = str(pydicom.dcmread(axial[0]).SeriesInstanceUID)


def _set_patient(paths: list[Path], patient_id: str) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient_id, PATIENT_NAME
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def uploaded(orthanc: OrthancServer,  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """A sagittal (5 slices) and an axial (3 slices) MR series of one study, pushed with
    :meth:`PacsClient.push`."""
    root = tmp_path_factory.mktemp("upload")
    sagittal = write_series(root / "sag", n=5, shape=(24, 20))
    study_uid = str(pydicom.dcmread(sagittal[0]).StudyInstanceUID)
    axial = write_series(root / "ax", n=3, orientation=AXIAL, study_uid=study_uid,
                         series_number=2, description="T2_TSE_AX", shape=(20, 20))
    patient_id = f"LX-{uuid.uuid4().hex[:10]}"
    _set_patient(sagittal + axial, patient_id)
    with PacsClient(orthanc.url, orthanc.user, orthanc.password) as client:
        stored = client.push(sagittal + axial)
    assert stored == sagittal + axial
    return Uploaded(root, patient_id, sagittal, axial)


def _client(server: OrthancServer) -> PacsClient:
    return PacsClient(server.url, server.user, server.password)


def test_push_stores_every_instance(orthanc: OrthancServer,  # noqa: F811
                                    uploaded: Uploaded) -> None:
    studies = orthanc.rest("/studies?expand")
    ours = [s for s in studies if s["MainDicomTags"]["StudyInstanceUID"] == uploaded.study_uid]
    assert len(ours) == 1 and len(ours[0]["Series"]) == 2
    counts = sorted(len(orthanc.rest(f"/series/{sid}")["Instances"])
                    for sid in ours[0]["Series"])
    assert counts == [3, 5]


def test_find_series_keeps_only_sagittal(orthanc: OrthancServer,  # noqa: F811
                                         uploaded: Uploaded) -> None:
    with _client(orthanc) as client:
        by_study = client.find_series(study_uid=uploaded.study_uid)
        by_patient = client.find_series(patient_id=uploaded.patient_id)
        every_plane = client.find_series(study_uid=uploaded.study_uid, sagittal_only=False)
        nobody = client.find_series(patient_id="NO-SUCH-PATIENT")
        not_ct = client.find_series(study_uid=uploaded.study_uid, modality="CT")
    assert [s.series_uid for s in by_study] == [uploaded.sagittal_series]
    assert by_patient == by_study
    info = by_study[0]
    assert (info.study_uid, info.modality, info.series_number, info.description,
            info.n_instances, info.plane) == (uploaded.study_uid, "MR", 1, "T2_TSE_SAG", 5,
                                              "sagittal")
    planes = {s.series_uid: s.plane for s in every_plane}
    assert planes == {uploaded.sagittal_series: "sagittal", uploaded.axial_series: "axial"}
    assert nobody == [] and not_ct == []


def test_pull_writes_the_same_instances(orthanc: OrthancServer, uploaded: Uploaded,  # noqa: F811
                                        tmp_path: Path) -> None:
    with _client(orthanc) as client:
        files = client.pull_series(uploaded.study_uid, uploaded.sagittal_series, tmp_path)
    sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, uploaded.sagittal)}
    got = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    assert set(got) == set(sent)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{u}.dcm" for u in sent)
    for uid, ds in got.items():
        assert ds.file_meta.TransferSyntaxUID == sent[uid].file_meta.TransferSyntaxUID
        np.testing.assert_array_equal(ds.pixel_array, sent[uid].pixel_array)
        assert ds.ImagePositionPatient == sent[uid].ImagePositionPatient
    # the pulled folder is a readable study for diagnose: the middle slice of the stack
    assert load_study(tmp_path)[0].pixels.max() == 300


def test_pull_unknown_series_names_the_problem(orthanc: OrthancServer,  # noqa: F811
                                               uploaded: Uploaded, tmp_path: Path) -> None:
    with _client(orthanc) as client, pytest.raises(PacsError, match="not found") as err:
        client.pull_series(uploaded.study_uid, "1.2.3.4.5", tmp_path / "x")
    assert err.value.status == 404 and orthanc.url in str(err.value)


def _study(image_folder: Path) -> Study:
    image = load_study(image_folder)[0]
    boxes = [Box("normal", 2, 3, 12, 6, score=0.9), Box("herniation", 3, 9, 13, 12, score=0.8),
             Box("normal", 3, 15, 14, 18, score=0.7)]
    findings = build_findings(boxes, (image.width, image.height))
    return Study(source=image.source, image=image, findings=findings, model=MODEL,
                 study_key=pixel_key(image.pixels))


def test_results_filed_in_the_source_study(orthanc: OrthancServer,  # noqa: F811
                                           uploaded: Uploaded, tmp_path: Path) -> None:
    study = _study(uploaded.root / "sag")
    rgb = np.stack([study.image.display] * 3, axis=-1)
    outputs = write_dicom_outputs(study, rgb, tmp_path / "out")
    (tmp_path / "out" / "report.txt").write_text("not DICOM")
    env = {"LUMBARDX_PACS_PASSWORD": orthanc.password}
    result = CliRunner().invoke(app, ["push", "--url", orthanc.url, "--user", orthanc.user,
                                      str(tmp_path / "out")], env=env)
    assert result.exit_code == 0, result.output
    assert "skipped 1 non-DICOM file" in result.output and "2 of 2 file(s) stored" in result.output
    sr_uid = str(pydicom.dcmread(outputs["sr"]).SeriesInstanceUID)
    sc_uid = str(pydicom.dcmread(outputs["overlay_sc"]).SeriesInstanceUID)
    with _client(orthanc) as client:
        found = client.find_series(study_uid=uploaded.study_uid, modality="SR",
                                   sagittal_only=False)
        assert [s.series_uid for s in found] == [sr_uid]
        every = client.find_series(study_uid=uploaded.study_uid, modality=None,
                                   sagittal_only=False)
        assert {s.series_uid for s in every} == {uploaded.sagittal_series,
                                                 uploaded.axial_series, sr_uid, sc_uid}
        sr = pydicom.dcmread(client.pull_series(uploaded.study_uid, sr_uid, tmp_path / "sr")[0])
        sc = pydicom.dcmread(client.pull_series(uploaded.study_uid, sc_uid, tmp_path / "sc")[0])
    assert sr.SOPClassUID == EnhancedSRStorage and sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == uploaded.study_uid
    assert sr.PatientID == uploaded.patient_id
    np.testing.assert_array_equal(sc.pixel_array, pydicom.dcmread(outputs["overlay_sc"])
                                  .pixel_array)


def test_wrong_password_is_named(orthanc: OrthancServer) -> None:  # noqa: F811
    secret = "not-the-password-123"
    with PacsClient(orthanc.url, orthanc.user, secret) as client:
        with pytest.raises(PacsError, match="authentication failed") as err:
            client.find_series(patient_id="ANY")
    assert err.value.status == 401
    assert orthanc.url in str(err.value) and secret not in str(err.value)
    assert "ANY" not in str(err.value)  # no patient identifier in the message


def test_unreachable_and_wrong_root_are_named(orthanc: OrthancServer) -> None:  # noqa: F811
    url = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    with PacsClient(url) as client, pytest.raises(PacsError, match="connection refused") as err:
        client.find_series()
    assert err.value.status is None and url in str(err.value)
    wrong_root = orthanc.url.replace("/dicom-web", "/dicomweb")
    with PacsClient(wrong_root, orthanc.user, orthanc.password) as client:
        with pytest.raises(PacsError, match="HTTP 404"):
            client.find_series()


def test_push_reports_a_bad_file_and_stores_the_rest(orthanc: OrthancServer,  # noqa: F811
                                                     tmp_path: Path) -> None:
    good = write_series(tmp_path / "s", n=1, shape=(8, 8))[0]
    bad = tmp_path / "notes.dcm"
    bad.write_text("not a DICOM file")
    errors: list[tuple[Path, Exception]] = []
    with _client(orthanc) as client:
        assert client.push([bad, good], on_error=lambda p, e: errors.append((p, e))) == [good]
        with pytest.raises(InputError, match="not a DICOM file") as err:
            client.push([bad])
    assert err.value.path == bad
    assert [p for p, _ in errors] == [bad] and "DICM" in str(errors[0][1])


def test_cli_pull(orthanc: OrthancServer, uploaded: Uploaded, tmp_path: Path) -> None:  # noqa: F811
    runner = CliRunner()
    args = ["pull", "--url", orthanc.url, "--user", orthanc.user, "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--patient-id", uploaded.patient_id],
                           env={"LUMBARDX_PACS_PASSWORD": orthanc.password})
    assert result.exit_code == 0, result.output
    folder = tmp_path / uploaded.study_uid / uploaded.sagittal_series
    assert len(list(folder.glob("*.dcm"))) == 5
    assert not (tmp_path / uploaded.study_uid / uploaded.axial_series).exists()
    assert "1 of 1 series pulled" in result.output
    assert PATIENT_NAME.split("^")[0] not in result.output
    assert uploaded.patient_id not in result.output
    # password asked for with hidden input when the environment has none
    result = runner.invoke(app, [*args, "--study", uploaded.study_uid,
                                 "--password-env", "LX_TEST_UNSET_VAR"],
                           input=orthanc.password + "\n", env={"LX_TEST_UNSET_VAR": ""})
    assert result.exit_code == 0, result.output
    assert orthanc.password not in result.output
    # nothing matches -> 1; wrong password -> 2 with the reason
    result = runner.invoke(app, [*args, "--patient-id", "NO-SUCH-PATIENT"],
                           env={"LUMBARDX_PACS_PASSWORD": orthanc.password})
    assert result.exit_code == 1 and "no sagittal MR series" in result.output
    result = runner.invoke(app, [*args, "--study", uploaded.study_uid],
                           env={"LUMBARDX_PACS_PASSWORD": "wrong"})
    assert result.exit_code == 2 and "authentication failed" in result.output
    result = runner.invoke(app, args, env={"LUMBARDX_PACS_PASSWORD": orthanc.password})
    assert result.exit_code == 2 and "--patient-id or --study" in result.output


# -- settings (no server needed) ---------------------------------------------------------------
def test_credentials_from_netrc_and_environment(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs.example.org:8443 login ai password filepw\n"
                     "machine other.example.org login someone password otherpw\n")
    netrc.chmod(0o600)
    url = "https://pacs.example.org:8443/dicom-web/"
    s = resolve_settings(url, credentials_file=netrc, environ={})
    assert (s.url, s.user, s.password) == ("https://pacs.example.org:8443/dicom-web", "ai",
                                           "filepw")
    s = resolve_settings(url, credentials_file=netrc, environ={"LUMBARDX_PACS_PASSWORD": "envpw"})
    assert (s.user, s.password) == ("ai", "envpw")
    s = resolve_settings(url, user="bob", credentials_file=netrc, environ={})
    assert (s.user, s.password) == ("bob", None)  # the file's password belongs to "ai"
    assert read_credentials_file(netrc, "http://unknown.example.org/") == (None, None)
    assert "filepw" not in repr(resolve_settings(url, credentials_file=netrc, environ={}))
    if os.name == "posix":
        netrc.chmod(0o644)
        with pytest.raises(InputError, match="chmod 600") as err:
            resolve_settings(url, credentials_file=netrc, environ={})
        assert err.value.path == netrc


def test_bad_urls_are_refused_without_echoing_secrets() -> None:
    with pytest.raises(InputError, match="user name or password") as err:
        PacsSettings("http://ai:topsecret@pacs.example.org/dicom-web")
    assert "topsecret" not in str(err.value)
    with pytest.raises(InputError, match="http:// or https://"):
        PacsSettings("ftp://pacs.example.org/dicom-web")
    with pytest.raises(InputError, match="query"):
        PacsSettings("http://pacs.example.org/dicom-web?PatientID=123")
    remote = PacsSettings("http://pacs.example.org/dicom-web", user="ai", password="pw")
    assert any("unencrypted" in w for w in remote.transport_warnings())
    assert PacsSettings("http://127.0.0.1:8042/dicom-web", user="ai").transport_warnings() == []
