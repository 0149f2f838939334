"""Reliability report: runs the reliability tests and prints what they measured.

Runs the crash, rebalance, bad-input, forget, partition-check and soak tests on the
embedded broker (``RECSTREAM_TEST_BROKER`` / ``RECSTREAM_BOOTSTRAP_SERVERS`` as for
any integration test), then the rebalance test on Tansu (noida cannot rebalance),
with ``RELIABILITY_RESULTS_DIR`` set, so each test writes its
counts as JSON; then prints one table (records of each bad kind tried and
dead-lettered, worker crashes, events produced vs outputs seen after the crash and
rebalance tests, duplicates, soak memory) and writes
``benchmarks/results/reliability.json``.

    .venv/bin/python benchmarks/reliability_report.py            # run the tests, report
    .venv/bin/python benchmarks/reliability_report.py --no-run   # report the last run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUN_DIR = RESULTS / "reliability-run"
TESTS = (
    "tests/integration/test_crash_and_rebalance.py",
    "tests/integration/test_bad_input_worker.py",
    "tests/integration/test_forget_end_to_end.py",
    "tests/integration/test_reliability.py",
    "tests/integration/test_reliability_soak.py",
)


#: Run again on Tansu: noida cannot rebalance two live members (see the test).
TANSU_TESTS = (
    "tests/integration/test_crash_and_rebalance.py::test_second_worker_joins_and_leaves",
)


def run_tests() -> int:
    """Run the suite with results written to RUN_DIR (and the rebalance test on Tansu,
    unless an external Kafka is set); returns pytest's exit code (the first failing)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for old in (*RUN_DIR.glob("*.json"), *RUN_DIR.glob("*.xml")):
        old.unlink()
    env = dict(os.environ, RELIABILITY_RESULTS_DIR=str(RUN_DIR))
    runs: list[tuple[tuple[str, ...], dict[str, str], str]] = [(TESTS, env, "junit.xml")]
    if not os.environ.get("RECSTREAM_BOOTSTRAP_SERVERS"):
        runs.append((TANSU_TESTS, dict(env, RECSTREAM_TEST_BROKER="tansu"), "junit-tansu.xml"))
    codes = []
    for tests, run_env, junit in runs:
        command = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
                   f"--junitxml={RUN_DIR / junit}"]  # fmt: skip
        codes.append(subprocess.run(command, cwd=REPO, env=run_env).returncode)
    return next((code for code in codes if code), 0)


def outcomes() -> dict[str, str]:
    """test name -> passed / failed / skipped (reason) from the last run's JUnit XML
    (the Tansu run's names end in " (tansu)")."""
    out: dict[str, str] = {}
    for junit, suffix in (("junit.xml", ""), ("junit-tansu.xml", " (tansu)")):
        path = RUN_DIR / junit
        if not path.exists():
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            status = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    status = f"{tag}: {(node.get('message') or '')[:120]}"
            out[case.get("name", "?") + suffix] = status
    return out


def load(name: str) -> dict[str, Any] | None:
    path = RUN_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="report the last run only")
    args = parser.parse_args(argv)
    code = 0 if args.no_run else run_tests()
    report: dict[str, Any] = {
        "tests": outcomes(),
        "bad_input": load("bad_input"),
        "crash": load("crash"),
        "crash_exactly_once": load("crash_exactly_once"),
        "rebalance": load("rebalance"),
        "soak": load("soak"),
    }
    crashed = [n for n, s in report["tests"].items() if s.startswith(("failure", "error"))]
    report["failed_tests"] = crashed
    bad = report["bad_input"]
    if bad is not None:
        report["worker_crashes_under_bad_input"] = 0 if bad.get("worker_exit") in (0, None) else 1
    print("== tests")
    for name, status in report["tests"].items():
        print(f"  {name:<70} {status}")
    if bad is not None:
        print("== bad input through a running worker (records)")
        print(f"  {'kind':<16} {'tried':>7} {'dead-lettered':>14}")
        for kind in sorted(bad["tried"]):
            print(f"  {kind:<16} {bad['tried'][kind]:>7} {bad['dead_lettered'].get(kind, 0):>14}")
        print(f"  worker exit code at the end: {bad.get('worker_exit')} (0 = stopped cleanly)")
    for name in ("crash", "crash_exactly_once", "rebalance"):
        res = report[name]
        if res is None:
            print(f"== {name}: no result (test skipped or failed before measuring)")
            continue
        print(f"== {name}")
        for key in ("events_produced", "recommendations_expected", "recommendations_seen",
                    "sentiments_expected", "sentiments_seen", "sessions_expected",
                    "sessions_seen", "duplicates", "duplicate_bound"):  # fmt: skip
            print(f"  {key:<28} {res[key]}")
    soak = report["soak"]
    if soak is not None:
        print("== soak")
        for key in ("seconds", "rate", "events_produced", "backlog_at_end", "rss_first_mib",
                    "rss_peak_mib", "rss_last_mib", "rss_growth_mib"):  # fmt: skip
            print(f"  {key:<28} {soak[key]}")
    out = RESULTS / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
