"""Decoding pixel data within bounds: display size, time, memory and native-decoder crashes.

Size: images are reduced on read to at most :data:`MAX_DISPLAY_SIDE` pixels on their long side
(:func:`reduction_step`, :func:`block_mean`). The detectors read 384-640 px letterboxed images
and the viewer shows one slice on a screen, so no reader output needs more; keeping the
full-resolution array of a 7000 x 7000 image would cost gigabytes in the float32 and float64
copies made downstream. Readers scale the pixel spacing by the step.

Isolation: compressed pixel data is decoded by native libraries that pydicom calls (openjpeg,
libjpeg, CharLS, GDCM, the RLE plugin). Given damaged data some of them end the whole process
(an uncaught C++ exception aborts it with SIGABRT), hang, or allocate without bound, and no
``try`` catches that: in a batch, every later study would be lost. :class:`DecoderProcess` runs
such calls in a child interpreter and turns its death, a time-out or an out-of-memory into
:class:`DecoderFailed`, after which the next call starts a fresh child.

* One long-lived child, reused for every call (a series of compressed slices pays the start-up,
  about half a second, once), started with :mod:`subprocess` rather than :mod:`multiprocessing`
  so that it also works from daemonic processes (DataLoader workers may not have
  multiprocessing children) and never re-imports the caller's main module. Calls are
  serialised by a lock; a process that forks gets its own child on its first call.
* Requests and replies are pickled over the child's stdin / stdout; functions travel by
  reference, so a function must be importable in the child (the parent's ``sys.path`` is
  handed over first). A function meant for this worker reports refusals as return values:
  exceptions cross as their type and text only.
* Each call runs under an address-space limit (``RLIMIT_AS``, where the OS has it and reports
  the process size in ``/proc``) of the child's current size plus the budget, and within a
  wall-clock time limit, after which the child is killed.
* The child's stderr (native decoders print there) goes to a temporary file; when the child
  dies, its last line is logged.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest side, in pixels, of an image as the readers return it (larger ones are reduced).
MAX_DISPLAY_SIDE: int = 2048
#: Wall-clock seconds one isolated decode may take. A 1024 x 1024 JPEG 2000 slice decodes in
#: well under a second; 30 s leaves room for a loaded machine and stops a decoder that loops.
DECODE_TIMEOUT_S: float = 30.0
#: Address space, in bytes, one isolated decode may add to the child. The largest image the
#: readers accept (50 megapixels, RGB) needs about 1 GiB in openjpeg's int32 buffers plus the
#: output array.
DECODE_MEMORY_BUDGET: int = 1536 * 2**20

_BOOT = ("import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
         "from lumbardx.data.decode import serve; serve()")
_EXIT_WAIT_S = 5.0


def reduction_step(rows: int, cols: int, max_side: int | None = MAX_DISPLAY_SIDE) -> int:
    """The smallest integer step that brings ``max(rows, cols)`` to at most ``max_side``
    pixels with :func:`block_mean` (1: keep the image as it is; ``max_side=None``: never
    reduce)."""
    longest = max(rows, cols)
    if max_side is None or longest <= max_side:
        return 1
    return -(-longest // max_side)


def block_mean(values: np.ndarray, step: int) -> np.ndarray:
    """``values`` ``[h, w]`` or ``[h, w, c]`` reduced to ``[ceil(h / step), ceil(w / step)
    (, c)]`` by the mean of each ``step x step`` block, in the input's dtype (integers rounded
    to nearest, so that Modality and VOI LUTs still index it). The blocks on the bottom and right
    edges average the pixels they hold.

    Works one row of blocks at a time, so that the float64 working copy is ``step`` rows, not
    the image: reducing is what keeps a huge image's memory bounded.
    """
    if step <= 1:
        return values
    height, width = values.shape[:2]
    starts = np.arange(0, width, step)
    widths = np.diff(np.append(starts, width)).reshape(-1, *([1] * (values.ndim - 2)))
    out = np.empty((len(range(0, height, step)), len(starts), *values.shape[2:]), values.dtype)
    integer = np.issubdtype(values.dtype, np.integer)
    for i, top in enumerate(range(0, height, step)):
        band = values[top:top + step]
        sums = np.add.reduceat(band.sum(axis=0, dtype=np.float64), starts, axis=0)
        means = sums / (band.shape[0] * widths)
        out[i] = np.rint(means) if integer else means
    return out


class DecoderFailed(Exception):
    """A call in the decoder process gave no result.

    Attributes:
        reason: one line: the child crashed (with the signal's name), exited, ran past the time
            limit, ran out of memory, or the function raised (its type and text).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DecoderProcess:
    """A reusable child interpreter that runs one function call at a time (module docstring).

    Args:
        timeout_s: wall-clock seconds per call.
        memory_budget: bytes of address space a call may add to the child, or ``None`` for no
            limit.
    """

    def __init__(self, timeout_s: float = DECODE_TIMEOUT_S,
                 memory_budget: int | None = DECODE_MEMORY_BUDGET) -> None:
        self.timeout_s = timeout_s
        self.memory_budget = memory_budget
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._stderr: IO[bytes] | None = None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` computed in the child; ``fn`` and ``args`` must pickle, ``fn`` by
        reference.

        Raises:
            pickle.PicklingError: ``fn`` or ``args`` cannot be sent (nothing is sent).
            DecoderFailed: the child died, timed out or ran out of memory (it is replaced on
                the next call), or ``fn`` raised.
        """
        request = pickle.dumps((fn, args, self.memory_budget))  # fails here, not half-sent
        with self._lock:
            proc, reader, stderr = self._running()
            stderr.seek(0)
            stderr.truncate()
            try:
                assert proc.stdin is not None
                proc.stdin.write(request)
                proc.stdin.flush()
            except OSError:  # the child is gone: a broken pipe
                raise DecoderFailed(self._reap()) from None
            reply = reader.submit(pickle.load, proc.stdout)
            try:
                status, value = reply.result(timeout=self.timeout_s)
            except TimeoutError:
                proc.kill()
                self._reap()
                raise DecoderFailed(f"decoder did not finish within {self.timeout_s:g} s"
                                    ) from None
            except Exception:  # noqa: BLE001 - EOF or a cut reply: the child died working
                raise DecoderFailed(self._reap()) from None
        if status != "ok":
            raise DecoderFailed(value)
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """End the child (it exits when its stdin closes); the next call starts a new one.

        A call still running in another thread (e.g. a daemon thread at interpreter exit) is
        not waited for longer than a few seconds: its child is killed instead.
        """
        if not self._lock.acquire(timeout=_EXIT_WAIT_S):
            if self._proc is not None and self._owner == os.getpid():
                self._proc.kill()
            return
        try:
            if self._proc is not None and self._owner == os.getpid():
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                try:
                    self._proc.wait(_EXIT_WAIT_S)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                self._reap()
        finally:
            self._lock.release()

    def _running(self) -> tuple[subprocess.Popen[bytes], ThreadPoolExecutor, IO[bytes]]:
        """The live child, its reply reader and its stderr file, started when needed."""
        if self._owner != os.getpid():  # forked: the pipes belong to the parent's child
            self._proc = self._reader = self._stderr = None
            self._owner = os.getpid()
        if self._proc is not None and self._proc.poll() is not None:
            self._reap()
        if self._proc is None or self._reader is None or self._stderr is None:
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the child
            try:
                self._proc = subprocess.Popen([sys.executable, "-c", _BOOT],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=self._stderr)
                assert self._proc.stdin is not None
                pickle.dump(sys.path, self._proc.stdin)
                self._proc.stdin.flush()
            except OSError as exc:  # no interpreter to start, or it died at once
                raise DecoderFailed(f"decoder process could not start: {exc}") from exc
            self._reader = ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix="lumbardx-decoder-reply")
        return self._proc, self._reader, self._stderr

    def _reap(self) -> str:
        """Wait for the child's exit, release its pipes; returns how it ended, in words."""
        proc, self._proc = self._proc, None
        if proc is None:
            return "decoder process is gone"
        try:
            code = proc.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:  # alive but not answering: a cut reply
            proc.kill()
            code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        if self._reader is not None:
            self._reader.shutdown(wait=False)
            self._reader = None
        last = self._last_stderr_line()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            reason = f"decoder crashed: {name}"
        else:
            reason = f"decoder exited with status {code}"
        if code != 0 and last:
            log.warning("%s; its last message: %s", reason, last)
        return reason

    def _last_stderr_line(self) -> str:
        stderr, self._stderr = self._stderr, None
        if stderr is None:
            return ""
        stderr.seek(0)
        lines = stderr.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
        stderr.close()
        return lines[-1].strip() if lines else ""


_shared = DecoderProcess()
atexit.register(_shared.close)


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the process-wide :class:`DecoderProcess` (default limits).

    Raises:
        DecoderFailed: as :meth:`DecoderProcess.call`.
    """
    return _shared.call(fn, *args)


def serve() -> None:
    """The child's main loop: run each pickled ``(fn, args, memory_budget)`` read from stdin
    and write back ``("ok", result)`` or ``("error", reason)``, until stdin closes.

    Stdout is kept for replies only: file descriptor 1 is pointed at stderr so that anything a
    native library prints cannot corrupt them. Ctrl-C is left to the parent, which ends the
    child by closing its stdin.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    while True:
        try:
            fn, args, budget = pickle.load(requests)
        except EOFError:
            return
        with _address_space_limit(budget):
            try:
                reply: tuple[str, Any] = ("ok", fn(*args))
            except MemoryError:
                reply = ("error", "decoding ran out of memory" if budget is None else
                         f"decoding needs more than the {budget // 2**20} MiB of memory allowed")
            except Exception as exc:  # noqa: BLE001 - reported to the caller, who decides
                reply = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies)
        replies.flush()
        del reply


@contextmanager
def _address_space_limit(budget: int | None) -> Iterator[None]:
    """Limit this process's address space to its current size plus ``budget`` bytes, then
    restore the previous limit. No-op without ``resource`` or ``/proc/self/statm``."""
    try:
        import resource

        with open("/proc/self/statm") as fh:
            mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        yield
        return
    if budget is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + budget if hard == resource.RLIM_INFINITY else min(mapped + budget, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
