"""The benchmarks' shared measuring helpers (those the benchmark tests do not cover)."""

from __future__ import annotations

import gc
import os
import time
import weakref

import bench_common as bc
import pytest

from recstream.streams import metrics as metrics_module
from recstream.streams.metrics import Metrics
from recstream.streams.thread_clock import ThreadTimes


def test_cpu_window_reports_the_machine_s_idle_cpu_beside_the_processes() -> None:
    """A busy loop here: this process uses about one core, the idle figure is what the
    machine's CPUs left unused, and together they fit in the machine."""
    window = bc.CpuWindow({"observer": [os.getpid()]})
    window.begin()
    deadline = time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        pass
    result = window.end()
    capacity = 100.0 * (os.cpu_count() or 1)
    assert set(result) == {"observer", bc.IDLE}
    assert 20.0 <= result["observer"] <= 110.0  # one thread; CPU clocks tick every 10 ms
    assert 0.0 <= result[bc.IDLE] <= capacity - result["observer"] + 10.0


class _Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_collector_paused_stops_automatic_collections_and_restores_them() -> None:
    """Inside the block no collection runs however much cyclic garbage piles up (the
    youngest generation's threshold is passed many times over); afterwards the
    collector is on again, nothing is frozen, and the garbage is collectable."""
    collections: list[int] = []

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    with bc.collector_paused():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what existed before, this test's module too
        gc.callbacks.append(hook)
        try:
            first = weakref.ref(_Cycle())
            for _ in range(20 * gc.get_threshold()[0]):
                _Cycle()
            assert first() is not None  # garbage, but no collection came to free it
        finally:
            gc.callbacks.remove(hook)
    assert collections == []
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert first() is None


def test_collector_paused_restores_on_error_and_leaves_a_disabled_collector_off() -> None:
    gc.disable()
    try:
        with pytest.raises(RuntimeError), bc.collector_paused():
            raise RuntimeError("boom")
        assert not gc.isenabled()
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), bc.collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_scoring_threads_busy_between_two_scrapes_by_state() -> None:
    metrics = Metrics()
    before = metrics.render()[0].decode()
    assert bc.scoring_threads_busy(before, before, 2.0) is None  # nothing scored
    metrics.scoring_thread_time(ThreadTimes(wall=1.0, cpu=0.6, runqueue=0.3))
    middle = metrics.render()[0].decode()
    metrics.scoring_thread_time(ThreadTimes(wall=3.0, cpu=1.4, runqueue=0.5))
    after = metrics.render()[0].decode()
    assert bc.scoring_threads_busy(before, middle, 2.0) == pytest.approx(
        {"cpu": 0.3, "runqueue": 0.15, "blocked": 0.05}
    )
    # 2 s of wall time in 0.5 s: four threads busy on average, counted from ``middle``
    assert bc.scoring_threads_busy(middle, after, 0.5) == pytest.approx(
        {"cpu": 2.8, "runqueue": 1.0, "blocked": 2.2}
    )


def test_event_loop_busy_between_two_scrapes_is_a_share_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics()
    before = metrics.render()[0].decode()
    assert bc.event_loop_busy(before, before, 2.0) is None  # no event loop watched
    readings = iter([(10.0, 4.0), (10.5, 4.4)])  # seconds on a core, in the run queue
    monkeypatch.setattr(metrics_module, "thread_core_seconds", lambda _: next(readings))
    metrics.watch_event_loop()
    first, later = metrics.render()[0].decode(), metrics.render()[0].decode()
    assert bc.event_loop_busy(first, later, 2.0) == pytest.approx({"cpu": 0.25, "runqueue": 0.2})


def test_latency_means_between_two_scrapes() -> None:
    metrics = Metrics()
    before = metrics.render()[0].decode()
    assert bc.latency_means(before, before) == dict.fromkeys(
        ("input_delay", "scoring_per_batch", "end_to_end")
    )
    metrics.input_delay([0.010, 0.030])
    metrics.scoring_batch("recs", 2, 0.004)
    metrics.scoring_batch("sentiment", 1, 0.5)  # another model's batches are not counted
    metrics.end_to_end([0.020, 0.040])
    after = metrics.render()[0].decode()
    assert bc.latency_means(before, after) == pytest.approx(
        {"input_delay": 20.0, "scoring_per_batch": 4.0, "end_to_end": 30.0}
    )
    metrics.input_delay([0.1])
    later = metrics.render()[0].decode()
    assert bc.latency_means(after, later) == {
        "input_delay": 100.0,
        "scoring_per_batch": None,
        "end_to_end": None,
    }


def _mean_history(keys: list[bytes]) -> float:
    """Each click's history length (its user's clicks so far), averaged over the clicks."""
    seen: dict[bytes, int] = {}
    total = 0
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
        total += seen[key]
    return total / len(keys)


def test_live_clicks_come_from_new_users_with_the_backlog_s_history_lengths() -> None:
    """Paced load is scored on histories as long as the backlog's: a phase's users are
    its own (tagged) and have as many clicks each as a backlog of that density, whatever
    the phase's size (the same users in every phase made each phase's histories longer)."""
    backlog = bc.make_backlog(6_000, 600)
    small = bc.live_clicks(3_000, 10.0, "a-")
    large = bc.live_clicks(12_000, 10.0, "b-")
    assert len(small) == 3_000 and len(large) == 12_000
    reference = _mean_history([key for key, _ in backlog.records])
    for clicks in (small, large):
        assert 0.8 * reference <= _mean_history([key for key, _ in clicks]) <= 1.2 * reference
    assert {key for key, _ in small}.isdisjoint({key for key, _ in large})
    for key, event in small:
        assert key == event["user_id"].encode() and key.startswith(b"a-")
        assert event["action"] in {"view", "add_to_cart", "purchase"} and event["item_id"]
    assert len({event["event_id"] for _, event in small}) == len(small)
    assert all(event["event_id"].startswith("a-") for _, event in small)
    denser = bc.live_clicks(3_000, 30.0, "c-")
    assert _mean_history([key for key, _ in denser]) > 1.5 * _mean_history(
        [key for key, _ in small]
    )
