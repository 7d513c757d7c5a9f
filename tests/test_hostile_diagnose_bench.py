"""The whole hostile corpus (pydicom's test files, their truncations and byte flips, made-up
contradicting headers, non-DICOM files named .dcm, empty files, garbage JPEG 2000) through
``lumbardx diagnose`` and the web app's upload (``bench/hostile_diagnose.py``): one line per
file naming the problem, no traceback, no crash, no server error."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_bench


def test_hostile_corpus_through_cli_and_app(tmp_path: Path) -> None:
    bench = load_bench("hostile_diagnose")
    out = tmp_path / "result.json"
    assert bench.main(["--out", str(out), "--timeout", "900"]) == 0
    result = json.loads(out.read_text())
    assert result["clean"] and result["files"] > 250
    cli, app = result["cli"], result["app"]
    assert cli["exit_code"] == 1 and not cli["traceback_in_output"]
    assert cli["rows"] == result["files"] and not cli["failures_without_one_line_reason"]
    assert sum(cli["status"].values()) == result["files"]
    assert app["uploads"] == result["files"] and not app["problems"]
    assert app["server_answers_after"]
    assert set(app["http"]) <= {"200", "201", "400", "413", "415", "422"}
