"""The thread clock: a stretch of a thread's wall time split into on a core, waiting for
one, and blocked."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from recstream.streams import thread_clock
from recstream.streams.thread_clock import ThreadTimes, thread_times


def test_a_difference_of_readings_is_the_stretch_between_them() -> None:
    later = ThreadTimes(wall=10.0, cpu=3.0, runqueue=2.5) - ThreadTimes(5.0, 1.0, 0.5)
    assert later == ThreadTimes(5.0, 2.0, 2.0) and later.blocked == pytest.approx(1.0)
    unknown = ThreadTimes(10.0, 4.0, None) - ThreadTimes(5.0, 1.0, 0.5)
    assert unknown.runqueue is None and unknown.blocked == pytest.approx(2.0)
    assert ThreadTimes(1.0, 1.01, 0.0).blocked == 0.0  # clocks of different resolution


def test_a_thread_waiting_for_a_lock_is_blocked_not_on_a_core() -> None:
    lock = threading.Lock()
    lock.acquire()
    split: list[ThreadTimes] = []

    def wait() -> None:
        started = thread_times()
        with lock:
            split.append(thread_times() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    lock.release()
    waiter.join()
    (times,) = split
    assert times.wall >= 0.25
    assert times.cpu < 0.1 and times.blocked > 0.2


def test_a_busy_thread_is_on_a_core_or_waiting_for_one() -> None:
    started = thread_times()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        pass
    times = thread_times() - started
    assert times.cpu + (times.runqueue or 0.0) == pytest.approx(times.wall, rel=0.3)
    assert times.blocked < 0.3 * times.wall


def test_the_run_queue_wait_is_read_on_linux() -> None:
    reading = thread_times()
    if sys.platform == "linux":
        assert reading.runqueue is not None and reading.runqueue >= 0.0
    else:
        assert reading.runqueue is None


@pytest.mark.skipif(sys.platform != "linux", reason="schedstat is read on Linux only")
def test_readings_keep_the_gil_the_file_open_once_per_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a thread's first reading no Python file call is made (each would release the
    GIL, and getting it back beside a busy thread takes up to the switch interval): the
    run delay comes from the thread's open file through libc's ``pread``, and grows."""
    calls: list[str] = []
    for name in ("open", "read", "pread", "close"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, _counted(calls, name, real))
    readings: list[ThreadTimes] = []

    def read() -> None:
        readings.append(thread_times())  # opens the file
        calls.clear()
        for _ in range(5):
            deadline = time.perf_counter() + 0.01
            while time.perf_counter() < deadline:
                pass
            readings.append(thread_times())
        calls.append("done")

    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    assert calls[0] == "done"  # nothing before it (the thread's close may follow)
    delays = [reading.runqueue for reading in readings]
    assert None not in delays and delays == sorted(delays)  # type: ignore[type-var]


@pytest.mark.skipif(sys.platform != "linux", reason="schedstat is read on Linux only")
def test_a_threads_schedstat_file_is_closed_when_the_thread_ends() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        reader = threading.Thread(target=thread_times)
        reader.start()
        reader.join()
    assert len(os.listdir("/proc/self/fd")) == before


def _counted(calls: list[str], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    return call


@pytest.mark.skipif(sys.platform != "linux", reason="schedstat is read on Linux only")
def test_a_forked_child_reads_its_own_threads_file() -> None:
    """The file a reading uses is the reading thread's own, in a forked child too (the
    child inherits its parent thread's open file, which is not its own)."""

    def read_file() -> str:
        thread_times()
        return os.readlink(f"/proc/self/fd/{thread_clock._THREAD.schedstat.fd}")

    assert read_file() == f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        os.write(writer, f"{read_file()} {threading.get_native_id()}".encode())
        os._exit(0)
    os.waitpid(child, 0)
    path, tid = os.read(reader, 200).decode().split()
    os.close(reader)
    os.close(writer)
    assert path == f"/proc/{child}/task/{tid}/schedstat"


def _spin(seconds: float) -> None:
    """Run on a core for ``seconds`` of this thread's CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


@pytest.mark.skipif(sys.platform != "linux", reason="schedstat is read on Linux only")
def test_another_threads_core_seconds_are_read_by_its_native_id() -> None:
    ids: list[int] = []
    started, spun = threading.Event(), threading.Event()

    def spin_then_wait() -> None:
        ids.append(threading.get_native_id())
        started.wait()
        _spin(0.05)
        spun.set()
        time.sleep(0.2)  # alive while it is read

    spinner = threading.Thread(target=spin_then_wait)
    spinner.start()
    while not ids:
        time.sleep(0.001)
    before = thread_clock.thread_core_seconds(ids[0])
    started.set()
    spun.wait()
    after = thread_clock.thread_core_seconds(ids[0])
    spinner.join()
    assert before is not None and after is not None
    assert after[0] - before[0] >= 0.045  # its CPU time, not the reader's
    assert after[1] >= before[1] >= 0.0
    assert thread_clock.thread_core_seconds(ids[0]) is None  # the thread ended
