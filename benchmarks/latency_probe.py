"""Latency of the worker under live clicks at fixed rates, split at the worker's output.

``pipeline_speed`` measures latency at shares of the capacity it measured; this probe
takes rates in events per second, so runs of different code or settings are compared
at the same load, and it splits each recommendation's latency in two:

* **event -> emitted**: the click's ``ts`` to the recommendation's ``emitted_at``, which
  the worker stamps when it builds the batch's outputs (fetch, batch wait, sessions,
  scoring);
* **emitted -> received**: from there to this process reading it (produce, broker,
  this consumer's fetch).

One run starts a broker and the worker (the full pipeline with the SASRec-size model of
``pipeline_speed``, or the pass-through), drains a small warm-up backlog, then for each
rate sends the shop log's clicks of users new to the worker (``--clicks-per-user``, 10
as in ``pipeline_speed``'s backlog, so histories are as long as there) paced at that
rate for ``--seconds``, and reads every answer.
Per rate: p50 / p90 / p99 of both parts and of the total, the CPU of the worker, the
broker and this process (% of one core), the worker's CPU thread by thread (named after
the last rate by ``py-spy dump``, which pauses the worker a moment: ``MainThread`` runs
the event loop and the batch code, Faust's consumer thread runs aiokafka's fetches,
``recstream-scoring_*`` run the models), how many scoring threads were busy scoring on
average (on a core / waiting for one / blocked), and the scoring micro-batches, garbage
collector pauses and mean latencies (an event's input delay, a batch's scoring, an
event's end-to-end time) the worker counted meanwhile (``/metrics``).  Timing is on
this machine's clock for both ends.  This process's own collector is paused during each
rate (:func:`bc.collector_paused`): its collections held stamped clicks and read answers
back and counted as the worker's latency.

    python benchmarks/latency_probe.py [--broker noida|tansu] [--rates 300,1200,2400]
        [--seconds 8] [--scenario recstream-full|recstream-passthrough]
        [--env RECSTREAM_BATCH_WITHIN=0.001 ...] [--worker-cpus 1] [--worker-cpu-limit 1.5]
    python benchmarks/latency_probe.py --quick     # two low rates, 3 s each

Prints a table and writes ``benchmarks/results/latency_probe.json`` (``_quick``).
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

from recstream.streams.broker import EmbeddedBroker

RESULTS = bc.RESULTS_DIR / "latency_probe.json"
QUICK_RESULTS = bc.RESULTS_DIR / "latency_probe_quick.json"
PARTITIONS = 4
#: Clicks drained before the first rate (start-up, first model runs).
WARMUP_EVENTS = 3_000
SCENARIOS = ("recstream-full", "recstream-passthrough")


def gc_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The garbage collector's pauses between two readings of :func:`bc.gc_pauses`:
    collections and milliseconds paused, in all and per generation (0 youngest, 2 full)."""

    def pauses(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {
            "collections": new["collections"] - old["collections"],
            "ms": round((new["seconds"] - old["seconds"]) * 1000.0, 1),
        }

    zero = {"collections": 0, "seconds": 0.0}
    by_generation = {
        generation: pauses(before["by_generation"].get(generation, zero), entry)
        for generation, entry in sorted(after["by_generation"].items())
    }
    return {**pauses(before, after), "by_generation": by_generation}


def spread(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 in milliseconds."""
    return {f"p{q}": round(bc.percentile(values_ms, q), 1) for q in (50, 90, 99)}


def split_latency(watch: bc.OutputWatch) -> dict[str, dict[str, float]]:
    """Each output's latency in two parts and whole (needs kept values and times)."""
    to_emit, to_receipt, total = [], [], []
    for value, received in zip(watch.values, watch.receipt_times, strict=True):
        event, emitted = float(value["event_ts"]), float(value["emitted_at"])
        to_emit.append((emitted - event) * 1000.0)
        to_receipt.append((received - emitted) * 1000.0)
        total.append((received - event) * 1000.0)
    return {
        "event_to_emitted_ms": spread(to_emit),
        "emitted_to_received_ms": spread(to_receipt),
        "total_ms": spread(total),
    }


async def one_rate(
    bootstrap: str,
    target: ps.Target,
    group: ps.Workers,
    broker: EmbeddedBroker,
    rate: float,
    seconds: float,
    clicks_per_user: float,
    tag: str,
) -> dict[str, Any]:
    """Paced clicks at ``rate`` for ``seconds`` (:func:`bc.live_clicks`, users new to the
    worker); every answer read back and split."""
    clicks = bc.live_clicks(bc.paced_count(rate, seconds), clicks_per_user, tag)
    watch = bc.OutputWatch(target=10**12, tag=tag, keep_values=True, keep_times=True)
    with bc.collector_paused():  # this process's collections would count as latency
        started = asyncio.Event()
        watching = asyncio.create_task(
            bc.watch_output(bootstrap, target.sink, watch, seconds + 30.0, started=started)
        )
        await started.wait()
        port = target.env["RECSTREAM_WEB_PORT"]
        metrics_before = bc.scrape_metrics(port)
        scraped_at = time.monotonic()
        cpu = ps.cpu_window(group, broker)
        threads = bc.ThreadCpuWindow(group.pids[0])
        cpu.begin()
        threads.begin()
        sent = await bc.paced_produce(bootstrap, target.source, rate, seconds, clicks)
        cpu_percent = cpu.end()
        thread_percent = threads.end()
        watch.target = sent
        await watching
    metrics_after = bc.scrape_metrics(port)
    between = time.monotonic() - scraped_at
    before, after = bc.scoring_counts(metrics_before), bc.scoring_counts(metrics_after)
    gc = gc_between(bc.gc_pauses(metrics_before), bc.gc_pauses(metrics_after))
    batches = after["batches"] - before["batches"]
    return {
        "rate": rate,
        "sent": sent,
        "received": watch.count,
        **split_latency(watch),
        "cpu_percent": cpu_percent,
        "worker_thread_percent": thread_percent,
        "scoring_threads_busy": bc.scoring_threads_busy(metrics_before, metrics_after, between),
        "event_loop": bc.event_loop_busy(metrics_before, metrics_after, between),
        "scoring_batches": batches,
        "mean_scoring_batch": (after["events"] - before["events"]) / batches if batches else None,
        "gc": gc,
        "worker_means_ms": bc.latency_means(metrics_before, metrics_after),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Broker, worker, warm-up, then one paced phase per rate."""
    model_dir = ps.sasrec_size_models(50_000) if args.scenario == "recstream-full" else None
    warmup = bc.make_backlog(args.warmup, args.users)
    broker = EmbeddedBroker(args.broker)
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        target = ps.make_target(args.scenario, bootstrap, PARTITIONS, model_dir)
        target.env.update(args.env)
        await ps.prepare_target(bootstrap, target, PARTITIONS, warmup)
        group = ps.Workers(target, args.worker_cpus, args.worker_cpu_limit)
        group.spawn()
        try:
            drained = bc.OutputWatch(target=len(warmup))
            await bc.watch_output(bootstrap, target.sink, drained, args.timeout, alive=group.dead)
            phases = []
            for n, rate in enumerate(args.rates):
                ps.log(f"{args.broker}: {rate:,.0f} clicks/s for {args.seconds:g} s")
                phases.append(
                    await one_rate(
                        bootstrap,
                        target,
                        group,
                        broker,
                        rate,
                        args.seconds,
                        args.clicks_per_user,
                        f"r{n}-",
                    )
                )
            # Named after the last phase: py-spy pauses the worker while it reads it.
            names = bc.thread_names(group.pids[0])
            for phase in phases:
                phase["worker_thread_percent"] = bc.by_thread_name(
                    phase["worker_thread_percent"], names
                )
        finally:
            group.stop()
    finally:
        broker.stop()
    return {
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "broker": args.broker,
            "scenario": args.scenario,
            "partitions": PARTITIONS,
            "seconds_per_rate": args.seconds,
            "users": args.users,
            "clicks_per_user": args.clicks_per_user,
            "env": args.env,
            "worker_cpus": list(args.worker_cpus),
            "worker_cpu_limit": args.worker_cpu_limit,
        },
        "phases": phases,
    }


def table(result: dict[str, Any]) -> str:
    """One row per rate."""
    rows = []
    for phase in result["phases"]:
        parts = [phase[key] for key in ("event_to_emitted_ms", "emitted_to_received_ms")]
        total = phase["total_ms"]
        rows.append(
            [
                f"{phase['rate']:,.0f}",
                f"{phase['received']:,}/{phase['sent']:,}",
                *(f"{p['p50']} / {p['p90']} / {p['p99']}" for p in [*parts, total]),
                bc.fmt(phase["mean_scoring_batch"], 1),
                worker_means(phase.get("worker_means_ms")),
                f"{phase['cpu_percent'].get('app', 0):.0f}",
                gc_pauses(phase["gc"]) if "gc" in phase else "-",
            ]
        )
    headers = [
        "clicks/s",
        "answered",
        "event->emitted p50/p90/p99 ms",
        "emitted->received",
        "total",
        "mean scoring batch",
        "worker: input delay / scoring a batch / end-to-end, mean ms",
        "worker CPU %",
        "GC pauses / ms (by generation)",
    ]
    return bc.markdown_table(headers, rows)


def worker_means(means: dict[str, float | None] | None) -> str:
    """The worker's own latency means (``bc.latency_means``) as ``a / b / c``."""
    if not means:
        return "-"
    return " / ".join(bc.fmt(means.get(key), 1) for key, _, _ in bc.WORKER_LATENCIES)


def gc_pauses(gc: dict[str, Any]) -> str:
    """``collections / ms``, then each generation that collected: ``gen N: collections / ms``."""
    by_generation = [
        f"gen {generation}: {pauses['collections']} / {pauses['ms']}"
        for generation, pauses in gc.get("by_generation", {}).items()
        if pauses["collections"]
    ]
    total = f"{gc['collections']} / {gc['ms']}"
    return f"{total} ({', '.join(by_generation)})" if by_generation else total


def threads_table(result: dict[str, Any]) -> str:
    """The worker's CPU per thread at each rate (% of one core), how many scoring threads
    were busy scoring, on average, by state, and the event loop's share of the time on a
    core and waiting for one."""
    rows = []
    for phase in result["phases"]:
        threads = phase["worker_thread_percent"]
        busy = phase.get("scoring_threads_busy")
        loop = phase.get("event_loop")
        if not threads and not busy and not loop:
            continue
        rows.append(
            [
                f"{phase['rate']:,.0f}",
                ", ".join(f"{name} {percent:.0f}" for name, percent in threads.items()),
                " + ".join(f"{busy[state]:.2f} {state}" for state in busy) if busy else "-",
                " + ".join(f"{loop[state]:.2f} {state}" for state in loop) if loop else "-",
            ]
        )
    headers = ["clicks/s", "worker CPU % by thread", "scoring threads busy (threads)"]
    return bc.markdown_table([*headers, "event loop (share of the time)"], rows)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs (``RECSTREAM_*`` settings for the worker)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("RECSTREAM_"):
            raise SystemExit(f"--env wants RECSTREAM_NAME=value, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", choices=("noida", "tansu"), default="noida")
    parser.add_argument("--scenario", choices=SCENARIOS, default="recstream-full")
    parser.add_argument(
        "--rates", default="300,1200,2400", help="clicks per second, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="paced seconds per rate")
    parser.add_argument("--users", type=int, default=3_000, help="users of the warm-up")
    parser.add_argument(
        "--clicks-per-user",
        type=float,
        default=10.0,
        help="density of the paced clicks' shop log (pipeline_speed's backlog: 10)",
    )
    parser.add_argument("--warmup", type=int, default=WARMUP_EVENTS, help="clicks drained first")
    parser.add_argument("--env", action="append", default=[], help="RECSTREAM_NAME=value")
    parser.add_argument(
        "--worker-cpus",
        default="",
        help="comma-separated CPUs the worker and its model processes are pinned to",
    )
    parser.add_argument(
        "--worker-cpu-limit",
        type=ps.positive_float,
        help="CPUs the worker and its model processes may use in all (a cgroup of their "
        "own, as a container's CPU limit; needs root)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the warm-up")
    parser.add_argument("--quick", action="store_true", help="rates 100,400 for 3 s each")
    parser.add_argument("--out", type=Path, help="default: results/latency_probe[_quick].json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.warmup = "100,400", 3.0, 500
    args.rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    args.env = parse_env(args.env)
    args.worker_cpus = ps.parse_cpus(args.worker_cpus)
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    result = asyncio.run(run(args))
    print(table(result))
    print()
    print(threads_table(result))
    bc.write_json(args.out, result)
    lost = [p["rate"] for p in result["phases"] if p["received"] < p["sent"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
