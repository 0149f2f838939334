"""The worker profiler's parsing and reports (the py-spy runs themselves are not run here)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import profile_worker


def _args(gil: bool) -> argparse.Namespace:
    return argparse.Namespace(native=False, gil=gil, rate=100)


def test_gil_mode_asks_py_spy_for_the_gil_holder_only(tmp_path: Path) -> None:
    out = tmp_path / "stacks.txt"
    plain = profile_worker.record_options(_args(gil=False), out)
    held = profile_worker.record_options(_args(gil=True), out)
    assert "--gil" not in plain and "--nonblocking" in plain
    assert "--subprocesses" in plain  # the model processes
    assert [o for o in held if o != "--gil"] == list(plain) and held.count("--gil") == 1
    assert held[held.index("--output") + 1] == str(out)


def test_threads_are_counted_from_the_stacks_first_frame(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(  # py-spy's raw format with --threads
        "thread (2116): MainThread;run (asyncio/base_events.py) 30\n"
        "thread (2125): recstream-scoring_0;run_with_iobinding (onnxruntime) 12\n"
        "thread (2116): MainThread;prepare (recstream/streams/pipeline.py) 10\n"
        "not a stack line\n"
    )
    threads = profile_worker.thread_samples(stacks)
    assert threads == Counter({"MainThread": 40, "recstream-scoring_0": 12})


def test_gil_shares_add_up_to_the_time_the_gil_was_held() -> None:
    threads = Counter({"MainThread": 400, "recstream-scoring_0": 100, "recstream-scoring_1": 50})
    # 100 samples/s over 10 s: 1,000 possible samples; 1,000 events, 10 µs per sample.
    lines = profile_worker.thread_lines(threads, 100, 10, 10.0, gil=True)
    assert lines[0].startswith("Per thread (holding the GIL over the 10 s profiled")
    assert lines[1].split() == ["40.0%", "4000.0", "µs", "MainThread"]
    assert lines[-1].split()[0] == "55.0%" and lines[-1].endswith("some thread held the GIL")
    busy = profile_worker.thread_lines(threads, 100, 10, 10.0, gil=False)
    assert "% of one core" in busy[0] and len(busy) == 4  # no GIL total without --gil


_WORKER = 'process 700:"python -m recstream worker"'
_CHILD = 'process 812:"python -m recstream.streams.model_process 5"'


def test_model_processes_are_named_and_grouped_apart_from_the_worker(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(  # py-spy's raw format with --threads --subprocesses
        f"{_WORKER};thread (700): MainThread;prepare (recstream/streams/pipeline.py) 10\n"
        f"{_WORKER};{_CHILD};thread (812): MainThread;_serve (model_process.py) 6\n"
        f"{_WORKER};thread (700): MainThread;_find_and_load (<frozen importlib>) 3\n"
    )
    assert profile_worker.thread_samples(stacks) == Counter(
        {"MainThread": 13, "child 812 (model process): MainThread": 6}
    )
    total, leaf, groups = profile_worker.parse_collapsed(stacks)
    assert total == 16  # the import left out
    assert leaf["_serve (model_process.py)"] == 6
    assert groups[profile_worker.CHILDREN] == 6
    assert groups["recstream Pipeline.prepare"] == 10
    lines = profile_worker.thread_lines(
        profile_worker.thread_samples(stacks), 100, 1, 1.0, gil=True
    )
    assert lines[-1].split()[0] == "13.0%"  # the worker's GIL only
