"""The batch-code benchmark: one tiny run, its JSON and the collector left as found.

Timed figures are never asserted (they depend on the machine).
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import batch_speed
import pytest


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


def test_the_pass_mode_runs_the_asked_passes_the_last_through_reduce_with_empty_caches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    thresholds = gc.get_threshold()
    passes: list[str] = []
    reducing = False
    real_run = batch_speed.run_fetched
    real_reduce = functools.reduce

    async def run_fetched(*args: Any) -> dict[str, float]:
        passes.append("counted" if reducing else "not counted")
        return await real_run(*args)

    def reduce(*args: Any) -> Any:
        nonlocal reducing
        assert all(cache.cache_info().currsize == 0 for cache in batch_speed.FIRST_SIGHT_CACHES)
        reducing = True
        try:
            return real_reduce(*args)
        finally:
            reducing = False

    monkeypatch.setattr(batch_speed, "run_fetched", run_fetched)
    monkeypatch.setattr(batch_speed.functools, "reduce", reduce)
    args = ["--events", "300", "--users", "20", "--batch-size", "128", "--passes", "3"]
    try:
        assert batch_speed.main([*args, "--out", str(tmp_path / "x.json")]) == 0
    finally:  # the pass mode sets the worker's collector, as the child process it is
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert passes == ["not counted", "not counted", "counted"]
    assert not (tmp_path / "x.json").exists()
    assert capsys.readouterr().out == ""


def test_the_summary_line_of_a_callgrind_file_is_its_count() -> None:
    text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456789\n\nfn=(1)\n"
    assert batch_speed.callgrind_total(text) == 123_456_789
    assert batch_speed.callgrind_total("events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError, match="no summary"):
        batch_speed.callgrind_total("events: Ir\nfn=(1)\n")


def test_the_second_of_two_passes_is_counted_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []

    def fake_count(command: list[str], env: dict[str, str]) -> int:
        seen.append((command[command.index("--passes") + 1], env["PYTHONHASHSEED"]))
        return 600_000

    monkeypatch.setattr(batch_speed, "count_instructions", fake_count)
    out = tmp_path / "batch_instructions.json"
    args = ["--instructions", "--events", "300", "--users", "20", "--out", str(out)]
    assert batch_speed.main(args) == 0
    result = json.loads(out.read_text())
    assert result["instructions"] == {"second_pass": 600_000}
    assert result["instructions_per_event"] == 2_000  # 600,000 over 300 clicks
    assert seen == [("2", "0")]  # hashes fixed: the same work in every run


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_callgrind_counts_only_inside_reduce_and_more_for_more_work() -> None:
    def count(before: int, inside: int) -> int:
        code = (
            f"import functools; sum(range({before})); "
            f"functools.reduce(lambda total, n: sum(range(n)), [{inside}], 0)"
        )
        return batch_speed.count_instructions([sys.executable, "-I", "-S", "-c", code], {})

    small, large = count(0, 10_000), count(0, 1_000_000)
    assert 0 < small < large
    # ~990,000 more additions: tens of instructions each in the interpreter
    assert 10 * 990_000 < large - small < 1_000 * 990_000
    # the same million additions before the reduce, and start-up, are not counted
    assert abs(count(1_000_000, 10_000) - small) < 0.01 * small
