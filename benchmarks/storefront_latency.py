"""Latency of the storefront HTTP API: local hits, routed requests, and Faust's own floor.

Two worker web servers (separate processes, 127.0.0.1) each own one of two table
partitions and hold ``--users`` users' latest recommendations.  An aiohttp client
sends requests open-loop at ``--rate`` per second (each on its own schedule, so a
slow answer never delays the next request) for ``--seconds`` per scenario:

* ``faust constant``: the same Faust web server answering a constant JSON body (the
  framework's own floor, no storefront code);
* ``local hit``: ``GET /v1/users/{id}/recommendations`` on the worker that owns the user;
* ``routed``: the same request to the other worker, which forwards it to the owner.

The servers run the storefront's real views over Faust tables filled directly and
a partition assignment set on the assignor: no broker and no consumer run, so the
figures are those of the HTTP path alone (a live worker's consumer shares its CPU).
Prints a Markdown table and writes ``benchmarks/results/storefront_latency.json``.

    python benchmarks/storefront_latency.py            # 10 s per scenario and rate
    python benchmarks/storefront_latency.py --quick    # 2 s per scenario and rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "storefront_latency.json"
PARTITIONS = 2
APP_ID = "storefront-bench"
CONSTANT_PATH = "/bench/constant"
#: The goals of issue #10 (p99, ms), for the table.
GOALS = {"local hit": 5.0, "routed": 15.0}


# --- server ---------------------------------------------------------------------------------


def serve(index: int, ports: list[int], users: int) -> None:
    """One worker web server owning partition ``index`` (runs until killed)."""
    import faust
    from faust.web import Request, Response, View

    from recstream.streams.pipeline import home_partition
    from recstream.streams.records import Recommendation, ScoredItem
    from recstream.streams.scoring import FakeRecsScorer
    from recstream.streams.sessions import UserState
    from recstream.streams.settings import Settings
    from recstream.streams.state_store import declare_table
    from recstream.streams.storefront import (
        declare_latest_table,
        popular_items,
        register_storefront,
    )

    port = ports[index]
    settings = Settings(app_id=APP_ID, partitions=PARTITIONS, web_port=port, top_k=10)
    app = faust.App(
        APP_ID,
        broker="kafka://127.0.0.1:1",  # never contacted: only the web service runs
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=port,
        store="memory://",
    )
    user_state = declare_table(app, settings)
    latest_table = declare_latest_table(app, settings)
    catalogue = [f"item-{i}" for i in range(200)]
    register_storefront(
        app,
        settings,
        latest_table,
        user_state,
        popular_items(FakeRecsScorer(catalogue)),
        lambda: (True, "ok"),
        owns={index}.__contains__,
    )
    constant = orjson.dumps({"status": "ok", "items": catalogue[:10]})

    @app.page(CONSTANT_PATH, name="bench_constant")
    class Constant(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(constant, content_type="application/json")

    changelog = latest_table.changelog_topic.get_topic_name()
    app.assignor.changelog_distribution = {  # type: ignore[attr-defined]
        f"http://127.0.0.1:{p}": {changelog: [i]} for i, p in enumerate(ports)
    }
    state = UserState(last_ts=time.time()).to_bytes()
    rng = random.Random(index)
    for user in bench_users(users, index):
        items = tuple(ScoredItem(item, rng.random()) for item in rng.sample(catalogue, 10))
        rec = Recommendation(user, f"{user}:1", "e1", items, "bench-v1", time.time(), time.time())
        key = user.encode()
        latest_table.data[key] = orjson.dumps({"recommendation": asdict(rec), "reviews": []})
        user_state.data[key] = state
    assert all(home_partition(u, PARTITIONS) == index for u in bench_users(10, index))

    async def run() -> None:
        await app.web.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def bench_users(n: int, partition: int) -> list[str]:
    """The first ``n`` user ids ``shopper-<i>`` whose home is ``partition``."""
    from recstream.streams.pipeline import home_partition

    out: list[str] = []
    i = 0
    while len(out) < n:
        user = f"shopper-{i}"
        if home_partition(user, PARTITIONS) == partition:
            out.append(user)
        i += 1
    return out


# --- client ---------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    target_rate: float
    achieved_rate: float
    max_start_lag_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    goal_p99_ms: float | None


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), -(-int(q * len(ordered)) // 100)))
    return ordered[rank - 1]


async def load(session: Any, name: str, urls: list[str], rate: float, seconds: float) -> Result:
    """Open-loop load: request ``i`` starts at ``i / rate`` seconds; latency from its start."""
    import aiohttp

    total = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0

    async def one(url: str) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        latencies.append((time.perf_counter() - started) * 1000.0)

    tasks = []
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - due) * 1000.0)
        tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return Result(
        scenario=name,
        requests=total,
        errors=errors,
        target_rate=rate,
        achieved_rate=round(total / elapsed, 1),
        max_start_lag_ms=round(max(lags, default=0.0), 2),
        p50_ms=round(percentile(ordered, 50), 3),
        p90_ms=round(percentile(ordered, 90), 3),
        p99_ms=round(percentile(ordered, 99), 3),
        max_ms=round(ordered[-1], 3) if ordered else float("nan"),
        goal_p99_ms=GOALS.get(name),
    )


async def measure(ports: list[int], users: int, rates: list[float], seconds: float) -> list[Result]:
    import aiohttp

    owner, other = (f"http://127.0.0.1:{p}" for p in ports)
    sample = bench_users(users, 0)
    random.Random(1).shuffle(sample)
    paths = [f"/v1/users/{u}/recommendations" for u in sample[:1000]]
    scenarios = [
        ("faust constant", [owner + CONSTANT_PATH]),
        ("local hit", [owner + p for p in paths]),
        ("routed", [other + p for p in paths]),
    ]
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        # The routed answer must be the owner's: check once before timing.
        async with session.get(other + paths[0]) as response:
            body = await response.json()
            assert response.status == 200 and body["fallback"] is False, body
            assert "X-Recstream-Routed-From" in response.headers
        results = []
        for rate in rates:
            for name, urls in scenarios:
                await load(session, name, urls, rate, min(1.0, seconds))  # warm-up, not kept
                results.append(await load(session, name, urls, rate, seconds))
        return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(process: subprocess.Popen[str], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{CONSTANT_PATH}", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per scenario")
    parser.add_argument(
        "--rates",
        default="100,1000",
        help="comma-separated request rates per second (the goals are for 1000)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--users", type=int, default=10_000, help="users per worker")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: server index
    parser.add_argument("--ports", type=str, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, [int(p) for p in args.ports.split(",")], args.users)
        return 0
    seconds = 2.0 if args.quick else args.seconds
    ports = [free_port(), free_port()]
    command = [sys.executable, __file__, "--ports", ",".join(map(str, ports))]
    servers = [
        subprocess.Popen([*command, "--serve", str(i), "--users", str(args.users)], text=True)
        for i in range(PARTITIONS)
    ]
    try:
        for server, port in zip(servers, ports, strict=True):
            wait_ready(server, port)
        rates = [float(rate) for rate in args.rates.split(",")]
        load_before = os.getloadavg()[0]
        results = asyncio.run(measure(ports, args.users, rates, seconds))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)
    headers = ["scenario", "req/s target", "req/s achieved", "p50 ms", "p90 ms", "p99 ms",
               "max ms", "errors", "p99 goal ms"]  # fmt: skip
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in results:
        goal = "-" if r.goal_p99_ms is None else f"< {r.goal_p99_ms:g}"
        row = [r.scenario, f"{r.target_rate:g}", f"{r.achieved_rate:g}", f"{r.p50_ms:.2f}",
               f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.max_ms:.2f}", r.errors, goal]  # fmt: skip
        print("| " + " | ".join(str(c) for c in row) + " |")
    report = {
        "benchmark": "storefront_latency",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "seconds_per_scenario": seconds,
        "users_per_worker": args.users,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
        },
        "setup": "2 web-only worker processes + 1 aiohttp client process on 127.0.0.1; "
        "no broker or consumer running",
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
        f"on {os.cpu_count()} CPUs; an achieved rate below the target means this machine "
        "(server and client together) could not sustain it."
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
