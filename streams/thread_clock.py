"""How the calling thread spent a stretch of time: on a core, waiting for one, or blocked.

The scoring threads of a worker run onnxruntime without the GIL and take it back for
the Python around each run; on a busy machine they also wait for a free core.  Their
wall time split three ways tells an operator which one holds a worker back:

- ``cpu``: the thread ran (``time.thread_time``);
- ``runqueue``: it could run but waited for a core (Linux's ``schedstat`` run delay);
- ``blocked``: the rest, waiting for something: the GIL, or, where the model runs in
  model processes (``RECSTREAM_MODEL_PROCESSES``), their answers (a scoring thread
  does no other I/O).

Where the kernel does not report run delays (not Linux), ``runqueue`` is None and
``blocked`` holds that wait too.

A reading keeps the GIL: the run delay is read from a file the thread keeps open, with
libc's ``pread`` called through ``ctypes.PyDLL`` (which does not release the GIL).
Python's own file calls release it around each system call, and while another thread
runs Python, getting it back takes up to the switch interval: the ``open`` / ``read`` /
``close`` of a reading took 2.9-3.6 ms of wall time beside a busy thread, the held
``pread`` 3-29 µs (7 against 2.8 µs with no other thread).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The states a stretch of wall time is split into (see the module's docstring).
STATES: Final = ("cpu", "runqueue", "blocked")
#: The calling thread's scheduler statistics: ns on a CPU, ns waiting on a run queue, slices.
SCHEDSTAT: Final = "/proc/thread-self/schedstat"


@dataclass(frozen=True, slots=True)
class ThreadTimes:
    """Seconds of wall time, of the thread's CPU time, and of its run-queue wait: read
    with :func:`thread_times`; the difference of two readings is a stretch's split."""

    wall: float
    cpu: float
    runqueue: float | None

    def __sub__(self, earlier: ThreadTimes) -> ThreadTimes:
        runqueue = None
        if self.runqueue is not None and earlier.runqueue is not None:
            runqueue = self.runqueue - earlier.runqueue
        return ThreadTimes(self.wall - earlier.wall, self.cpu - earlier.cpu, runqueue)

    @property
    def blocked(self) -> float:
        """Wall time neither on a core nor waiting for one (never below 0: the clocks
        tick at different rates)."""
        return max(0.0, self.wall - self.cpu - (self.runqueue or 0.0))


#: libc's ``pread(fd, buffer, size, offset)``.
Pread = Callable[[int, ctypes.Array[ctypes.c_char], int, int], int]


def _libc_pread() -> Pread | None:
    """libc's ``pread``, called with the GIL held; None where it cannot be found."""
    try:
        pread = ctypes.PyDLL(None, use_errno=True).pread
    except (OSError, AttributeError):
        return None
    pread.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long)
    pread.restype = ctypes.c_ssize_t
    return pread


_PREAD: Final = _libc_pread()


class _Schedstat:
    """One thread's ``schedstat`` file, open while the thread lives, and a buffer for it."""

    def __init__(self, pread: Pread) -> None:
        self.pread = pread
        self.fd = os.open(SCHEDSTAT, os.O_RDONLY)
        self.buffer = ctypes.create_string_buffer(128)

    def __del__(self, close: Callable[[int], None] = os.close) -> None:
        close(self.fd)  # the thread ended (its thread-local values are dropped)

    def runqueue_seconds(self) -> float | None:
        size = self.pread(self.fd, self.buffer, 128, 0)
        if size <= 0:
            return None
        return int(self.buffer.raw[:size].split()[1]) / 1e9


#: Each thread's open ``_Schedstat`` (None once it could not be opened there).
_THREAD: Final = threading.local()
if hasattr(os, "register_at_fork"):  # a forked child's thread opens its own file
    os.register_at_fork(after_in_child=lambda: _THREAD.__dict__.clear())


def _runqueue_seconds() -> float | None:
    """The calling thread's run-queue wait so far, in seconds (None if not known)."""
    schedstat = getattr(_THREAD, "schedstat", _THREAD)
    if schedstat is _THREAD:  # this thread's first reading
        try:
            schedstat = _THREAD.schedstat = _Schedstat(_PREAD) if _PREAD is not None else None
        except OSError:
            schedstat = _THREAD.schedstat = None
    if schedstat is None:
        return None
    try:
        return schedstat.runqueue_seconds()
    except (IndexError, ValueError):
        return None


def thread_core_seconds(native_id: int) -> tuple[float, float] | None:
    """Seconds a thread of this process (its ``threading.get_native_id()``) has run on a
    core and has waited on a run queue, from its ``schedstat``; None where that cannot be
    read (not Linux, or the thread ended).  For a reader in another thread, now and then:
    it opens the file, which gives up the GIL."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as file:
            on_core, waited = file.read().split()[:2]
        return int(on_core) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return None


def thread_times() -> ThreadTimes:
    """The calling thread's clocks now (``wall`` is ``time.perf_counter``)."""
    return ThreadTimes(time.perf_counter(), time.thread_time(), _runqueue_seconds())
