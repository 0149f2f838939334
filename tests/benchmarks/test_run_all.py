"""``benchmarks/run_all.py``: runs each benchmark script, passes ``--quick``, reports status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import run_all


def _script(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(f"import sys, pathlib\n{body}\n")


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    # Each script records the arguments it got, so the test sees what run_all passed.
    _script(
        folder,
        "pipeline_speed",
        "pathlib.Path(__file__).with_suffix('.args').write_text(' '.join(sys.argv[1:]))",
    )
    _script(folder, "scorer_speed", "sys.exit(3)")
    return folder


def test_run_one_reports_ok_failed_and_missing(bench_dir: Path) -> None:
    ok = run_all.run_one("pipeline_speed", True, 0, 60, bench_dir)
    assert ok["status"] == "ok" and ok["returncode"] == 0
    assert (bench_dir / "pipeline_speed.args").read_text() == "--quick"
    failed = run_all.run_one("scorer_speed", False, 0, 60, bench_dir)
    assert failed["status"] == "failed" and failed["returncode"] == 3
    missing = run_all.run_one("recs_quality", True, 0, 60, bench_dir)
    assert missing["status"] == "missing" and missing["returncode"] is None


def test_run_one_without_quick_passes_no_arguments(bench_dir: Path) -> None:
    assert run_all.run_one("pipeline_speed", False, 0, 60, bench_dir)["status"] == "ok"
    assert (bench_dir / "pipeline_speed.args").read_text() == ""


def test_run_one_timeout(bench_dir: Path) -> None:
    _script(bench_dir, "recs_quality", "import time; time.sleep(30)")
    assert run_all.run_one("recs_quality", True, 0, 0.5, bench_dir)["status"] == "timeout"


def test_main_writes_summary_and_fails_when_one_fails(bench_dir: Path, tmp_path: Path) -> None:
    summary = tmp_path / "run_all.json"
    code = run_all.main(
        [
            "--quick",
            "--only",
            "pipeline_speed,scorer_speed,sentiment_quality",
            "--bench-dir",
            str(bench_dir),
            "--summary",
            str(summary),
        ]
    )
    assert code == 1  # scorer_speed exits 3
    data = json.loads(summary.read_text())
    assert data["quick"] is True
    statuses = {row["name"]: row["status"] for row in data["benchmarks"]}
    assert statuses == {
        "pipeline_speed": "ok",
        "scorer_speed": "failed",
        "sentiment_quality": "missing",
    }


def test_main_succeeds_when_everything_present_passes(bench_dir: Path, tmp_path: Path) -> None:
    code = run_all.main(
        [
            "--only",
            "pipeline_speed",
            "--bench-dir",
            str(bench_dir),
            "--summary",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 0


def test_main_rejects_unknown_benchmarks() -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])
