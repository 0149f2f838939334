"""The batch-code benchmark: one tiny run, its JSON and the collector left as found.

Timed figures are never asserted (they depend on the machine).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import batch_speed  # noqa: E402


def test_a_tiny_run_writes_every_step_for_both_collectors(tmp_path: Path) -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    out = tmp_path / "batch_speed.json"
    args = ["--events", "600", "--users", "50", "--batch-size", "128", "--repeats", "1"]
    assert batch_speed.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["events"] == 600 and result["meta"]["batch_size"] == 128
    assert result["outputs_per_run"] >= 600  # a recommendation per click, and sessions
    for setting in (batch_speed.PYTHON_GC, batch_speed.WORKER_GC):
        steps = result["cpu_us_per_event"][setting]
        assert set(steps) == {*batch_speed.STEPS, "total"}
        assert all(value >= 0 for value in steps.values())
        assert steps["total"] > 0
    assert result["total_ratio_python_over_worker"] > 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
