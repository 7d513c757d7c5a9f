"""Reader studies, input side: read the READS and TRUTH tables, parse labels, check them.

Input tables (CSV, comma separated, UTF-8, header row; column names case-insensitive, extra
columns ignored):

* READS: ``reader,case,site,call`` and optional ``seconds``. One row per reader and disc.
* TRUTH: ``case,site,truth``. One row per disc (the reference standard, e.g. expert consensus).

``case`` is the patient (the unit of clustering), ``site`` names the disc within the case (a
level such as ``L4-L5`` or any id). Identifiers are compared exactly after trimming spaces.

Label vocabulary of ``call`` and ``truth`` (case-insensitive, spaces trimmed):

* negative: ``normal``, ``0``, ``negative`` (and the study's aliases such as ``normal disc``);
* positive, finding not named: ``1``, ``positive``, ``abnormal`` (all become ``abnormal``);
* positive, named finding: any name made of letters, words separated by a space, ``-`` or ``_``
  (``herniation``, ``spondylolisthesis``, ``stenosis``...); the study's aliases are merged
  (``bulge`` -> ``herniation``, ``slip`` -> ``spondylolisthesis``, see
  :data:`lumbardx.data.classes.STUDY_ALIASES`).
* refused as ambiguous: ``true``, ``false``, ``yes``, ``no``, ``none``, ``nan``, ``na``,
  ``null``, ``unknown``, ``missing``; anything else with digits or punctuation is refused too.

A disc is positive when its label is not ``normal``.

Time per case (``seconds``): a reader's seconds are summed over that reader's rows of the case
(so a time given once per case goes on one row, with the other rows blank; a time given per
disc is added up). Cases where all of the reader's rows are blank are not timed; the mean is
over timed cases.

Every inconsistency raises :class:`lumbardx.data.errors.InputError` naming the file and the
row or column. The analysis is in :mod:`lumbardx.clinical.readerstudy_analysis` (statistics in
:mod:`lumbardx.clinical.stats`), the written report in
:mod:`lumbardx.clinical.readerstudy_report`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lumbardx.data.classes import STUDY_ALIASES
from lumbardx.data.errors import InputError

READS_COLUMNS: tuple[str, ...] = ("reader", "case", "site", "call")
TRUTH_COLUMNS: tuple[str, ...] = ("case", "site", "truth")
NEGATIVE = "normal"
UNSPECIFIED = "abnormal"
#: Values refused because their polarity is not stated (a missing value, yes/no without the
#: question) or the call is equivocal: the study's protocol must decide those first.
AMBIGUOUS: frozenset[str] = frozenset(
    {"true", "false", "yes", "no", "none", "nan", "na", "null", "unknown", "missing",
     "maybe", "possible", "possibly", "probable", "probably", "equivocal", "uncertain",
     "indeterminate", "unsure", "borderline", "questionable", "doubtful"}
)
VOCABULARY_HELP = (
    "accepted labels (case-insensitive): normal/0/negative; 1/positive/abnormal; "
    "or a finding name made of letters (e.g. herniation, spondylolisthesis); an equivocal "
    "call (maybe, possible, ...) must be decided positive or negative by the study protocol"
)
_NAME = re.compile(r"[a-z]+(?:[ _-][a-z]+)*")
_SHOW = 5  # how many offending rows/discs an error message lists


def parse_label(raw: str) -> str | None:
    """The canonical label of a ``call``/``truth`` value, or ``None`` when it is refused.

    Returns ``"normal"`` (negative), ``"abnormal"`` (positive, finding not named) or the
    lower-case finding name (study aliases merged).
    """
    key = " ".join(str(raw).strip().lower().split())
    if key in ("0", "normal", "negative"):
        return NEGATIVE
    if key in ("1", "positive", "abnormal"):
        return UNSPECIFIED
    if key in STUDY_ALIASES:
        return STUDY_ALIASES[key]
    if key in AMBIGUOUS or not _NAME.fullmatch(key):
        return None
    return key


def _read_rows(
    path: Path, required: tuple[str, ...], what: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV as ``(line number, {lower-case column: stripped value})``."""
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"{what} file is not UTF-8 text ({exc.reason})") from exc
    if not text.strip():
        raise InputError(
            path, f"{what} file is empty; expected a header with columns {', '.join(required)}"
        )
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(path, f"header repeats column(s) {', '.join(dupes)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {', '.join(missing)} in the header (found: {', '.join(header)}); "
            f"a {what} table needs {', '.join(required)}",
        )
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[str] = []
    for cells in reader:
        if not any(f.strip() for f in cells):
            continue
        line = reader.line_num
        if len(cells) != len(header):
            problems.append(f"row {line}: {len(cells)} fields but the header has {len(header)}")
            continue
        row = {h: f.strip() for h, f in zip(header, cells, strict=True)}
        empty = [col for col in required if not row[col]]
        problems += [f"row {line}, column '{col}': empty value" for col in empty]
        if not empty:
            rows.append((line, row))
    if problems:
        raise InputError.of(path, problems)
    if not rows:
        raise InputError(path, f"{what} file has a header but no data rows")
    return header, rows


def _label(line: int, column: str, raw: str, problems: list[str]) -> str:
    """The canonical label of ``raw``; an unknown one is added to ``problems`` (as ``""``;
    the first says which labels are accepted)."""
    label = parse_label(raw)
    if label is None:
        said = any("unknown label" in p for p in problems)
        problems.append(f"row {line}, column '{column}': unknown label {raw!r}"
                        + ("" if said else f"; {VOCABULARY_HELP}"))
        return ""
    return label


def _duplicates(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The problem of rows repeating the same ``keys`` (at most one, naming the first few)."""
    dup = df[df.duplicated(keys, keep=False)]
    if dup.empty:
        return []
    first = dup.groupby(keys, sort=False)["line"].apply(list).head(_SHOW)
    parts = []
    for key, lines in first.items():
        where = ", ".join(f"{k} {v}" for k, v in zip(keys, key, strict=True))
        parts.append(f"rows {', '.join(map(str, lines))} ({where})")
    return [f"duplicate rows for the same {'/'.join(keys)}: {'; '.join(parts)}"]


def load_reads(path: str | Path) -> pd.DataFrame:
    """Read and validate a READS table.

    Returns a DataFrame with one row per call and columns ``line`` (CSV line number),
    ``reader``, ``case``, ``site``, ``call`` (as written), ``label`` (canonical, see
    :func:`parse_label`), ``positive`` (bool) and ``seconds`` (float, ``nan`` when blank or
    absent). ``df.attrs["path"]`` holds the file path.
    """
    path = Path(path)
    header, rows = _read_rows(path, READS_COLUMNS, "reads")
    has_seconds = "seconds" in header
    records = []
    problems: list[str] = []
    for line, row in rows:
        label = _label(line, "call", row["call"], problems)
        seconds = math.nan
        if has_seconds and row["seconds"]:
            try:
                seconds = float(row["seconds"])
            except ValueError:
                problems.append(f"row {line}, column 'seconds': {row['seconds']!r} is not a "
                                "number")
            else:
                if not math.isfinite(seconds) or seconds < 0:
                    problems.append(f"row {line}, column 'seconds': {row['seconds']!r} is not "
                                    "a time >= 0")
        records.append(
            (
                line,
                row["reader"],
                row["case"],
                row["site"],
                row["call"],
                label,
                label != NEGATIVE,
                seconds,
            )
        )
    df = pd.DataFrame.from_records(
        records, columns=["line", "reader", "case", "site", "call", "label", "positive", "seconds"]
    )
    problems += _duplicates(df, ["reader", "case", "site"])
    if problems:
        raise InputError.of(path, problems)
    df.attrs["path"] = str(path)
    return df


def load_truth(path: str | Path) -> pd.DataFrame:
    """Read and validate a TRUTH table.

    Returns a DataFrame with columns ``line``, ``case``, ``site``, ``truth`` (as written),
    ``label`` and ``positive``; ``df.attrs["path"]`` holds the file path.
    """
    path = Path(path)
    _, rows = _read_rows(path, TRUTH_COLUMNS, "truth")
    problems: list[str] = []
    records = [
        (line, row["case"], row["site"], row["truth"], _label(line, "truth", row["truth"],
                                                             problems))
        for line, row in rows
    ]
    df = pd.DataFrame.from_records(records, columns=["line", "case", "site", "truth", "label"])
    df["positive"] = df["label"] != NEGATIVE
    problems += _duplicates(df, ["case", "site"])
    if problems:
        raise InputError.of(path, problems)
    df.attrs["path"] = str(path)
    return df


def _listing(items: Iterable[str], total: int) -> str:
    shown = list(items)[:_SHOW]
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return "; ".join(shown) + more


def check_consistency(reads: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Refuse reads of discs absent from the truth, and readers missing calls for some discs.

    Raises:
        InputError: naming the reads file, the offending rows or the reader and discs.
    """
    rpath = reads.attrs.get("path")
    tname = Path(truth.attrs.get("path", "truth")).name
    truth_keys = set(zip(truth["case"], truth["site"], strict=True))
    unknown = reads[[k not in truth_keys for k in zip(reads["case"], reads["site"], strict=True)]]
    if not unknown.empty:
        where = (f"row {r.line} (case {r.case}, site {r.site})" for r in unknown.itertuples())
        raise InputError(
            rpath,
            f"{len(unknown)} row(s) name a disc missing from the truth file {tname}: "
            + _listing(where, len(unknown)),
        )
    for reader, group in reads.groupby("reader", sort=False):
        have = set(zip(group["case"], group["site"], strict=True))
        lacking = [
            (c, s) for c, s in zip(truth["case"], truth["site"], strict=True) if (c, s) not in have
        ]
        if lacking:
            raise InputError(
                rpath,
                f"reader {reader!r} has no call for {len(lacking)} of {len(truth)} discs in "
                f"{tname}: " + _listing((f"case {c}, site {s}" for c, s in lacking), len(lacking)),
            )


def resolve_ai(reads: pd.DataFrame, ai: str | None) -> str | None:
    """The AI reader's name: ``ai`` if given (must be a reader), else a reader named "AI"."""
    readers = list(dict.fromkeys(reads["reader"]))
    if ai is not None:
        if ai not in readers:
            raise InputError(
                reads.attrs.get("path"),
                f"--ai {ai!r} is not a reader in this file (readers: {', '.join(readers)})",
            )
        return ai
    if "AI" in readers:
        return "AI"
    matches = [r for r in readers if r.lower() == "ai"]
    return matches[0] if len(matches) == 1 else None


def aligned_calls(
    reads: pd.DataFrame, truth: pd.DataFrame
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each reader's labels in truth row order.

    Returns ``(readers, labels, seconds)``: readers in order of first appearance; ``labels``
    ``(n_readers, n_discs)`` str; ``seconds`` ``(n_readers, n_discs)`` float (``nan`` blank).
    """
    readers = list(dict.fromkeys(reads["reader"]))
    order = {k: i for i, k in enumerate(zip(truth["case"], truth["site"], strict=True))}
    labels = np.empty((len(readers), len(truth)), dtype=object)
    seconds = np.full((len(readers), len(truth)), np.nan)
    ridx = {r: i for i, r in enumerate(readers)}
    for row in reads.itertuples():
        j = order[(row.case, row.site)]
        labels[ridx[row.reader], j] = row.label
        seconds[ridx[row.reader], j] = row.seconds
    return readers, labels.astype(str), seconds
