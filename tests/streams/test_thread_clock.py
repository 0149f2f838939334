"""The thread clock: a stretch of a thread's wall time split into on a core, waiting for
one, and blocked."""

from __future__ import annotations

import sys
import threading
import time

import pytest

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
