"""Errors raised on bad input.

Every reader raises :class:`InputError` (or a subclass) with the offending file and a
plain-language description of the problem, so that batch commands can report the file and
continue with the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self


#: Problems of one file an :class:`InputError` lists at most (:meth:`InputError.of`).
MAX_LISTED = 200


class LumbardxError(Exception):
    """Base class of all errors lumbardx raises on purpose."""


class InputError(LumbardxError, ValueError):
    """A file (image, DICOM, annotation, table) that cannot be used.

    Attributes:
        path: the file that failed, or ``None`` when the problem has no single file.
        problem: what is wrong with it, in words a user can act on.
        problems: every problem found in the file, each one line (``[problem]`` unless the
            error was made with :meth:`of`, whose message names the first and counts the
            others). Tools that list every problem (``lumbardx data check``, the reader-study
            command) read this, so that a file's faults are fixed in one round.
    """

    def __init__(self, path: str | Path | None, problem: str,
                 problems: Sequence[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        self.problems = list(problems) if problems else [problem]
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its arguments, so that an error raised in a worker process (parallel
        cross-validation folds) reaches the parent intact."""
        return type(self), (self.path, self.problem, self.problems)

    @classmethod
    def of(cls, path: str | Path | None, problems: Sequence[str]) -> Self:
        """One error for every problem of a file (``problems`` not empty): the message names
        the first and counts the others; ``problems`` keeps the first :data:`MAX_LISTED` and a
        last line counting the rest (a file of a million faulty rows stays one readable list)."""
        rest = len(problems) - 1
        tail = f" (and {rest} more problem{'s' if rest > 1 else ''} in this file)" if rest else ""
        listed = list(problems[:MAX_LISTED])
        if len(problems) > MAX_LISTED:
            listed.append(f"... and {len(problems) - MAX_LISTED} more problems not listed")
        return cls(path, problems[0] + tail, listed)


class AnnotationError(InputError):
    """An annotation file that is malformed or holds invalid boxes or classes."""


class ImageReadError(InputError):
    """An image or DICOM file that cannot be read or is not usable."""
