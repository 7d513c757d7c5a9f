"""Patient-grouped, class-stratified folds: properties on synthetic tables and the real data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.folds import folds as folds_command
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.folds import (
    FoldAssignment,
    assign_patient_folds,
    make_folds,
    read_folds_csv,
    split,
    write_folds_csv,
)


@dataclass
class Rec:
    image_id: str
    patient: str
    labels: np.ndarray


@dataclass
class FakeDataset:
    """Just what make_folds needs: class names and records (image id, patient, labels)."""

    class_names: list[str]
    records: list[Rec] = field(default_factory=list)
    root: Path = Path("synthetic")


def table(n: int, rare: int, seed: int = 0) -> dict[str, list[int]]:
    """``n`` patients with box counts (common, medium, rare); ``rare`` have the rare class."""
    rng = np.random.default_rng(seed)
    counts = {f"p{i:03d}": [int(rng.integers(2, 9)), int(rng.integers(0, 4)), 0] for i in range(n)}
    for i in rng.choice(n, rare, replace=False):
        counts[f"p{i:03d}"][2] = int(rng.integers(1, 3))
    return counts


def dataset_from(counts: dict[str, list[int]], images: int = 2) -> FakeDataset:
    ds = FakeDataset(["normal", "herniation", "spondylolisthesis"])
    for p, row in counts.items():
        labels = np.repeat(np.arange(3), row)
        for j in range(images):  # T1/T2 of one exam carry the same boxes
            ds.records.append(Rec(f"images/{p}_{j}.png", p, labels))
    return ds


def presence(folds: dict[str, int], counts: dict[str, list[int]], k: int) -> np.ndarray:
    """``[k, C]`` number of patients having each class, per fold."""
    out = np.zeros((k, len(next(iter(counts.values())))), dtype=int)
    for p, row in counts.items():
        out[folds[p]] += np.asarray(row) > 0
    return out


def test_no_patient_in_two_folds_and_images_follow_patients() -> None:
    ds = dataset_from(table(60, 8), images=3)
    assign = make_folds(ds, k=5, seed=3)
    by_patient = assign.patient_folds()
    assert len(by_patient) == 60 and set(by_patient.values()) == set(range(5))
    for image, patient, fold in zip(assign.images, assign.patients, assign.folds):
        assert by_patient[patient] == fold and image.startswith(f"images/{patient}_")


def test_deterministic_by_seed_and_seeds_differ() -> None:
    counts = table(80, 10)
    a, _ = assign_patient_folds(counts, 5, seed=7)
    b, _ = assign_patient_folds(counts, 5, seed=7)
    c, _ = assign_patient_folds(counts, 5, seed=8)
    assert a == b
    assert a != c


@pytest.mark.parametrize("k", [3, 5, 10])
def test_rare_class_in_every_fold_when_k_patients_have_it(k: int) -> None:
    for seed in range(15):
        for rare in (k, k + 1, 2 * k - 1):  # exactly k patients is the hard case
            counts = table(12 * k, rare, seed)
            folds, warnings = assign_patient_folds(counts, k, seed)
            assert (presence(folds, counts, k) > 0).all(), (k, seed, rare)
            assert warnings == []


def test_two_rare_classes_sharing_patients() -> None:
    """Rare classes of exactly k patients that overlap, next to a class of k + 1 patients."""
    k = 5
    for seed in range(30):
        counts = {f"p{i:02d}": [3, 0, 0, 0] for i in range(30)}
        for i in range(5):
            counts[f"p{i:02d}"][1] = 1  # class 1: p00..p04
        for i in (0, 1, 5, 6, 7):
            counts[f"p{i:02d}"][2] = 2  # class 2: shares p00, p01 with class 1
        for i in (1, 2, 8, 9, 10, 11):
            counts[f"p{i:02d}"][3] = 1  # class 3: k + 1 patients
        folds, warnings = assign_patient_folds(counts, k, seed)
        assert (presence(folds, counts, k) > 0).all() and warnings == []


def test_random_tables_cover_every_class_that_can_be_covered() -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        n, c, k = int(rng.integers(6, 25)), int(rng.integers(2, 5)), int(rng.integers(2, 6))
        matrix = (rng.random((n, c)) < rng.random(c) * 0.6) * rng.integers(1, 4, (n, c))
        counts = {f"p{i}": matrix[i].tolist() for i in range(n)}
        folds, warnings = assign_patient_folds(counts, k, trial)
        coverable = (matrix > 0).sum(axis=0) >= k
        assert (presence(folds, counts, k)[:, coverable] > 0).all(), trial
        assert warnings == []


def test_balanced_sizes_and_classes() -> None:
    counts = table(200, 25, seed=1)
    images = {p: 1 + i % 3 for i, p in enumerate(counts)}
    folds, _ = assign_patient_folds(counts, 5, seed=0, images_per_patient=images)
    per_fold_images = np.bincount([folds[p] for p in counts], weights=[images[p] for p in counts])
    mean = sum(images.values()) / 5
    assert np.all(np.abs(per_fold_images - mean) <= 0.1 * mean), per_fold_images
    boxes = np.zeros((5, 3))
    for p, row in counts.items():
        boxes[folds[p]] += row
    target = np.asarray(list(counts.values())).sum(axis=0) / 5
    assert np.all(np.abs(boxes - target) <= np.maximum(0.1 * target, 2)), boxes


def test_too_few_patients() -> None:
    with pytest.raises(ValueError, match="3 patients"):
        assign_patient_folds(table(3, 1), k=5)
    with pytest.raises(InputError, match="3 patients"):
        make_folds(dataset_from(table(3, 1)), k=5)


def test_csv_round_trip_and_split(tmp_path: Path) -> None:
    ds = dataset_from(table(30, 6))
    assign = make_folds(ds, k=3, seed=1)
    path = tmp_path / "out" / "folds.csv"
    write_folds_csv(assign, path)
    assert path.read_text().splitlines()[0] == "image,patient,fold"
    back = read_folds_csv(path)
    assert (back.images, back.patients, back.folds, back.k) == (
        assign.images, assign.patients, assign.folds, 3)
    seen: set[int] = set()
    for fold in range(3):
        train, val = split(ds, fold, back)
        assert sorted(train + val) == list(range(len(ds.records)))
        assert not set(train) & set(val)
        assert {ds.records[i].patient for i in train}.isdisjoint(ds.records[i].patient for i in val)
        assert all(assign.folds[i] == fold for i in val)
        seen |= set(val)
    assert seen == set(range(len(ds.records)))
    assert split(ds, 0, path) == split(ds, 0, assign) == split(ds, 0, k=3, seed=1)
    with pytest.raises(InputError, match="out of range"):
        split(ds, 3, assign)


def test_bad_folds_csv(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("image,patient,fold\na.png,p1,0\nb.png,p1,1\n")
    with pytest.raises(InputError, match="p1") as err:
        read_folds_csv(path)
    assert err.value.path == path
    path.write_text("image,fold\na.png,0\n")
    with pytest.raises(InputError, match="patient"):
        read_folds_csv(path)
    ds = FakeDataset(["normal"], [Rec("images/z.png", "p9", np.zeros(1, dtype=np.int64))])
    with pytest.raises(InputError, match="no fold"):
        split(ds, 0, FoldAssignment(["images/a.png"], ["p1"], [0], k=2))


def test_cli_on_a_small_folder(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  - Normal IVD\n  - Spondylolisthesis\n")
    rows = ["image,patient"]
    for i in range(12):
        name = f"s_{i:02d}"
        Image.fromarray(np.full((32, 32), i, dtype=np.uint8)).save(
            (root / "images").mkdir(exist_ok=True) or root / "images" / f"{name}.png")
        lines = ["0 0.5 0.3 0.2 0.1"] + (["1 0.5 0.6 0.3 0.3"] if i % 4 == 0 else [])
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        rows.append(f"{name}.png,P{i // 2}")
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    app = typer.Typer()
    app.command()(folds_command)
    out = tmp_path / "folds.csv"
    result = CliRunner().invoke(app, [str(root), "-k", "3", "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "spondylolisthesis" in result.output
    assign = read_folds_csv(out)
    assert len(assign.images) == 12 and assign.k == 3
    ds = LumbarDataset(root)
    slip_folds = {assign.folds[i] for i, r in enumerate(ds.records) if 2 in r.labels}
    assert slip_folds == {0, 1, 2}  # 3 patients with a slip, one per fold
    assert len(assign.patient_folds()) == 6


def test_real_data(yolospine_dev: Path) -> None:
    ds = LumbarDataset(yolospine_dev, classes="study")
    assign = make_folds(ds, k=5, seed=0)
    by_patient = assign.patient_folds()  # raises if a patient were in two folds
    assert len(by_patient) == 412 and assign.warnings == []
    folds = np.asarray(assign.folds)
    for fold in range(5):
        labels = np.concatenate([ds.records[i].labels for i in np.flatnonzero(folds == fold)])
        counts = np.bincount(labels, minlength=3)
        assert counts[2] >= 10, counts  # 98 slip boxes of 44 patients: ~20 per fold
        assert abs((folds == fold).sum() - 832 / 5) <= 15
        train, val = split(ds, fold, assign)
        assert {ds.records[i].patient for i in train}.isdisjoint(ds.records[i].patient for i in val)
    assert make_folds(ds, k=5, seed=0).folds == assign.folds


def test_repair_swaps_patients_to_cover_every_fold() -> None:
    """A start where each class sits in one fold only; one swap fixes both, sizes kept."""
    from lumbardx.data.folds import _repair_coverage

    present = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)  # a, b: A; c, d: B
    fold_of = np.array([0, 0, 1, 1])
    assert _repair_coverage(fold_of, present, np.ones(4), k=2) == {}
    assert sorted(np.bincount(fold_of).tolist()) == [2, 2]
    for f in range(2):
        assert present[fold_of == f].any(axis=0).all()


def test_repair_needs_more_than_one_step() -> None:
    """Three classes of 5 or 6 patients over 5 folds (a table where greedy stratification alone
    has left a class out of a fold): starting from everything in fold 0, repair covers all."""
    from lumbardx.data.folds import _repair_coverage

    rows = [(0, 1, 1), (0, 1, 1), (1, 1, 0), (1, 1, 0), (1, 0, 1), (1, 0, 1), (0, 0, 1),
            (0, 0, 0), (1, 0, 0), (1, 1, 1)]
    present = np.array(rows, dtype=bool)
    fold_of = np.zeros(len(rows), dtype=np.int64)
    assert _repair_coverage(fold_of, present, np.ones(len(rows)), k=5) == {}
    for f in range(5):
        assert present[fold_of == f].any(axis=0).all(), fold_of
