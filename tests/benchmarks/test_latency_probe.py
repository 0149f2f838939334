"""The latency probe: how it splits an answer's latency, and one tiny run on noida.

Timed figures are never asserted (they depend on the machine).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import bench_common as bc
import latency_probe
import pytest


def test_each_answer_is_split_at_the_workers_emission() -> None:
    watch = bc.OutputWatch(target=3, keep_values=True, keep_times=True)
    watch.values = [
        {"event_ts": 100.000, "emitted_at": 100.010},
        {"event_ts": 100.000, "emitted_at": 100.030},
        {"event_ts": 100.100, "emitted_at": 100.120},
    ]
    watch.receipt_times = [100.015, 100.032, 100.150]
    split = latency_probe.split_latency(watch)  # nearest-rank percentiles of three
    assert split["event_to_emitted_ms"] == pytest.approx({"p50": 20, "p90": 30, "p99": 30})
    assert split["emitted_to_received_ms"] == pytest.approx({"p50": 5, "p90": 30, "p99": 30})
    assert split["total_ms"] == pytest.approx({"p50": 32, "p90": 50, "p99": 50})


def test_worker_settings_are_taken_as_recstream_variables_only() -> None:
    assert latency_probe.parse_env(["RECSTREAM_BATCH_WITHIN=0.001"]) == {
        "RECSTREAM_BATCH_WITHIN": "0.001"
    }
    for bad in ("BATCH_WITHIN=1", "RECSTREAM_BATCH_WITHIN"):
        with pytest.raises(SystemExit):
            latency_probe.parse_env([bad])


#: Two readings of a worker's collector pauses (``bc.gc_pauses``): generation 1 first
#: collected between them, generation 2 not at all.
GC_BEFORE = {
    "collections": 3,
    "seconds": 0.120,
    "by_generation": {"0": {"collections": 3, "seconds": 0.120}},
}
GC_AFTER = {
    "collections": 6,
    "seconds": 0.2852,
    "by_generation": {
        generation: {"collections": collections, "seconds": seconds}
        for generation, collections, seconds in (("0", 5, 0.1852), ("1", 1, 0.1), ("2", 0, 0.0))
    },
}


def test_gc_pauses_between_two_readings() -> None:
    """In all and per generation; a generation first seen in the later reading counts
    from zero."""
    assert latency_probe.gc_between(GC_BEFORE, GC_AFTER) == {
        "collections": 3,
        "ms": 165.2,
        "by_generation": {
            "0": {"collections": 2, "ms": 65.2},
            "1": {"collections": 1, "ms": 100.0},
            "2": {"collections": 0, "ms": 0.0},
        },
    }


def test_py_spy_dump_lines_name_threads_by_native_id() -> None:
    dump = (
        "Process 13993: python -m recstream worker\n"
        "Python v3.11.7 (/usr/bin/python3.11)\n\n"
        'Thread 13993 (idle): "MainThread"\n'
        "    select (selectors.py:468)\n"
        'Thread 14002 (active): "Thread-1"\n'
        "    run (threading.py:975)\n"
        'Thread 14009 (idle+gil): "recstream-scoring_0"\n'
    )
    assert bc.parse_thread_names(dump) == {
        13993: "MainThread",
        14002: "Thread-1",
        14009: "recstream-scoring_0",
    }


def test_thread_cpu_is_summed_by_name_with_unnamed_threads_as_other() -> None:
    names = {1: "MainThread", 2: "pool_0", 3: "pool_0"}
    percents = {1: 20.0, 2: 5.5, 3: 4.5, 4: 1.2, 5: 0.3}
    assert bc.by_thread_name(percents, names) == {
        "MainThread": 20.0,
        "pool_0": 10.0,
        "other": 1.5,
    }
    assert list(bc.by_thread_name(percents, names)) == ["MainThread", "pool_0", "other"]


def test_a_busy_thread_shows_its_cpu_in_the_window() -> None:
    window = bc.ThreadCpuWindow(os.getpid())
    spun, release = threading.Event(), threading.Event()

    def spin() -> None:
        end = time.thread_time() + 0.3  # this thread's own CPU time
        while time.thread_time() < end:
            pass
        spun.set()
        release.wait()  # alive while the window ends: a gone thread is not listed

    window.begin()
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        assert spun.wait(30)
        shares = window.end()
    finally:
        release.set()
        worker.join()
    assert worker.native_id is not None
    assert shares[worker.native_id] > 1.0  # 0.3 s of CPU in a window of at most 30 s
    assert threading.main_thread().native_id in shares


@pytest.mark.integration
@pytest.mark.timeout(170)
def test_a_tiny_run_answers_every_click_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "latency_probe.json"
    args = ["--scenario", "recstream-passthrough", "--rates", "50,100", "--seconds", "1"]
    cpu = min(os.sched_getaffinity(0))  # the worker pinned to one core still answers
    args += ["--worker-cpus", str(cpu)]
    assert latency_probe.main([*args, "--warmup", "200", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["broker"] == "noida"
    assert result["meta"]["worker_cpus"] == [cpu]
    assert [phase["rate"] for phase in result["phases"]] == [50.0, 100.0]
    for phase in result["phases"]:
        assert phase["received"] == phase["sent"] > 0
        for part in ("event_to_emitted_ms", "emitted_to_received_ms", "total_ms"):
            assert set(phase[part]) == {"p50", "p90", "p99"}
        assert phase["total_ms"]["p50"] >= phase["event_to_emitted_ms"]["p50"] > 0
        assert phase["scoring_batches"] >= 1 and phase["mean_scoring_batch"] >= 1
        assert phase["gc"]["collections"] >= 0 and phase["gc"]["ms"] >= 0
        means = phase["worker_means_ms"]  # the input delay is a part of the end-to-end time
        assert 0 <= means["input_delay"] <= means["end_to_end"]
        busy = phase["scoring_threads_busy"]
        assert busy is None or (set(busy) == {"cpu", "runqueue", "blocked"} and busy["cpu"] > 0)
        loop = phase["event_loop"]  # the worker's event loop ran in every phase
        assert set(loop) == {"cpu", "runqueue"} and loop["cpu"] > 0 and loop["runqueue"] >= 0


def test_the_table_gives_the_pauses_of_each_generation_that_collected() -> None:
    gc = latency_probe.gc_between(GC_BEFORE, GC_AFTER)
    assert latency_probe.gc_pauses(gc) == "3 / 165.2 (gen 0: 2 / 65.2, gen 1: 1 / 100.0)"
    assert latency_probe.gc_pauses({"collections": 0, "ms": 0.0}) == "0 / 0.0"  # older results
