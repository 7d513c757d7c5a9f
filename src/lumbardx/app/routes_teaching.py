"""Teaching-mode API: quiz sessions, cases, answers and the score (docs/api.md, "Teaching
mode")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from lumbardx.app.accounts import User
from lumbardx.app.context import AppContext, ctx, current_user
from lumbardx.app.teaching import TeachingError

router = APIRouter(prefix="/api/teaching")


class NewSession(BaseModel):
    """Where the cases come from and how many."""

    source: str = "synthetic"
    folder: str | None = None
    n_cases: int = Field(10, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**31)


class Answer(BaseModel):
    """The learner's call per level."""

    calls: dict[str, str]


def _run(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except TeachingError as exc:
        raise HTTPException(exc.status, exc.detail) from None


@router.get("/sources")
def sources(user: User = Depends(current_user), c: AppContext = Depends(ctx)
            ) -> dict[str, Any]:
    """Case sources on offer."""
    return {"synthetic": True, "folders": sorted(c.teaching.folders)}


@router.post("/sessions", status_code=201)
async def create(body: NewSession, user: User = Depends(current_user),
                 c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Start a quiz session (its images are generated now)."""
    session = await run_in_threadpool(_run, c.teaching.create, user.name, body.source,
                                      body.n_cases, body.seed, body.folder)
    c.audit.append(user.name, "teaching_start", None, session_id=session["session_id"],
                   source=body.source, n_cases=session["n_cases"])
    return {"session_id": session["session_id"], "n_cases": session["n_cases"],
            "source": session["source"], "seed": session["seed"]}


@router.get("/sessions")
def list_sessions(user: User = Depends(current_user), c: AppContext = Depends(ctx)
                  ) -> dict[str, Any]:
    """The user's sessions."""
    return {"sessions": c.teaching.sessions(user.name)}


@router.get("/sessions/{sid}")
def get_session(sid: str, user: User = Depends(current_user), c: AppContext = Depends(ctx)
                ) -> dict[str, Any]:
    """One session: cases answered, levels called right and the next case."""
    return _run(c.teaching.get, user.name, sid)


@router.get("/sessions/{sid}/cases/{index}")
def get_case(sid: str, index: int, user: User = Depends(current_user),
             c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """A case without its truth (starts its clock)."""
    return _run(c.teaching.serve, user.name, sid, index)


@router.get("/sessions/{sid}/cases/{index}/image.png")
def case_image(sid: str, index: int, user: User = Depends(current_user),
               c: AppContext = Depends(ctx)) -> FileResponse:
    """The case image."""
    return FileResponse(_run(c.teaching.image_path, user.name, sid, index),
                        media_type="image/png")


@router.post("/sessions/{sid}/cases/{index}/answer")
def answer(sid: str, index: int, body: Answer, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Record the learner's calls; returns the truth and the time taken."""
    return _run(c.teaching.answer, user.name, sid, index, body.calls)


@router.get("/sessions/{sid}/review")
def review(sid: str, user: User = Depends(current_user), c: AppContext = Depends(ctx)
           ) -> dict[str, Any]:
    """The answered cases: the learner's call, the truth and right / wrong per level."""
    return _run(c.teaching.review, user.name, sid)


@router.get("/sessions/{sid}/score")
def score(sid: str, user: User = Depends(current_user), c: AppContext = Depends(ctx)
          ) -> dict[str, Any]:
    """Sensitivity, specificity, accuracy with Wilson CIs and time per case."""
    result = _run(c.teaching.score, user.name, sid)
    c.audit.append(user.name, "teaching_score", None, session_id=sid,
                   cases=result["cases_answered"])
    return result
