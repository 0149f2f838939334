"""The benchmarks' shared measuring helpers (those the benchmark tests do not cover)."""

from __future__ import annotations

import os
import time

import bench_common as bc


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
