"""Run one piece of ingestion work (the parse of a file) in a forked child under a memory limit.

Parsing is where hostile files explode: a zip bomb dressed as a DOCX, a PDF whose streams inflate to
gigabytes. In a child whose address space is capped (``RLIMIT_AS``), such a file ends as a
``MemoryError`` or a dead child, which the parent turns into :class:`MemoryLimitError` with a sentence
a person understands, instead of a worker killed by the kernel's OOM killer.

The child is a plain ``os.fork()``: nothing has to be pickled on the way in, only the result (or the
exception) on the way out, through a pipe. It must never touch the embedder (its OpenMP runtime does
not survive a fork), the database or the broker; parsing needs none of them. It always ends with
``os._exit``, so no ``atexit`` hook, Celery or pytest handler and no buffered output of the parent
runs twice. Where ``fork`` or ``RLIMIT_AS`` is missing (not Linux), the work runs in this process.

``RLIMIT_AS`` alone is not enough in a long-lived worker: memory its allocator has already mapped and
freed is reused by the child without any new mapping, so a child of a big process could use that much
more than the budget. A watchdog thread in the child therefore also checks, several times a second,
the memory that is its own: pages it wrote since the fork (copies of the parent's included) and pages
it mapped anew, that is the private pages of ``/proc/self/smaps_rollup``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ingestion.errors import IngestionError, MemoryLimitError

__all__ = ["DEFAULT_MEMORY_MB", "Limited", "memory_limit_supported", "run_limited", "start_limited"]

_T = TypeVar("_T")

#: memory (MB) the parse of one document may add to the worker's own address space
DEFAULT_MEMORY_MB = 2048

_HEADER = struct.Struct("!Q")  # length of the pickled payload that follows
_POLL_S = 0.2
#: how often the child's watchdog reads its private memory (a read walks the page tables: ~1 ms)
_WATCH_S = 0.05
# Signals whose handlers the child must not inherit: a Celery pool process's SIGUSR1 raises its soft
# time limit, its SIGTERM handler belongs to the pool; the child is stopped by the parent instead.
_RESET_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE")
_PR_SET_PDEATHSIG = 1

_in_child = False


def memory_limit_supported() -> bool:
    """Whether work can run in a memory-limited child here (Linux: ``fork`` and ``RLIMIT_AS``)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def run_limited(work: Callable[[], _T], *, memory_mb: int) -> _T:
    """``work()``, run in a forked child that may use at most ``memory_mb`` MB more than this process.

    Returns what ``work`` returned (it must pickle) and raises what it raised: an ``IngestionError``
    comes back with its type and message. Raises :class:`MemoryLimitError` when the child ran out of
    memory or was killed by a signal (the kernel's OOM killer sends SIGKILL). ``memory_mb`` 0 means no
    limit: ``work`` then runs in this process, as it does where forking is not supported.
    """
    return start_limited(work, memory_mb=memory_mb).result()


class Limited(Generic[_T]):
    """Work started in a memory-limited child (:func:`start_limited`): this process goes on meanwhile.

    :meth:`result` waits for it; :meth:`cancel` stops a child whose result is no longer wanted. Where
    the work cannot run in a child, it runs in this process when :meth:`result` is called.
    """

    def __init__(self, work: Callable[[], _T], memory_mb: int, pid: int | None, read_fd: int | None) -> None:
        self._work, self._memory_mb, self._pid, self._read_fd = work, memory_mb, pid, read_fd

    def result(self) -> _T:
        if self._pid is None or self._read_fd is None:
            return self._work()
        pid, read_fd = self._pid, self._read_fd
        self._pid = self._read_fd = None
        reaped = False
        try:
            payload, status = _collect(pid, read_fd)
            reaped = True
        finally:
            os.close(read_fd)
            if not reaped:  # interrupted (Celery's soft time limit, Ctrl-C): the child goes too
                _kill(pid)
        result: _T = _outcome(payload, status, self._memory_mb)
        return result

    def cancel(self) -> None:
        """Stop the child (its result is dropped); nothing happens once :meth:`result` was called."""
        if self._pid is not None and self._read_fd is not None:
            os.close(self._read_fd)
            _kill(self._pid)
        self._pid = self._read_fd = None


def start_limited(work: Callable[[], _T], *, memory_mb: int, niceness: int = 0) -> Limited[_T]:
    """Start ``work()`` in a child as :func:`run_limited` does, and return at once; ``.result()`` waits for it.

    The child's payload waits in a pipe until the result is asked for; call ``.cancel()`` on work whose
    result will not be asked for, or its child is left waiting. A positive ``niceness`` lowers the child's
    CPU priority by that much (``nice``), so that it takes the CPU this process leaves idle rather than
    slowing it down.
    """
    if memory_mb <= 0 or _in_child or not memory_limit_supported():
        return Limited(work, memory_mb, None, None)
    for stream in (sys.stdout, sys.stderr):  # or the child inherits, and may repeat, unwritten output
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child never leaves this branch
        try:
            os.close(read_fd)
            if niceness > 0:
                os.nice(niceness)
            _child(work, write_fd, memory_mb, parent)
        finally:
            os._exit(70)  # _child exits itself; this is reached only if it failed to
    os.close(write_fd)
    return Limited(work, memory_mb, pid, read_fd)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _collect(pid: int, read_fd: int) -> tuple[bytes | None, int]:
    """The child's whole payload (None when it wrote none) and its wait status.

    The pipe is polled rather than read to its end: a process forked elsewhere at the same moment may
    hold a copy of the write end, so the end of the pipe could come long after the child is gone.
    """
    data = bytearray()
    status: int | None = None
    while _payload(data) is None:
        ready, _, _ = select.select([read_fd], [], [], _POLL_S if status is None else 0)
        if ready:
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break  # the end of the pipe: no one will write more
            data += chunk
            continue
        if status is not None:
            break  # the child is gone and nothing is left in the pipe
        waited, child_status = os.waitpid(pid, os.WNOHANG)
        if waited:
            status = child_status
    if status is None:
        _, status = os.waitpid(pid, 0)
    return _payload(data), status


def _payload(data: bytearray) -> bytes | None:
    if len(data) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack_from(data)
    end = _HEADER.size + size
    return bytes(data[_HEADER.size : end]) if len(data) >= end else None


def _outcome(payload: bytes | None, status: int, memory_mb: int) -> Any:
    if payload is not None:
        try:
            kind, value = pickle.loads(payload)
        except Exception as exc:  # a result or an exception class that does not unpickle here
            raise IngestionError("Reading this document failed in an unexpected way; it was not read") from exc
        if kind == "ok":
            return value
        if kind == "memory":
            raise MemoryLimitError(f"Reading this document needed more than {memory_mb} MB of memory; it was not read")
        if isinstance(value, BaseException):
            raise value
        raise IngestionError("Reading this document failed in an unexpected way; it was not read")
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        raise MemoryLimitError(
            f"Reading this document stopped abruptly ({name}), most likely because it needed more than "
            f"{memory_mb} MB of memory; it was not read"
        )
    raise IngestionError(
        f"Reading this document stopped unexpectedly (exit status {os.WEXITSTATUS(status)}); it was not read"
    )


def _child(work: Callable[[], object], write_fd: int, memory_mb: int, parent: int) -> None:
    global _in_child
    _in_child = True
    _prepare_child(parent)
    import resource

    base = _address_space_bytes()
    limit = base + memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    finished = threading.Lock()  # the first of the work and the watchdog to finish writes the payload

    def finish(message: tuple[str, object]) -> None:
        if not finished.acquire(blocking=False):
            return
        payload = _pickled(message)
        _write_all(write_fd, _HEADER.pack(len(payload)) + payload)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    def watch(base_rss: int) -> None:
        budget = memory_mb * 1024 * 1024
        while True:
            if _private_bytes() - base_rss > budget:
                finish(("memory", None))
            time.sleep(_WATCH_S)

    threading.Thread(target=watch, args=(_private_bytes(),), daemon=True).start()
    try:
        message: tuple[str, object] = ("ok", work())
    except MemoryError:
        message = ("memory", None)
    except BaseException as exc:
        message = ("raise", exc)
    finish(message)
    while True:  # the watchdog is writing the payload and ends the process
        time.sleep(1)


def _prepare_child(parent: int) -> None:
    # What the parent left for the garbage collector is not the child's to finalize: a collected
    # database connection would say goodbye to the server on the parent's socket.
    gc.freeze()
    # Signal handlers of the worker (Celery's pool, gunicorn) are not the child's business.
    for name in _RESET_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(number, signal.SIG_DFL)
    # Die with the parent (a worker killed at its hard time limit must not leave the parse running).
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(71)
    # Stray prints of a parsing library go to stderr: the parent's stdout may be machine-read
    # (``manage.py ingest --json``).
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    sys.stdout = sys.stderr


def _pickled(message: tuple[str, object]) -> bytes:
    kind, value = message
    try:
        if isinstance(value, BaseException):
            if not isinstance(value, IngestionError):  # a bug: keep where it happened for the worker log
                value.add_note("Raised while parsing, in the memory-limited child process:\n" + _trace(value))
            data = pickle.dumps((kind, value))
            pickle.loads(data)  # an exception class may pickle but not unpickle: find out here
            return data
        return pickle.dumps((kind, value))
    except MemoryError:
        return pickle.dumps(("memory", None))
    except Exception as exc:
        if isinstance(value, IngestionError):
            fallback: IngestionError = IngestionError(value.message)
            fallback.code, fallback.transient = value.code, value.transient
        else:
            fallback = IngestionError(f"Reading this document failed ({type(value).__name__}); it was not read")
            if kind == "ok":
                fallback.add_note(f"The parse result could not be pickled: {exc!r}")
        return pickle.dumps(("raise", fallback))


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _private_bytes() -> int:
    """Memory of this process shared with no other (after a fork: what it wrote or mapped since)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            return sum(
                int(line.split()[1]) * 1024
                for line in rollup
                if line.startswith(("Private_Clean:", "Private_Dirty:", "Swap:"))
            )
    except OSError:  # kernels before 4.14: the resident size, a weaker measure
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)


def _address_space_bytes() -> int:
    """This process's virtual size (VmSize): libraries such as torch map large regions up front."""
    with open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0
