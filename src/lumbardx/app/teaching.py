"""Teaching mode: quiz sessions over cases with known truth, scored like a reader study.

Cases come from the synthetic generator (:func:`lumbardx.synth.generate_case`, case ``i`` of a
session drawn from ``numpy.random.default_rng([seed, i])``, so a seed gives the same quiz
again) or from a labelled folder the administrator configured (any layout
:class:`lumbardx.data.dataset.LumbarDataset` reads; the truth per level is
:func:`lumbardx.clinical.findings.build_findings` of the ground-truth boxes). The learner sees
the image and the levels to call, calls each level ``normal`` / ``herniation`` /
``spondylolisthesis``, and gets the truth back. The time per case runs from the first time the
case is served to the answer (server clock, seconds).

The score is :func:`lumbardx.clinical.readerstudy_analysis.run_reader_study` on the learner's
READS (``reader,case,site,call,seconds``; the case's time on its first row) against TRUTH
(``case,site,truth``) over the answered cases, both written into the session folder
(``DATA_DIR/teaching/<session_id>/reads.csv`` and ``truth.csv``).

The history of a learner's quizzes counts, per session, the cases answered (``n_answered`` of
``n_cases``; ``finished`` when none is left) and the levels called exactly right
(``discs_correct`` of ``discs_answered``). The review (:meth:`TeachingStore.review`) lists each
answered case with the call, the truth and right / wrong per level, and the same tallies per
true finding; the truth of a case not yet answered is never in it.
"""

from __future__ import annotations

import csv
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lumbardx.app.accounts import utc_now
from lumbardx.app.files import private_dir, read_json, write_json, write_private
from lumbardx.app.studies import png_bytes
from lumbardx.data.classes import STUDY_CLASSES

CHOICES: tuple[str, ...] = STUDY_CLASSES


class TeachingError(Exception):
    """A quiz request that cannot be served: HTTP ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _unique_levels(levels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in levels:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def synthetic_case(seed: int, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Case ``index`` of the synthetic quiz ``seed``: ``uint8 [H, W]`` image and its discs
    ``[{"level", "centre": [x, y], "truth"}]`` top to bottom."""
    from lumbardx.synth import SynthConfig, generate_case

    case = generate_case(np.random.default_rng([seed, index]), SynthConfig(),
                         name=f"case-{index:02d}")
    discs = case.truth["discs"]
    names = _unique_levels([d["level"] for d in discs])
    return case.image, [{"level": n, "centre": [round(float(v), 1) for v in d["centre_px"]],
                         "truth": d["status"]} for n, d in zip(names, discs, strict=True)]


def folder_cases(root: Path, seed: int, n: int) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
    """``n`` images drawn (seeded, without replacement) from a labelled folder, with the truth
    per level from the ground-truth boxes."""
    from lumbardx.clinical.findings import build_findings
    from lumbardx.data.boxes import Box
    from lumbardx.data.dataset import LumbarDataset

    ds = LumbarDataset(root, classes="study")
    if len(ds) == 0:
        raise TeachingError(409, "the teaching folder holds no usable labelled image")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
    out = []
    for idx in picks.tolist():
        sample = ds[idx]
        h, w = sample.image.shape
        boxes = [Box(ds.class_names[int(k)], *map(float, xyxy))
                 for xyxy, k in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True)]
        spine = build_findings(boxes, (w, h))
        names = _unique_levels([d.level for d in spine.discs])
        discs = [{"level": name, "centre": [round((d.box.x1 + d.box.x2) / 2, 1),
                                            round((d.box.y1 + d.box.y2) / 2, 1)],
                  "truth": d.status} for name, d in zip(names, spine.discs, strict=True)]
        if discs:
            out.append((sample.image, discs))
    if not out:
        raise TeachingError(409, "no image of the teaching folder has a labelled disc")
    return out


def _proportion(p: Any) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if v is None or math.isnan(v) else round(float(v), 4)

    return {"estimate": num(p.estimate), "ci_low": num(p.ci_low), "ci_high": num(p.ci_high),
            "successes": int(p.successes), "total": int(p.total)}


class TeachingStore:
    """Quiz sessions under ``DATA_DIR/teaching``; each belongs to the user who started it.

    Args:
        root: the ``teaching`` folder.
        folders: name -> labelled folder offered as a source.
        max_cases: most cases per session.
        clock: wall-clock seconds (time per case; tests pass a fake).
    """

    def __init__(self, root: Path, folders: Mapping[str, Path], max_cases: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = private_dir(root)
        self.folders = dict(folders)
        self.max_cases, self.clock = max_cases, clock
        self._lock = threading.Lock()

    # -- sessions -------------------------------------------------------------------------------
    def _path(self, sid: str) -> Path:
        if not sid.isalnum() or len(sid) > 64:
            raise TeachingError(404, "no such teaching session")
        return self.root / sid / "session.json"

    def _load(self, user: str, sid: str) -> dict[str, Any]:
        path = self._path(sid)
        if not path.exists():
            raise TeachingError(404, "no such teaching session")
        session = read_json(path)
        if session["user"] != user:
            raise TeachingError(404, "no such teaching session")
        return session

    def _save(self, session: dict[str, Any]) -> None:
        write_json(self._path(session["session_id"]), session)

    def create(self, user: str, source: str, n_cases: int, seed: int | None = None,
               folder: str | None = None) -> dict[str, Any]:
        """Start a session; its images are made now, so serving a case is instant."""
        if not 1 <= n_cases <= self.max_cases:
            raise TeachingError(422, f"n_cases must be 1..{self.max_cases}")
        seed = int(secrets.randbits(31)) if seed is None else int(seed)
        if source == "synthetic":
            made = [synthetic_case(seed, i) for i in range(n_cases)]
        elif source == "folder":
            if folder not in self.folders:
                raise TeachingError(422, f"unknown teaching folder {folder!r}; available: "
                                         f"{', '.join(sorted(self.folders)) or 'none'}")
            made = folder_cases(self.folders[folder], seed, n_cases)
        else:
            raise TeachingError(422, "source must be 'synthetic' or 'folder'")
        sid = secrets.token_hex(12)
        folder_path = private_dir(self.root / sid)
        cases = []
        for i, (image, discs) in enumerate(made):
            write_private(folder_path / f"case-{i:02d}.png", png_bytes(image))
            cases.append({"case": i, "width": int(image.shape[1]), "height": int(image.shape[0]),
                          "discs": discs, "served_at": None, "seconds": None, "calls": None})
        session = {"session_id": sid, "user": user, "source": source, "folder": folder,
                   "seed": seed, "n_cases": len(cases), "created_at": utc_now(),
                   "created_ts": time.time(), "cases": cases}
        self._save(session)
        return session

    @staticmethod
    def _marked(case: dict[str, Any]) -> list[tuple[dict[str, Any], str, bool]]:
        """``(disc, call, right)`` for each level of an answered case."""
        return [(d, case["calls"][d["level"]], case["calls"][d["level"]] == d["truth"])
                for d in case["discs"]]

    @classmethod
    def overview(cls, session: dict[str, Any]) -> dict[str, Any]:
        """Public view of a session: the cases answered (their indices in ``answered``, how
        many in ``n_answered``), whether it is ``finished``, and the levels of the answered
        cases called exactly right (``discs_correct`` of ``discs_answered``). No truth of a
        case not yet answered."""
        done = [c for c in session["cases"] if c["calls"] is not None]
        pending = [c["case"] for c in session["cases"] if c["calls"] is None]
        marks = [right for c in done for _, _, right in cls._marked(c)]
        return {"session_id": session["session_id"], "source": session["source"],
                "folder": session["folder"], "seed": session["seed"],
                "n_cases": session["n_cases"], "created_at": session["created_at"],
                "answered": [c["case"] for c in done], "n_answered": len(done),
                "finished": not pending, "next_case": pending[0] if pending else None,
                "discs_answered": len(marks), "discs_correct": sum(marks)}

    def sessions(self, user: str) -> list[dict[str, Any]]:
        """The user's sessions, newest first."""
        out = []
        for path in self.root.glob("*/session.json"):
            session = read_json(path)
            if session["user"] == user:
                out.append((session.get("created_ts", 0.0), self.overview(session)))
        out.sort(key=lambda x: (x[1]["created_at"], x[0]), reverse=True)
        return [o for _, o in out]

    def get(self, user: str, sid: str) -> dict[str, Any]:
        """Overview of one of the user's sessions."""
        return self.overview(self._load(user, sid))

    # -- cases ----------------------------------------------------------------------------------
    def _case(self, session: dict[str, Any], index: int) -> dict[str, Any]:
        if not 0 <= index < session["n_cases"]:
            raise TeachingError(404, f"case {index} is not in this session "
                                     f"(0..{session['n_cases'] - 1})")
        return session["cases"][index]

    def serve(self, user: str, sid: str, index: int) -> dict[str, Any]:
        """The case without its truth; starts its clock on the first call."""
        with self._lock:
            session = self._load(user, sid)
            case = self._case(session, index)
            if case["served_at"] is None:
                case["served_at"] = self.clock()
                self._save(session)
        return {"case": index, "width": case["width"], "height": case["height"],
                "image_url": f"/api/teaching/sessions/{sid}/cases/{index}/image.png",
                "levels": [{"level": d["level"], "centre": d["centre"]} for d in case["discs"]],
                "choices": list(CHOICES), "answered": case["calls"] is not None}

    def image_path(self, user: str, sid: str, index: int) -> Path:
        """The case's PNG."""
        session = self._load(user, sid)
        self._case(session, index)
        return self.root / sid / f"case-{index:02d}.png"

    def answer(self, user: str, sid: str, index: int, calls: Mapping[str, str]
               ) -> dict[str, Any]:
        """Record the learner's call for every level; returns the truth and the time taken."""
        with self._lock:
            session = self._load(user, sid)
            case = self._case(session, index)
            if case["calls"] is not None:
                raise TeachingError(409, f"case {index} was answered already")
            if case["served_at"] is None:
                raise TeachingError(409, f"open case {index} before answering it")
            levels = [d["level"] for d in case["discs"]]
            missing = [lv for lv in levels if lv not in calls]
            extra = [lv for lv in calls if lv not in levels]
            bad = {lv: c for lv, c in calls.items() if c not in CHOICES}
            if missing or extra or bad:
                parts = ([f"missing call for {', '.join(missing)}"] if missing else []) + \
                        ([f"unknown level {', '.join(extra)}"] if extra else []) + \
                        ([f"call must be one of {', '.join(CHOICES)}"] if bad else [])
                raise TeachingError(422, "; ".join(parts))
            case["calls"] = {lv: calls[lv] for lv in levels}
            case["seconds"] = round(max(0.0, self.clock() - case["served_at"]), 3)
            self._save(session)
        truth = {d["level"]: d["truth"] for d in case["discs"]}
        return {"seconds": case["seconds"], "truth": truth,
                "correct": {lv: case["calls"][lv] == truth[lv] for lv in levels}}

    def review(self, user: str, sid: str) -> dict[str, Any]:
        """The answered cases with the learner's call, the truth and right / wrong per level,
        and the levels called right over all of them and per true finding (module docstring)."""
        session = self._load(user, sid)
        cases, tally = [], {c: [0, 0] for c in CHOICES}
        for case in session["cases"]:
            if case["calls"] is None:
                continue
            levels = []
            for disc, call, right in self._marked(case):
                levels.append({"level": disc["level"], "centre": disc["centre"], "call": call,
                               "truth": disc["truth"], "correct": right})
                counts = tally.setdefault(disc["truth"], [0, 0])
                counts[0] += 1
                counts[1] += int(right)
            cases.append({"case": case["case"], "width": case["width"],
                          "height": case["height"], "seconds": case["seconds"],
                          "image_url": f"/api/teaching/sessions/{sid}/cases/{case['case']}"
                                       "/image.png",
                          "discs": len(levels), "correct": sum(lv["correct"] for lv in levels),
                          "levels": levels})
        view = self.overview(session)
        return {"session_id": sid, "source": session["source"], "n_cases": session["n_cases"],
                "finished": view["finished"], "cases_answered": len(cases),
                "discs": view["discs_answered"], "discs_correct": view["discs_correct"],
                "per_finding": [{"finding": f, "discs": n, "correct": k}
                                for f, (n, k) in tally.items() if n],
                "choices": list(CHOICES), "cases": cases}

    # -- score ----------------------------------------------------------------------------------
    def write_tables(self, session: dict[str, Any]) -> tuple[Path, Path]:
        """READS and TRUTH CSVs of the answered cases (see the module docstring)."""
        folder = self.root / session["session_id"]
        reads, truth = folder / "reads.csv", folder / "truth.csv"
        with reads.open("w", newline="", encoding="utf-8") as fr, \
                truth.open("w", newline="", encoding="utf-8") as ft:
            wr, wt = csv.writer(fr), csv.writer(ft)
            wr.writerow(["reader", "case", "site", "call", "seconds"])
            wt.writerow(["case", "site", "truth"])
            for case in session["cases"]:
                if case["calls"] is None:
                    continue
                name = f"case-{case['case']:02d}"
                for k, disc in enumerate(case["discs"]):
                    seconds = case["seconds"] if k == 0 else ""
                    wr.writerow([session["user"], name, disc["level"],
                                 case["calls"][disc["level"]], seconds])
                    wt.writerow([name, disc["level"], disc["truth"]])
        return reads, truth

    def score(self, user: str, sid: str) -> dict[str, Any]:
        """The learner's sensitivity, specificity, accuracy (Wilson CIs), per-finding detection
        and mean time per case over the answered cases."""
        from lumbardx.clinical.readerstudy_analysis import run_reader_study

        session = self._load(user, sid)
        answered = [c for c in session["cases"] if c["calls"] is not None]
        if not answered:
            raise TeachingError(409, "answer at least one case first")
        reads, truth = self.write_tables(session)
        result = run_reader_study(reads, truth, ai=None, n_boot=0)
        m = result.readers[0]
        return {
            "cases_answered": len(answered), "discs": result.n_discs,
            "positive_discs": result.n_positive, "negative_discs": result.n_negative,
            "sensitivity": _proportion(m.sensitivity), "specificity": _proportion(m.specificity),
            "accuracy": _proportion(m.accuracy), "exact_agreement": _proportion(m.exact_agreement),
            "per_finding": [{"finding": f.finding, "discs": f.discs,
                             "detected": _proportion(f.detected), "exact": _proportion(f.exact)}
                            for f in m.per_finding],
            "mean_seconds_per_case": None if m.mean_seconds_per_case is None
            else round(m.mean_seconds_per_case, 3),
            "timed_cases": m.timed_cases,
        }
