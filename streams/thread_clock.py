"""How the calling thread spent a stretch of time: on a core, waiting for one, or blocked.

The scoring threads of a worker run onnxruntime without the GIL and take it back for
the Python around each run; on a busy machine they also wait for a free core.  Their
wall time split three ways tells an operator which one holds a worker back:

- ``cpu``: the thread ran (``time.thread_time``);
- ``runqueue``: it could run but waited for a core (Linux's ``schedstat`` run delay);
- ``blocked``: the rest, waiting for something, almost always the GIL (a scoring
  thread does no I/O).

Where the kernel does not report run delays (not Linux), ``runqueue`` is None and
``blocked`` holds that wait too.
"""

from __future__ import annotations

import os
import time
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


def _runqueue_seconds() -> float | None:
    try:  # os calls: a third of the cost of Path.read_bytes (~2 against ~6 us)
        fd = os.open(SCHEDSTAT, os.O_RDONLY)
        try:
            return int(os.read(fd, 128).split()[1]) / 1e9
        finally:
            os.close(fd)
    except (OSError, IndexError, ValueError):
        return None


def thread_times() -> ThreadTimes:
    """The calling thread's clocks now (``wall`` is ``time.perf_counter``)."""
    return ThreadTimes(time.perf_counter(), time.thread_time(), _runqueue_seconds())
