"""State recovery: how long a worker takes to restore many users' state from its changelog.

The performance issue asks for the changelog recovery of 100,000 users in under 30 s.
One run, on the embedded noida broker (Tansu's end offsets make Faust stop recovering
early, see its caveat):

1. ``recstream worker`` (the pass-through scenario of ``pipeline_speed``: the whole
   worker with scorers that answer at once) starts on empty topics; the time from its
   start to the answer to a probe click is the cold start.  It is stopped.
2. The user-state changelog gets ``--users`` states, one record per user on the user's
   home partition, as a worker would have left them: each with a full history
   (``--history`` tokens, 10-character item ids), three open events a minute or two
   old and a full de-duplication memory (``UserState.to_bytes``).
3. The worker starts again.  The time to the answer to a probe click of one of those
   users is the restart; restart minus cold start is the recovery.  The answer's
   session id must be that user's open session from the changelog (the state came
   back), and the worker's resident memory is read once it answered.

Prints a table and writes ``benchmarks/results/state_recovery.json``.

    python benchmarks/state_recovery.py                  # 100,000 users (~30 s)
    python benchmarks/state_recovery.py --quick          # 2,000 users (state_recovery_quick.json)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_common as bc
import pipeline_speed as ps
import psutil

from recstream.model.features import ACTION_IDS
from recstream.streams.broker import EmbeddedBroker
from recstream.streams.pipeline import home_partition
from recstream.streams.sessions import UserState, event_hash, history_step, session_id_of
from recstream.streams.settings import Settings

RESULTS = bc.RESULTS_DIR / "state_recovery.json"
QUICK_RESULTS = bc.RESULTS_DIR / "state_recovery_quick.json"
PARTITIONS = 4
#: The probe's user: one of the users written to the changelog.
PROBE_USER = "u0"
#: Seconds between a written state's open session's start and the time it is written.
OPEN_SESSION_AGE = 120.0


def user_state(index: int, now: float, history: int, dedup: int) -> bytes:
    """User ``u{index}``'s stored state as a busy worker leaves it (distinct 10-character
    item ids per user; the open session starts ``OPEN_SESSION_AGE`` before ``now``)."""
    views = ACTION_IDS["view"]
    start = now - OPEN_SESSION_AGE
    state = UserState(
        last_ts=now - 60.0,
        closed_until=now - 4000.0,
        history=[history_step(views, f"p{(index * 7919 + n) % 10**9:09d}") for n in range(history)],
        pending=[history_step(views, f"p{n:09d}") for n in range(3)],
        pending_times=[start + 30.0 * n for n in range(3)],
        seen=b"".join(event_hash(f"u{index}-e{n}") for n in range(dedup)),
    )
    return state.to_bytes()


async def write_changelog(
    bootstrap: str, topic: str, users: int, now: float, history: int, dedup: int
) -> int:
    """One state per user on its home partition; returns the bytes written."""
    records = [(f"u{n}".encode(), user_state(n, now, history, dedup)) for n in range(users)]
    await bc.produce_backlog(
        bootstrap, topic, records, lambda key: home_partition(key.decode(), PARTITIONS)
    )
    written = sum(len(key) + len(value) for key, value in records)
    return written


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Cold start, changelog written, restart; returns the figures."""
    broker = EmbeddedBroker("noida")
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        target = ps.make_target("recstream-passthrough", bootstrap, PARTITIONS)
        assert target.changelog is not None
        await ps.prepare_target(bootstrap, target, PARTITIONS, bc.Backlog([], "none", 0))
        group = ps.Workers(target)
        try:
            spawned = group.spawn()
            await ps.probe(bootstrap, target, "cold-probe", "probe-cold-", args.timeout)
            cold_s = time.perf_counter() - spawned
            group.stop()
            now = time.time()
            written = await write_changelog(
                bootstrap, target.changelog, args.users, now, args.history, args.dedup
            )
            spawned = group.spawn()
            answer = await ps.probe(bootstrap, target, PROBE_USER, "probe-after-", args.timeout)
            restart_s = time.perf_counter() - spawned
            worker = psutil.Process(group.procs[-1].pid)
            rss = sum(p.memory_info().rss for p in [worker, *worker.children(recursive=True)])
        finally:
            group.stop()
    finally:
        broker.stop()
    recovery_s = max(restart_s - cold_s, 0.0)
    expected = session_id_of(PROBE_USER, now - OPEN_SESSION_AGE)
    return {
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "broker": "noida",
            "partitions": PARTITIONS,
            "history_tokens": args.history,
            "dedup_window": args.dedup,
            "settings_history_length": Settings().history_length,
        },
        "users": args.users,
        "changelog_bytes": written,
        "bytes_per_user": written / args.users,
        "cold_start_s": cold_s,
        "restart_s": restart_s,
        "recovery_s": recovery_s,
        "users_per_s": args.users / recovery_s if recovery_s > 0 else None,
        "worker_rss_mb": rss / 2**20,
        "probe_session_id": answer.get("session_id"),
        "expected_session_id": expected,
        "state_recovered": answer.get("session_id") == expected,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=50, help="history tokens per user")
    parser.add_argument("--dedup", type=int, default=64, help="event ids remembered per user")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per probe")
    parser.add_argument("--quick", action="store_true", help="2,000 users")
    parser.add_argument("--out", type=Path, help="default: results/state_recovery[_quick].json")
    args = parser.parse_args(argv)
    if args.quick:
        args.users = 2_000
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    result = asyncio.run(run(args))
    rows = [
        ["users", f"{result['users']:,}"],
        ["bytes per user (key + state)", f"{result['bytes_per_user']:,.0f}"],
        ["cold start s", f"{result['cold_start_s']:.1f}"],
        ["restart s", f"{result['restart_s']:.1f}"],
        ["recovery s", f"{result['recovery_s']:.1f}"],
        ["users recovered per s", bc.fmt(result["users_per_s"])],
        ["worker RSS MB after recovery", f"{result['worker_rss_mb']:,.0f}"],
        ["probe user's session back", str(result["state_recovered"])],
    ]
    print(bc.markdown_table(["measure", "value"], rows))
    bc.write_json(args.out, result)
    return 0 if result["state_recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
