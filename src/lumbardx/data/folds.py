"""Patient-grouped, class-stratified k-fold cross-validation.

Folds are made over patients, never images, so the T1 and T2 images of one exam always land
in the same fold. Classes are balanced with iterative stratification (Sechidis, Tsoumakas and
Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011) applied to patients,
each described by its number of boxes per class:

1. every fold wants ``1 / k`` of the boxes of each class and of the images;
2. the class with the fewest unassigned patients is taken first (rarest class first); each of
   its unassigned patients (in a seeded random order) goes to a fold that has no patient with
   that class yet, if any, else to the fold with the largest relative wish
   ``boxes of the class still wanted / boxes wanted + images still wanted / images wanted``
   (a plain box-count wish, as in Sechidis et al., leaves image counts up to +-20% apart when
   patients have different numbers of images), ties broken at random (seeded);
3. patients without any box go, one by one, to the fold that still wants the most images;
4. a greedy repair (moves, or swaps of two patients, fewest empty (fold, class) pairs first,
   then the smallest change of fold sizes) makes every class with at least ``k`` patients
   present in every fold whenever such steps reach it. Classes that still miss a fold (some
   patient tables admit no such split) are listed in :attr:`FoldAssignment.warnings`.

The result is deterministic for a given seed.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from lumbardx.data.errors import InputError

FOLDS_COLUMNS = ("image", "patient", "fold")


class _Record(Protocol):
    image_id: str
    patient: str
    labels: np.ndarray


class FoldableDataset(Protocol):
    """What :func:`make_folds` needs: ``class_names`` and ``records`` with image id, patient
    and ``labels`` (``int64 [N]`` class indices), e.g. a
    :class:`~lumbardx.data.dataset.LumbarDataset`."""

    root: Path
    class_names: list[str]

    @property
    def records(self) -> Sequence[_Record]: ...


@dataclass
class FoldAssignment:
    """The fold of every image (and so of every patient).

    Attributes:
        images: image ids (paths relative to the dataset root).
        patients: patient id per image.
        folds: 0-based fold index per image.
        k: number of folds.
        seed: the seed that made it (``None`` when read from a file).
        class_names: the classes stratified on (empty when read from a file).
        warnings: classes that could not be placed in every fold, and why.
    """

    images: list[str]
    patients: list[str]
    folds: list[int]
    k: int
    seed: int | None = None
    class_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def patient_folds(self) -> dict[str, int]:
        """Patient id -> fold.

        Raises:
            InputError: a patient is assigned to two folds.
        """
        out: dict[str, int] = {}
        for image, patient, fold in zip(self.images, self.patients, self.folds):
            if out.setdefault(patient, fold) != fold:
                raise InputError(
                    None, f"patient {patient!r} is in folds {out[patient]} and {fold} ({image})"
                )
        return out

    def image_folds(self) -> dict[str, int]:
        """Image id -> fold."""
        return dict(zip(self.images, self.folds))


def assign_patient_folds(
    counts: Mapping[str, Sequence[int]],
    k: int = 5,
    seed: int = 0,
    images_per_patient: Mapping[str, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Assign patients to ``k`` folds by iterative stratification (see module docstring).

    Args:
        counts: patient id -> number of boxes per class (length ``C``, same for all).
        k: number of folds, ``2 <= k <= number of patients``.
        seed: seed of the random tie-breaks and patient order.
        images_per_patient: patient id -> number of images (1 each when ``None``); folds are
            balanced on images.
        class_names: names of the ``C`` classes, for the warnings.

    Returns:
        ``(patient -> fold, warnings)``; a warning names each class with at least ``k``
        patients that is still absent from some fold.

    Raises:
        ValueError: ``k`` is below 2 or above the number of patients, or counts are ragged.
    """
    patients = list(counts)
    n = len(patients)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if k > n:
        raise ValueError(f"cannot make {k} folds from {n} patients")
    matrix = np.asarray([list(counts[p]) for p in patients], dtype=np.float64)  # [P, C]
    if matrix.ndim != 2:
        raise ValueError("every patient needs the same number of class counts")
    sizes = np.asarray(
        [float(images_per_patient[p]) if images_per_patient else 1.0 for p in patients]
    )  # [P]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # seeded processing order of patients
    fold_rank = rng.permutation(k)  # seeded tie-break between folds

    want = np.tile(matrix.sum(axis=0) / k, (k, 1))  # [k, C] boxes each fold still wants
    want_size = np.full(k, sizes.sum() / k)  # [k] images each fold still wants
    fold_of = np.full(n, -1, dtype=np.int64)
    present = matrix > 0  # [P, C]
    target = np.maximum(matrix.sum(axis=0) / k, 1e-9)  # [C] boxes per fold wanted
    target_size = max(sizes.sum() / k, 1e-9)
    holders = np.zeros((k, matrix.shape[1]), dtype=np.int64)  # [k, C] patients with class

    def place(i: int, c: int | None) -> None:
        # np.lexsort: last key is primary. With a class: folds without that class first, then
        # the largest relative wish for the class's boxes plus images, then the seeded rank.
        if c is None:
            best = int(np.lexsort((-fold_rank, want_size))[-1])
        else:
            score = want[:, c] / target[c] + want_size / target_size
            best = int(np.lexsort((-fold_rank, score, holders[:, c] == 0))[-1])
        fold_of[i] = best
        want[best] -= matrix[i]
        want_size[best] -= sizes[i]
        holders[best] += present[i]

    while True:
        unassigned = fold_of < 0
        remaining = (present & unassigned[:, None]).sum(axis=0)  # [C]
        if not remaining.any():
            break
        c = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for i in order:
            if fold_of[i] < 0 and present[i, c]:
                place(int(i), c)
    for i in order:
        if fold_of[i] < 0:
            place(int(i), None)

    missing = _repair_coverage(fold_of, present, sizes, k)
    names = list(class_names or [f"#{c}" for c in range(matrix.shape[1])])
    n_with = present.sum(axis=0)
    warnings = [
        f"class {names[c]!r}: {int(n_with[c])} patients, but absent from fold(s) "
        f"{', '.join(str(f) for f in folds)} (no split found that keeps every class in every fold)"
        for c, folds in missing.items()
    ]
    return {p: int(fold_of[i]) for i, p in enumerate(patients)}, warnings


def _repair_coverage(
    fold_of: np.ndarray, present: np.ndarray, sizes: np.ndarray, k: int
) -> dict[int, list[int]]:
    """Move or swap patients so every class with >= k patients is in every fold (in place).

    ``fold_of`` ``[P]`` fold per patient, ``present`` ``[P, C]`` bool, ``sizes`` ``[P]`` images.
    Greedy local search: for each (fold, class) pair still empty, try moving a patient with the
    class into the fold, alone or swapped with a patient of that fold; take the step that leaves
    the fewest empty pairs, then the smallest change of fold sizes. A step that only trades one
    empty pair for another is allowed once per patient (tabu), which gets past the usual local
    minima; the search stops when no step is left.

    Returns:
        class index -> folds still without it, for classes with >= k patients.
    """
    covered = np.flatnonzero(present.sum(axis=0) >= k)
    has = present[:, covered].astype(np.int64)  # [P, Cc]

    def held() -> np.ndarray:  # [k, Cc] patients with each covered class, per fold
        return np.stack([has[fold_of == f].sum(axis=0) for f in range(k)])

    moved: set[int] = set()  # patients moved by a sideways step (tabu: no cycles)
    for _ in range(2 * len(fold_of)):
        now = held()
        empty = int((now == 0).sum())
        if empty == 0:
            break
        best: tuple[int, float, int, int, int] | None = None  # (empty, size change, i, j, t)
        for t, c in zip(*np.nonzero(now == 0)):
            for i in np.flatnonzero(has[:, c]):
                s = int(fold_of[i])
                for j in [-1, *np.flatnonzero(fold_of == t)]:
                    new = now.copy()
                    new[s] -= has[i]
                    new[t] += has[i]
                    change = float(sizes[i])
                    if j >= 0:
                        new[t] -= has[j]
                        new[s] += has[j]
                        change = abs(float(sizes[i] - sizes[j]))
                    after = int((new == 0).sum())
                    sideways = after == empty and not np.array_equal(new == 0, now == 0)
                    tabu = i in moved or j in moved
                    if after > empty or (after == empty and (not sideways or tabu)):
                        continue
                    step = (after, change, int(i), int(j), int(t))
                    if best is None or step[:2] < best[:2]:
                        best = step
        if best is None:
            break
        after, _, i, j, t = best
        if after == empty:
            moved.update({i, j} - {-1})
        if j >= 0:  # j (in fold t) takes i's place
            fold_of[j] = fold_of[i]
        fold_of[i] = t
    final = held()
    return {
        int(covered[c]): [int(f) for f in np.flatnonzero(final[:, c] == 0)]
        for c in range(len(covered))
        if np.any(final[:, c] == 0)
    }


def make_folds(dataset: FoldableDataset, k: int = 5, seed: int = 0) -> FoldAssignment:
    """Patient-grouped, class-stratified folds of a dataset (see module docstring).

    Args:
        dataset: e.g. a :class:`~lumbardx.data.dataset.LumbarDataset`; its records give image
            ids, patients and mapped labels.
        k: number of folds.
        seed: seed of the tie-breaks; the same seed gives the same folds.

    Raises:
        InputError: the dataset has fewer than ``k`` patients (or ``k < 2``).
    """
    records = list(dataset.records)
    names = list(dataset.class_names)
    counts: dict[str, np.ndarray] = {}
    images: dict[str, int] = {}
    for rec in records:
        row = counts.setdefault(rec.patient, np.zeros(len(names), dtype=np.int64))
        row += np.bincount(np.asarray(rec.labels, dtype=np.int64), minlength=len(names))
        images[rec.patient] = images.get(rec.patient, 0) + 1
    try:
        by_patient, warnings = assign_patient_folds(
            {p: row.tolist() for p, row in counts.items()}, k, seed, images, names
        )
    except ValueError as err:
        raise InputError(getattr(dataset, "root", None), str(err)) from err
    return FoldAssignment(
        images=[r.image_id for r in records],
        patients=[r.patient for r in records],
        folds=[by_patient[r.patient] for r in records],
        k=k,
        seed=seed,
        class_names=names,
        warnings=warnings,
    )


def write_folds_csv(assign: FoldAssignment, path: Path) -> None:
    """Write ``image,patient,fold`` (fold 0-based), one row per image, in dataset order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FOLDS_COLUMNS)
        for row in zip(assign.images, assign.patients, assign.folds):
            writer.writerow(row)


def read_folds_csv(path: Path) -> FoldAssignment:
    """Read a folds CSV written by :func:`write_folds_csv`.

    Raises:
        InputError: unreadable file, missing column, a non-integer or negative fold, or a
            patient in two folds.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in FOLDS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(path, f"folds table lacks column(s) {', '.join(missing)}")
            rows = list(reader)
    except OSError as err:
        raise InputError(path, f"cannot read folds table: {err}") from err
    images, patients, folds = [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            fold = int(row["fold"])
        except (TypeError, ValueError):
            raise InputError(path, f"line {line}: fold {row['fold']!r} is not an integer") from None
        if fold < 0:
            raise InputError(path, f"line {line}: fold {fold} is negative (folds are 0-based)")
        images.append(row["image"])
        patients.append(row["patient"])
        folds.append(fold)
    if not folds:
        raise InputError(path, "folds table has no rows")
    assign = FoldAssignment(images=images, patients=patients, folds=folds, k=max(folds) + 1)
    try:
        assign.patient_folds()
    except InputError as err:
        raise InputError(path, err.problem) from None
    return assign


def split(
    dataset: FoldableDataset,
    fold: int,
    folds: FoldAssignment | Path | None = None,
    k: int = 5,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Indices of the dataset's training and validation images for one fold.

    Args:
        dataset: the dataset to split (indices refer to its records).
        fold: the validation fold, ``0 <= fold < k``.
        folds: an assignment, a folds CSV, or ``None`` to compute ``make_folds(dataset, k, seed)``.

    Returns:
        ``(train_idx, val_idx)``, sorted, disjoint, together covering the dataset.

    Raises:
        InputError: an image of the dataset is absent from the assignment, or ``fold`` is out
            of range.
    """
    if folds is None:
        assign = make_folds(dataset, k, seed)
    elif isinstance(folds, FoldAssignment):
        assign = folds
    else:
        assign = read_folds_csv(Path(folds))
    if not 0 <= fold < assign.k:
        raise InputError(None, f"fold {fold} is out of range for {assign.k} folds (0-based)")
    by_image = assign.image_folds()
    by_name: dict[str, int | None] = {}
    for image, f in by_image.items():
        name = Path(image).name
        by_name[name] = f if by_name.get(name, f) == f else None
    train, val = [], []
    for i, rec in enumerate(dataset.records):
        f = by_image.get(rec.image_id)
        if f is None:
            f = by_name.get(Path(rec.image_id).name)
        if f is None:
            raise InputError(
                getattr(dataset, "root", Path(".")) / rec.image_id,
                "image has no fold in the fold assignment",
            )
        (val if f == fold else train).append(i)
    return train, val
