"""Reader study: Ke et al. (2025) Table 3 reproduced from its counts, validation, outputs, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.readerstudy import reader_study
from lumbardx.clinical.readerstudy import load_reads, load_truth, parse_label
from lumbardx.clinical.readerstudy_analysis import run_reader_study
from lumbardx.clinical.readerstudy_report import write_reader_study
from lumbardx.data.errors import InputError

SITES = ["T10-T11", "T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
# CLINICAL.md / the paper's Table 3: true positives of 198, true negatives of 193, mean time (s)
TABLE3 = {
    "surgeon 4y": (148, 181, 87.0),
    "surgeon 8y": (152, 179, 89.3),
    "surgeon 15y": (180, 182, 92.5),
    "AI": (194, 190, 14.5),
}
# The paper's percentages (sensitivity, specificity, accuracy).
TABLE3_PERCENT = {
    "surgeon 4y": (74.75, 93.78, 84.14),
    "surgeon 8y": (76.77, 92.75, 84.65),
    "surgeon 15y": (90.91, 94.30, 92.58),
    "AI": (97.98, 98.45, 98.21),
}


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def build_table3(folder: Path) -> dict[str, object]:
    """50 cases, 391 discs (198 diseased, 193 normal) and four readers with Table 3's counts.

    Times: the 4- and 15-year surgeons give the case time on the case's first row only (other
    rows blank); the 8-year surgeon and the AI give it split over the case's rows.
    """
    rng = np.random.default_rng(2025)
    discs = [(f"P{c:03d}", s) for c in range(50) for s in SITES[(0 if c < 41 else 1) :]]
    assert len(discs) == 391
    positive = np.zeros(391, dtype=bool)
    positive[rng.choice(391, 198, replace=False)] = True
    finding = np.where(np.arange(391) % 3 == 0, "spondylolisthesis", "herniation")
    truth_labels = np.where(positive, finding, "normal")
    truth = _write(
        folder / "truth.csv",
        ["case", "site", "truth"],
        [[c, s, t] for (c, s), t in zip(discs, truth_labels, strict=True)],
    )
    case_of = np.array([c for c, _ in discs])
    n_sites = {c: int(np.sum(case_of == c)) for c in set(case_of)}
    offsets = np.tile([-10.0, 10.0], 25)  # per-case times vary, the mean is exact
    rows, calls, labels = [], {}, {}
    for name, (tp, tn, mean_t) in TABLE3.items():
        call = positive.copy()
        call[rng.choice(np.flatnonzero(positive), 198 - tp, replace=False)] = False
        call[rng.choice(np.flatnonzero(~positive), 193 - tn, replace=False)] = True
        calls[name] = call
        seen: set[str] = set()
        for i, ((c, s), pos) in enumerate(zip(discs, call, strict=True)):
            case_t = mean_t + offsets[int(c[1:])] * (mean_t > 20)
            if name in ("surgeon 8y", "AI"):
                sec: object = case_t / n_sites[c]
            else:
                sec = "" if c in seen else case_t
            seen.add(c)
            label = (
                truth_labels[i]
                if pos and truth_labels[i] != "normal"
                else ("herniation" if pos else "normal")
            )
            if name == "surgeon 4y" and label == "spondylolisthesis" and i % 2 == 0:
                label = "bulge"  # detected, but named as a herniation (alias of herniation)
            labels.setdefault(name, []).append("herniation" if label == "bulge" else label)
            rows.append([name, c, s, label, sec])
    reads = _write(folder / "reads.csv", ["reader", "case", "site", "call", "seconds"], rows)
    return {
        "reads": reads,
        "truth": truth,
        "positive": positive,
        "finding": truth_labels,
        "calls": calls,
        "labels": {k: np.array(v) for k, v in labels.items()},
    }


@pytest.fixture(scope="module")
def table3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return build_table3(tmp_path_factory.mktemp("table3"))


@pytest.fixture(scope="module")
def result(table3: dict[str, object]):
    return run_reader_study(table3["reads"], table3["truth"], seed=11, n_boot=2000)


def test_table3_percentages_to_two_decimals(result) -> None:
    assert (result.n_cases, result.n_discs, result.n_positive, result.n_negative) == (
        50,
        391,
        198,
        193,
    )
    by_name = {r.reader: r for r in result.readers}
    assert set(by_name) == set(TABLE3)
    for name, (sens, spec, acc) in TABLE3_PERCENT.items():
        r = by_name[name]
        tp, tn, _ = TABLE3[name]
        assert r.sensitivity.fraction == f"{tp}/198"
        assert r.specificity.fraction == f"{tn}/193"
        assert r.accuracy.fraction == f"{tp + tn}/391"
        assert round(100 * r.sensitivity.estimate, 2) == sens
        assert round(100 * r.specificity.estimate, 2) == spec
        assert round(100 * r.accuracy.estimate, 2) == acc
        assert r.sensitivity.ci_low < r.sensitivity.estimate < r.sensitivity.ci_high
    assert result.ai == "AI" and by_name["AI"].is_ai and not by_name["surgeon 4y"].is_ai


def test_mean_time_per_case(result) -> None:
    for r in result.readers:
        assert r.timed_cases == 50
        assert r.mean_seconds_per_case == pytest.approx(TABLE3[r.reader][2], abs=1e-9)


def test_per_finding_and_exact_agreement(result, table3) -> None:
    truth = table3["finding"]
    misnamed = 0
    for r in result.readers:
        call, label = table3["calls"][r.reader], table3["labels"][r.reader]
        assert r.exact_agreement.successes == int(np.sum(label == truth))
        for f in r.per_finding:
            m = truth == f.finding
            assert f.discs == int(m.sum())
            assert f.detected.successes == int(call[m].sum())
            assert f.exact.successes == int(np.sum(label[m] == f.finding))
            misnamed += f.detected.successes - f.exact.successes
    # only the 4-year surgeon names some detected slips as herniation (written as "bulge")
    s4 = next(r for r in result.readers if r.reader == "surgeon 4y")
    assert s4.exact_agreement.successes < s4.accuracy.successes
    assert misnamed == s4.accuracy.successes - s4.exact_agreement.successes > 0


def test_paired_comparisons(result, table3) -> None:
    comps = [c for c in result.comparisons]
    assert {c.reader for c in comps} == {"surgeon 4y", "surgeon 8y", "surgeon 15y"}
    assert len(comps) == 9
    for c in comps:
        tp_ai, tn_ai, _ = TABLE3["AI"]
        tp, tn, _ = TABLE3[c.reader]
        if c.metric == "accuracy":
            assert c.mcnemar_p is None and c.holm_p is None
            continue
        # b - c equals the difference in correct discs
        expected = tp_ai - tp if c.metric == "sensitivity" else tn_ai - tn
        assert c.mcnemar_b - c.mcnemar_c == expected
        assert c.holm_p >= c.mcnemar_p
        assert c.boot_resamples == 2000
        assert c.boot_ci_low <= c.difference <= c.boot_ci_high
    s15 = next(c for c in comps if c.reader == "surgeon 15y" and c.metric == "specificity")
    assert s15.chi2_pearson_p < 0.05 < s15.chi2_yates_p
    assert s15.chi2_pearson == pytest.approx(4.7435, abs=1e-3)
    assert len(result.cochran) == 2 and all(o.result.df == 3 for o in result.cochran)
    assert result.agreement is not None and result.agreement.readers == [
        "surgeon 4y",
        "surgeon 8y",
        "surgeon 15y",
    ]
    assert -1 <= result.agreement.fleiss_presence <= 1


def test_bootstrap_is_seeded(table3, result) -> None:
    again = run_reader_study(table3["reads"], table3["truth"], seed=11, n_boot=2000)
    other = run_reader_study(table3["reads"], table3["truth"], seed=12, n_boot=2000)
    ci = [(c.boot_ci_low, c.boot_ci_high) for c in result.comparisons]
    assert ci == [(c.boot_ci_low, c.boot_ci_high) for c in again.comparisons]
    assert ci != [(c.boot_ci_low, c.boot_ci_high) for c in other.comparisons]


def test_explicit_ai_and_no_ai(tmp_path: Path, table3) -> None:
    res = run_reader_study(table3["reads"], table3["truth"], ai="surgeon 15y", n_boot=0)
    assert res.ai == "surgeon 15y" and {c.reader for c in res.comparisons} == {
        "surgeon 4y",
        "surgeon 8y",
        "AI",
    }
    assert all(c.boot_resamples == 0 and math.isnan(c.boot_ci_low) for c in res.comparisons)
    with pytest.raises(InputError, match="'robot' is not a reader"):
        run_reader_study(table3["reads"], table3["truth"], ai="robot")
    reads = load_reads(table3["reads"])
    humans = reads[reads["reader"] != "AI"]
    humans.attrs["path"] = reads.attrs["path"]
    res = run_reader_study(humans, load_truth(table3["truth"]), n_boot=10)
    assert res.ai is None and res.comparisons == [] and res.notes
    assert len(res.cochran) == 2
    write_reader_study(res, tmp_path / "noai")
    assert (tmp_path / "noai" / "comparisons.csv").read_text().startswith("ai,reader,metric")


def test_outputs(tmp_path: Path, result) -> None:
    paths = write_reader_study(result, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == sorted(
        [
            "reader_study.md",
            "reader_study.csv",
            "comparisons.csv",
            "reader_study.json",
            "forest.png",
        ]
    )
    data = json.loads(paths["reader_study.json"].read_text())
    ai = next(r for r in data["readers"] if r["reader"] == "AI")
    assert (
        isinstance(ai["sensitivity"]["estimate"], float)
        and ai["sensitivity"]["fraction"] == "194/198"
    )
    assert isinstance(data["comparisons"][0]["mcnemar_p"], float)
    md = paths["reader_study.md"].read_text()
    for text in (
        "97.98% (194/198",
        "McNemar",
        "Holm",
        "Cochran",
        "STARD",
        "CLAIM",
        "Fleiss",
        "bootstrap",
    ):
        assert text in md
    with paths["reader_study.csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["reader"] for r in rows] == list(TABLE3)
    assert float(rows[0]["sensitivity"]) == pytest.approx(148 / 198)
    with Image.open(paths["forest.png"]) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 300


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("normal", "normal"),
        ("0", "normal"),
        (" Normal ", "normal"),
        ("1", "abnormal"),
        ("Herniation", "herniation"),
        ("bulge", "herniation"),
        ("SLIP", "spondylolisthesis"),
        ("central stenosis", "central stenosis"),
        ("2", None),
        ("yes", None),
        ("l4?", None),
        ("", None),
    ],
)
def test_label_vocabulary(raw: str, expected: str | None) -> None:
    assert parse_label(raw) == expected


def _bad(
    tmp_path: Path,
    reads_text: str,
    truth_text: str = "case,site,truth\n1,L4-L5,normal\n1,L5-S1,herniation\n",
):
    reads = tmp_path / "reads.csv"
    truth = tmp_path / "truth.csv"
    reads.write_text(reads_text)
    truth.write_text(truth_text)
    return reads, truth


GOOD_READS = (
    "reader,case,site,call\nAI,1,L4-L5,normal\nAI,1,L5-S1,1\nR1,1,L4-L5,0\nR1,1,L5-S1,normal\n"
)


@pytest.mark.parametrize(
    "reads_text,truth_text,bad_file,message",
    [
        ("", None, "reads", "empty"),
        ("reader,case,site,call\n", None, "reads", "no data rows"),
        ("reader,case,call\nAI,1,normal\n", None, "reads", "missing column(s) site"),
        (GOOD_READS, "case,site\n1,L4-L5\n", "truth", "missing column(s) truth"),
        (
            GOOD_READS + "AI,1,L3-L4,normal\nAI,2,L4-L5,normal\n",
            None,
            "reads",
            "2 row(s) name a disc missing from the truth file truth.csv: "
            "row 6 (case 1, site L3-L4); row 7",
        ),
        (
            GOOD_READS.replace("R1,1,L5-S1,normal\n", ""),
            None,
            "reads",
            "reader 'R1' has no call for 1 of 2 discs in truth.csv: case 1, site L5-S1",
        ),
        (
            GOOD_READS + "AI,1,L4-L5,1\n",
            None,
            "reads",
            "duplicate rows for the same reader/case/site: rows 2, 6",
        ),
        (
            GOOD_READS,
            "case,site,truth\n1,L4-L5,normal\n1,L5-S1,1\n1,L4-L5,1\n",
            "truth",
            "duplicate rows",
        ),
        (
            GOOD_READS.replace("AI,1,L5-S1,1", "AI,1,L5-S1,maybe?"),
            None,
            "reads",
            "row 3, column 'call': unknown label 'maybe?'",
        ),
        (
            GOOD_READS,
            "case,site,truth\n1,L4-L5,normal\n1,L5-S1,2\n",
            "truth",
            "row 3, column 'truth': unknown label '2'",
        ),
        (
            GOOD_READS.replace("AI,1,L5-S1,1", "AI,1,L5-S1,yes"),
            None,
            "reads",
            "unknown label 'yes'",
        ),
        (
            "reader,case,site,call,seconds\nAI,1,L4-L5,normal,12\nAI,1,L5-S1,1,abc\n",
            None,
            "reads",
            "row 3, column 'seconds': 'abc' is not a number",
        ),
        ("reader,case,site,call,seconds\nAI,1,L4-L5,normal,-4\n", None, "reads", "not a time >= 0"),
        (
            "reader,case,site,call\nAI,,L4-L5,normal\n",
            None,
            "reads",
            "row 2, column 'case': empty value",
        ),
        (
            "reader,case,site,call\nAI,1,L4-L5\n",
            None,
            "reads",
            "row 2: 3 fields but the header has 4",
        ),
    ],
)
def test_bad_input_names_file_and_problem(
    tmp_path: Path, reads_text: str, truth_text: str | None, bad_file: str, message: str
) -> None:
    reads, truth = _bad(tmp_path, reads_text, *([truth_text] if truth_text is not None else []))
    with pytest.raises(InputError) as err:
        run_reader_study(reads, truth, n_boot=0)
    assert err.value.path == (reads if bad_file == "reads" else truth)
    assert message in err.value.problem, err.value.problem


def test_every_fault_of_a_table_at_once(tmp_path: Path) -> None:
    """A table with several faults is refused once with all of them (fixed in one round);
    an equivocal call is refused, not read as a finding named "maybe"."""
    reads, truth = _bad(
        tmp_path,
        "reader,case,site,call,seconds\nAI,1,L4-L5,maybe,3\nAI,1,L5-S1,possible,x\n"
        "AI,1,L4-L5,normal,2\nR1,1,L4-L5,normal\nR1,,L5-S1,normal,4\n",
        "case,site,truth\n1,L4-L5,normal\n",
    )
    with pytest.raises(InputError) as err:
        run_reader_study(reads, truth, n_boot=0)
    assert err.value.problems == [
        "row 5: 4 fields but the header has 5", "row 6, column 'case': empty value"]
    reads.write_text("reader,case,site,call,seconds\nAI,1,L4-L5,maybe,3\nAI,1,L5-S1,possible,x"
                     "\nAI,1,L4-L5,normal,2\n")
    with pytest.raises(InputError) as err:
        run_reader_study(reads, truth, n_boot=0)
    first, second, third, fourth = err.value.problems
    assert first.startswith("row 2, column 'call': unknown label 'maybe'; accepted labels")
    assert "equivocal call" in first
    assert second == "row 3, column 'call': unknown label 'possible'"  # the help said once
    assert third == "row 3, column 'seconds': 'x' is not a number"
    assert fourth.startswith("duplicate rows for the same reader/case/site: rows 2, 4")
    assert err.value.problem.endswith("(and 3 more problems in this file)")


def test_missing_file_and_unloaded_table(tmp_path: Path, table3) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_truth(tmp_path / "absent.csv")
    raw = pd.read_csv(table3["reads"])
    with pytest.raises(InputError, match=r"lacks column.*read it with load_reads"):
        run_reader_study(raw, table3["truth"])


def test_time_rule_blank_cases_not_timed(tmp_path: Path) -> None:
    reads, truth = _bad(
        tmp_path,
        "reader,case,site,call,seconds\nAI,1,L4-L5,normal,10\nAI,1,L5-S1,1,5\nAI,2,L4-L5,1,\n"
        "R1,1,L4-L5,normal,\nR1,1,L5-S1,normal,\nR1,2,L4-L5,normal,\n",
        "case,site,truth\n1,L4-L5,normal\n1,L5-S1,herniation\n2,L4-L5,spondylolisthesis\n",
    )
    res = run_reader_study(reads, truth, n_boot=0)
    ai, r1 = res.readers
    assert (ai.mean_seconds_per_case, ai.timed_cases) == (15.0, 1)
    assert (r1.mean_seconds_per_case, r1.timed_cases) == (None, 0)
    assert ai.per_finding[1].finding == "spondylolisthesis"
    assert ai.per_finding[1].detected.successes == 1 and ai.per_finding[1].exact.successes == 0


def test_cli_writes_five_files_and_refuses_bad_input(tmp_path: Path, table3) -> None:
    app = typer.Typer()
    app.command()(reader_study)
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(
        app,
        [
            str(table3["reads"]),
            "--truth",
            str(table3["truth"]),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "reader_study.md",
            "reader_study.csv",
            "comparisons.csv",
            "reader_study.json",
            "forest.png",
        ]
    )
    assert "97.98%" in res.output
    assert json.loads((out / "reader_study.json").read_text())["n_boot"] == 200
    bad = tmp_path / "bad.csv"
    bad.write_text("reader,case,site\nAI,1,L4-L5\n")
    res = runner.invoke(
        app, [str(bad), "--truth", str(table3["truth"]), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2
    assert "bad.csv" in res.output and "missing column(s) call" in res.output
    assert not (tmp_path / "x").exists()
    bad.write_text("reader,case,site,call\nAI,1,L4-L5,maybe\nAI,1,L5-S1,[red]x[/red]\n")
    res = runner.invoke(
        app, [str(bad), "--truth", str(table3["truth"]), "--out", str(tmp_path / "x")],
        env={"COLUMNS": "400"})
    assert res.exit_code == 2
    listed = [line for line in res.output.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in listed] == ["  - row 2, column 'call'",
                                                        "  - row 3, column 'call'"]
    assert "'[red]x[/red]'" in res.output  # printed as written, not as markup
