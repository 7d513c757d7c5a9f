"""A study grows instead of clashing: the same patient's T1+T2 upload after the T2 alone
upgrades the stored study (analysed again, the earlier upload, outputs and review kept in its
history), while sending the same files again is still a duplicate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumbardx.app import AppSettings, create_app

from test_app_api import diagnoser, signed_in, upload  # noqa: F401 (fixture)
from test_app_security import PASSWORD


@pytest.fixture(scope="module")
def pair_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lumbardx.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("pair")
    generate_dataset(root, 1, seed=3, dicom=True,
                     config=SynthConfig(image_sizes=(256,), dicom_slices=(5,)), t1=True)
    return root / "dicom" / "case_00000"


def test_t1_t2_upload_upgrades_the_t2_study(tmp_path: Path, diagnoser, pair_study) -> None:  # noqa: ANN001, F811
    app = create_app(AppSettings(data_dir=tmp_path, analyse_in_background=False),
                     diagnoser=diagnoser)
    app.state.ctx.users.add("alice", PASSWORD)
    client, csrf = signed_in(app)
    t2 = sorted((pair_study / "t2").glob("*.dcm"))
    t1 = sorted((pair_study / "t1").glob("*.dcm"))

    first = upload(client, csrf, t2, "application/dicom")
    assert first.status_code == 201, first.text
    key = first.json()["study"]["study_key"]
    folder = tmp_path / "studies" / key
    r = client.post(f"/api/studies/{key}/review/complete", headers=csrf,
                    json={"accept_pending": True})
    assert r.status_code == 200
    assert upload(client, csrf, t2, "application/dicom").json()["duplicate"] is True

    both = upload(client, csrf, t2 + t1, "application/dicom")
    assert both.status_code == 201, both.text
    row = both.json()["study"]
    assert both.json()["duplicate"] is False and row["study_key"] == key
    assert row["status"] == "analysed" and row["n_files"] == len(t2) + len(t1)
    meta = json.loads((folder / "meta.json").read_text())
    assert [h["status"] for h in meta["history"]] == ["reviewed"]
    past = folder / meta["history"][0]["folder"]
    assert len(list((past / "original").iterdir())) == len(t2)
    assert json.loads((past / "review.json").read_text())["state"] == "complete"
    assert len(list((folder / "original").iterdir())) == len(t2) + len(t1)
    review = client.get(f"/api/studies/{key}/review").json()
    assert review["state"] == "open"  # the new analysis is reviewed afresh
    assert json.loads((folder / "findings.json").read_text())["review"] is None

    again = upload(client, csrf, t2 + t1, "application/dicom")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(json.loads((folder / "meta.json").read_text())["history"]) == 1
