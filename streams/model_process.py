"""A recommender's onnxruntime runs in a child process, off the worker's interpreter lock.

On the CPU the worker's scoring threads share one interpreter with its event loop.
onnxruntime lets go of the GIL while it runs, but every run of a batch's parts has
to take it back, and each part's Python work waits for the event loop: measured
under a backlog, the scoring threads spent a quarter of their time blocked on the
GIL and ~40 % of a core stayed idle (benchmarks/speed_log.md).

A :class:`ModelProcess` is a child interpreter that opens the very bytes the worker
loaded and answers runs: tensors in, tensors out, over a pipe.
The worker still encodes histories and decodes the top-k (the per-token encodings
are cached on its session state); only the model runs elsewhere.  Each scoring
thread has its own child (:class:`ModelProcesses`), so a pipe is never shared.

A child found dead before a batch is replaced at once.  One that dies with a batch
(killed, out of memory) or hangs past ``RUN_TIMEOUT`` fails the runs it was given with
:class:`ModelProcessError` (counted by :func:`failures`): the scorer then runs that
batch in its thread, and the thread's next batch starts a new child.  A child that cannot
start is not tried again for ``START_RETRY_PAUSE`` seconds; meanwhile the runs stay
in the scoring threads.  A child exits when its pipe closes: when the model it serves
is replaced or dropped, or when the worker exits, however it exits.

``RECSTREAM_MODEL_PROCESSES=auto`` (the default) uses model processes only where the
worker can use two CPUs or more (:func:`auto_enabled`): on one core they gained
nothing and cost CPU per batch.

No torch here: this module is on the serving path.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

#: Seconds a run may take before its child is deemed hung and killed (a batch of
#: 1,000 histories runs in well under a second on two cores).
RUN_TIMEOUT: Final = 60.0
#: Seconds a child may take to import onnxruntime and open the model.
START_TIMEOUT: Final = 120.0
#: Seconds a closing child gets to exit before it is killed.
CLOSE_TIMEOUT: Final = 5.0
#: Seconds after a failed start before a thread tries to start a model process again.
START_RETRY_PAUSE: Final = 30.0
_CPU: Final = "CPUExecutionProvider"
#: Feeds of one run: input name -> array.
Feeds = dict[str, np.ndarray]


#: Usable CPUs from which ``RECSTREAM_MODEL_PROCESSES=auto`` runs the model in model
#: processes: on one core they gained nothing and cost CPU (benchmarks/speed_log.md).
AUTO_MIN_CPUS: Final = 2.0


def cpu_quota(root: Path = Path("/")) -> float | None:
    """The CPUs this process's cgroup may use (a container's CPU limit: cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None where no
    limit is set or none can be read.  ``root``: where ``/proc`` and ``/sys`` are."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = root / "sys/fs/cgroup"
    try:
        for line in lines:
            _, controllers, path = line.split(":", 2)
            inside = path.lstrip("/")
            if not controllers:  # cgroup v2; a container sees its own cgroup at the root
                for folder in dict.fromkeys((mounts / inside, mounts)):  # each folder once
                    limit = _read_first_line(folder / "cpu.max")
                    if limit is not None:
                        quota, _, period = limit.partition(" ")
                        return None if quota == "max" else int(quota) / int(period)
            elif "cpu" in controllers.split(","):
                for folder in dict.fromkeys((mounts / controllers / inside, mounts / controllers)):
                    quota_us = _read_first_line(folder / "cpu.cfs_quota_us")
                    period_us = _read_first_line(folder / "cpu.cfs_period_us")
                    if quota_us is not None and period_us is not None:
                        return None if int(quota_us) < 0 else int(quota_us) / int(period_us)
    except (ValueError, ZeroDivisionError):  # not what the kernel writes: no limit known
        return None
    return None


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def usable_cpus(root: Path = Path("/")) -> float:
    """CPUs this process can run on: its affinity, capped by its cgroup's CPU limit."""
    cpus = float(len(os.sched_getaffinity(0)))
    quota = cpu_quota(root)
    return cpus if quota is None else min(cpus, quota)


def auto_enabled(cpus: float | None = None) -> bool:
    """What ``RECSTREAM_MODEL_PROCESSES=auto`` means here: model processes where the
    worker can use at least ``AUTO_MIN_CPUS`` (``cpus``, default :func:`usable_cpus`)."""
    cpus = usable_cpus() if cpus is None else cpus
    enabled = cpus >= AUTO_MIN_CPUS
    log.info(
        "RECSTREAM_MODEL_PROCESSES=auto: %s (usable CPUs: %.3g)",
        "model processes" if enabled else "the model runs in the scoring threads",
        cpus,
    )
    return enabled


class ModelProcessError(RuntimeError):
    """A model process could not start, died, or hung; the next run starts a new one."""


class _FailureCount:
    """How many times a model process failed in this worker (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


_FAILURES: Final = _FailureCount()


def failures() -> int:
    """Model process failures in this worker so far (starts, deaths, hangs): what
    ``recstream_model_process_failures_total`` reports."""
    return _FAILURES.count


@dataclass(frozen=True)
class SessionSpec:
    """What a child needs to open the worker's session: the model's bytes and options.

    ``level`` is an ``ort.GraphOptimizationLevel`` as an int (picklable).
    """

    model: bytes
    intra_op_threads: int
    inter_op_threads: int
    level: int


def _serve(conn: Connection) -> None:
    """The child: open the session sent first, then answer each list of feeds.

    Replies are ``("ready", providers)`` once, then ``("ok", outputs)`` or
    ``("error", text)`` per request; the loop ends when the pipe closes.
    """
    spec: SessionSpec = conn.recv()
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.intra_op_threads
    options.inter_op_num_threads = spec.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel(spec.level)
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(spec.model, options, providers=[_CPU])
    except Exception as exc:
        conn.send(("error", f"cannot open the model: {exc}"))
        return
    conn.send(("ready", session.get_providers()))
    while True:
        try:
            runs: list[Feeds] = conn.recv()
        except EOFError:
            return
        try:
            outputs = [tuple(session.run(None, feeds)) for feeds in runs]
        except Exception as exc:  # a bad input fails its request, not the child
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", outputs))


class ModelProcess:
    """One child process serving one session, used by one thread at a time.

    The child is a fresh interpreter (``python -m recstream.streams.model_process``)
    that imports numpy and onnxruntime only; its end of a socket pair is its one link.
    """

    def __init__(self, spec: SessionSpec) -> None:
        try:
            parent_end, child_end = socket.socketpair()
            with parent_end, child_end:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", __name__, str(child_end.fileno())],
                    pass_fds=[child_end.fileno()],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C to the worker's terminal is its own
                )
                self._conn = Connection(parent_end.detach())
        except OSError as exc:  # out of processes, memory or file descriptors
            raise ModelProcessError(f"cannot start a model process: {exc}") from exc
        try:
            self._conn.send(spec)
            status, detail = self._reply(START_TIMEOUT)
        except (OSError, ModelProcessError) as exc:
            self.close()
            raise ModelProcessError(f"model process {self.pid} did not start: {exc}") from exc
        if status != "ready":
            self.close()
            raise ModelProcessError(f"model process {self.pid}: {detail}")
        log.info("model process %d started with providers %s", self.pid, detail)

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process.poll() is None and not self._conn.closed

    def run(self, runs: Sequence[Feeds]) -> list[tuple[np.ndarray, ...]]:
        """The outputs of each run of ``runs``, in order (one round trip for all)."""
        try:
            self._conn.send(list(runs))
        except OSError as exc:  # BrokenPipeError included: the child is gone
            self.close()
            raise ModelProcessError(f"model process {self.pid} is gone: {exc}") from exc
        status, detail = self._reply(RUN_TIMEOUT)
        if status != "ok":
            raise RuntimeError(f"model process {self.pid}: {detail}")
        outputs: list[tuple[np.ndarray, ...]] = detail  # type: ignore[assignment]
        return outputs

    def _reply(self, timeout: float) -> tuple[str, object]:
        try:
            if not self._conn.poll(timeout):
                self.close(kill=True)
                raise ModelProcessError(f"model process {self.pid} gave no answer in {timeout} s")
            reply: tuple[str, object] = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            code = self._process.returncode
            raise ModelProcessError(f"model process {self.pid} exited (code {code})") from exc
        return reply

    def close(self, kill: bool = False) -> None:
        """End the child: its pipe closes and it exits, or is killed if it does not
        within ``CLOSE_TIMEOUT`` (at once with ``kill``: a hung child reads nothing)."""
        if not self._conn.closed:
            self._conn.close()
        try:
            self._process.wait(0 if kill else CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(CLOSE_TIMEOUT)


class ModelProcesses:
    """The model processes of one loaded model: one per calling thread, each started
    on its thread's first run (or ahead of it: ``prestart``) and again after it failed."""

    def __init__(
        self,
        spec: SessionSpec,
        clock: Callable[[], float] = time.monotonic,
        prestart: int = 0,
    ) -> None:
        """``prestart``: processes started now, in the background, for the first runs
        of that many threads (a thread's first run waits for one still starting)."""
        self._spec = spec
        self._clock = clock
        self._local = threading.local()
        self._ready = threading.Condition()
        self._started: list[ModelProcess] = []
        #: Started ahead of the threads' first runs, not yet taken by a thread.
        self._spares: list[ModelProcess] = []
        #: Whether spares are still starting.
        self._starting = prestart > 0
        self._closed = False
        #: When a start may be tried again (a start failed ``START_RETRY_PAUSE`` before).
        self._retry_at = -math.inf
        if prestart:
            threading.Thread(
                target=self._prestart,
                args=(prestart,),
                name="recstream-model-process-start",
                daemon=True,
            ).start()

    def run(self, runs: Sequence[Feeds]) -> list[tuple[np.ndarray, ...]] | None:
        """``ModelProcess.run`` in the calling thread's process, started if need be; None
        while starts are paused (one failed in the last ``START_RETRY_PAUSE`` seconds and
        this thread has no live process): the caller runs the model itself.  Each
        :class:`ModelProcessError` is counted in :func:`failures`."""
        try:
            process: ModelProcess | None = getattr(self._local, "process", None)
            if process is None or not process.is_alive():
                if self._clock() < self._retry_at:
                    return None
                process = self._start()
            return process.run(runs)
        except ModelProcessError:
            _FAILURES.add()
            raise

    def _prestart(self, count: int) -> None:
        """``count`` spares, one after the other; a failed start ends them (counted, and
        the next starts wait ``START_RETRY_PAUSE``)."""
        try:
            for _ in range(count):
                if self._closed:
                    return
                try:
                    process = self._new_process()
                except ModelProcessError as exc:
                    _FAILURES.add()
                    log.warning("%s; the scoring threads run the model until one starts", exc)
                    return
                with self._ready:
                    if not self._closed:
                        self._spares.append(process)
                        self._started.append(process)
                        self._ready.notify_all()
                        continue
                process.close()  # the model was dropped meanwhile
        finally:
            with self._ready:
                self._starting = False
                self._ready.notify_all()

    def _start(self) -> ModelProcess:
        """A process for the calling thread: a spare (waiting for one that is starting)
        or a new one; a failed start pauses the next ones."""
        with self._ready:
            self._ready.wait_for(lambda: self._spares or not self._starting, START_TIMEOUT)
            while self._spares:
                spare = self._spares.pop()
                if spare.is_alive():
                    self._local.process = spare
                    return spare
        process = self._new_process()
        self._local.process = process
        with self._ready:
            self._started = [p for p in self._started if p.is_alive()] + [process]
        return process

    def _new_process(self) -> ModelProcess:
        """A new child; a failed start pauses the next ones for ``START_RETRY_PAUSE``."""
        try:
            return ModelProcess(self._spec)
        except ModelProcessError:
            self._retry_at = self._clock() + START_RETRY_PAUSE
            raise

    def pids(self) -> list[int]:
        """The process ids of the live children (spares included)."""
        with self._ready:
            return [p.pid for p in self._started if p.is_alive()]

    def close(self) -> None:
        """End every child (a thread's next run would start a new one)."""
        with self._ready:
            started, self._started, self._spares = self._started, [], []
            self._closed = True
        for process in started:
            process.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
