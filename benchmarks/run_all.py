"""Run every recstream benchmark (what ``make bench`` runs) and summarise how each went.

Each benchmark is a script in ``benchmarks/`` that prints a table and writes its JSON
under ``benchmarks/results/``; scripts not written yet are listed as missing.  Each
runs in its own process, one after the other (they would distort each other's timings).

    .venv/bin/python benchmarks/run_all.py            # full runs (long)
    .venv/bin/python benchmarks/run_all.py --quick    # tiny configurations
    .venv/bin/python benchmarks/run_all.py --only pipeline_speed,scorer_speed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
#: Benchmarks in the order they run.
BENCHMARKS = (
    "pipeline_speed",
    "batch_speed",
    "state_recovery",
    "latency_probe",
    "scorer_speed",
    "recs_quality",
    "sentiment_quality",
)


def run_one(
    name: str, quick: bool, nice: int, timeout: float | None, bench_dir: Path = BENCH_DIR
) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` (with ``--quick`` when asked); its status and duration."""
    script = bench_dir / f"{name}.py"
    if not script.is_file():
        return {"name": name, "status": "missing", "seconds": 0.0, "returncode": None}
    command = [sys.executable, str(script), *(["--quick"] if quick else [])]
    started = time.perf_counter()
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    try:
        done = subprocess.run(
            command,
            cwd=bench_dir.parent,
            timeout=timeout,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
            check=False,
        )
        code: int | None = done.returncode
        status = "ok" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        code, status = None, "timeout"
    return {
        "name": name,
        "status": status,
        "seconds": round(time.perf_counter() - started, 1),
        "returncode": code,
    }


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per benchmark."""
    lines = [f"{'benchmark':<20} {'status':<8} {'seconds':>8}"]
    lines += [f"{row['name']:<20} {row['status']:<8} {row['seconds']:>8.1f}" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration of each")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--nice", type=int, default=0, help="run the benchmarks at this niceness")
    parser.add_argument("--timeout", type=float, help="seconds allowed per benchmark")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    parser.add_argument(
        "--summary", type=Path, default=RESULTS_DIR / "run_all.json", help="summary JSON path"
    )
    args = parser.parse_args(argv)
    names = BENCHMARKS
    if args.only:
        names = tuple(n.strip() for n in args.only.split(",") if n.strip())
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            parser.error(f"unknown benchmarks: {unknown}")
    rows = [run_one(name, args.quick, args.nice, args.timeout, args.bench_dir) for name in names]
    print()
    print(summary_table(rows))
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "benchmarks": rows,
            },
            indent=2,
        )
    )
    failed = [row["name"] for row in rows if row["status"] in ("failed", "timeout")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
