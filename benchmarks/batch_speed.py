"""Batch code speed: recstream's own per-batch work on the benchmark backlog, no Kafka.

Runs the click backlog of ``pipeline_speed`` (the built-in shop log, keyed by user, over
4 partitions) through :class:`recstream.streams.pipeline.Pipeline` in batches of
``RECSTREAM_BATCH_SIZE`` events, as the worker's agents do, with scorers that return
empty fallbacks at once: deliver (the worker's Faust consumer, no broker: aiokafka's
fetched records to a feed's records, taken and acknowledged), decode and validate,
apply to the sessions (an in-memory store), score (the null scorers), build the outputs,
sweep every partition, hand every output over as the worker does (JSON, queued by
topic partition into aiokafka record batches, submitted to a producer that answers at
once).  Each step's CPU time is summed over the backlog and given per event.

Two garbage-collector settings are compared, in alternating repeats: Python's own
(young generation collected every 700 allocations, nothing frozen) and the worker's
(:func:`recstream.streams.worker.prepare_garbage_collector` with
``RECSTREAM_GC_YOUNG_THRESHOLD``).  A fresh pipeline and store per repeat: each repeat
starts from no state, as a worker draining a backlog for new users does.  The
collector's cost grows with the objects the process holds (users' states, tokens), so
the two settings differ more on a longer backlog (2026-12-02: total 1.08x on 5,000
clicks, 1.42x on 60,000).

Prints a table and writes ``benchmarks/results/batch_speed.json``.

``--instructions`` counts instructions instead of timing, which other load on the
machine does not change: valgrind's callgrind runs this script with the worker's
collector and ``PYTHONHASHSEED=0``, making two passes over the backlog and counting only
the second (called through ``functools.reduce``, the function callgrind is told to
count inside), given per event; the caches that fill as the worker meets new users
and items are emptied before that pass.  Start-up is left out because it does not execute the
same instructions from run to run (onnxruntime's and OpenBLAS's threads at import: up
to ~100 million apart).  The delivery step is left out: its Faust consumer did not
either (134-141 thousand per event for the same code with it).  Needs ``valgrind`` (a
Debian package); ~2.5 minutes for 20,000 clicks.

    python benchmarks/batch_speed.py              # 60,000 clicks, 3 repeats per setting
    python benchmarks/batch_speed.py --quick      # 5,000 clicks, 1 repeat (batch_speed_quick.json)
    python benchmarks/batch_speed.py --instructions --events 20000 --users 500
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_common as bc
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from bench_workers import NullRecs, NullSentiment
from faust.types import TP
from fetch_unpack_speed import record_batches

from recstream.streams import sessions
from recstream.streams.agents import add_outputs
from recstream.streams.app import build_app
from recstream.streams.input_batches import (
    BatchDeliveringConsumer,
    InputFeed,
    ParsedRecords,
    feeds_of,
)
from recstream.streams.pipeline import (
    DictStore,
    Pipeline,
    RawRecord,
    home_partition,
    partition_for_key,
)
from recstream.streams.record_batches import RecordBatches
from recstream.streams.settings import Settings
from recstream.streams.worker import prepare_garbage_collector

RESULTS = bc.RESULTS_DIR / "batch_speed.json"
QUICK_RESULTS = bc.RESULTS_DIR / "batch_speed_quick.json"
INSTRUCTION_RESULTS = bc.RESULTS_DIR / "batch_instructions.json"
#: The C function that the counted pass is called through (``functools.reduce``).
COUNTED_FUNCTION = "functools_reduce"
#: The output topics' partition count (no topic is created).
OUTPUT_PARTITIONS = 4
#: Caches that fill as a worker first meets a backlog's users and items (tokens, home
#: partitions): emptied before the counted pass, so that it meets them for the first
#: time too, as the worker does on the benchmark backlog.
FIRST_SIGHT_CACHES = (sessions._token, home_partition, partition_for_key)
STEPS = ("deliver", "decode", "prepare", "score", "finish", "sweep", "send")
#: One fetch: each partition's records, as the worker's consumer gets them.
Fetch = dict[TP, list[Any]]
#: The two garbage-collector settings compared.
PYTHON_GC, WORKER_GC = "python-default", "worker"


def backlog_records(events: int, users: int, partitions: int) -> tuple[list[RawRecord], str]:
    """The benchmark backlog as raw records on the partitions their keys hash to."""
    backlog = bc.make_backlog(events, users)
    return bc.click_records(backlog.records, partitions), backlog.source


class Delivery:
    """The worker's Faust consumer with no broker: fetched records in, records taken
    from the feed and acknowledged, as the agents do."""

    def __init__(self, settings: Settings) -> None:
        """Needs a running event loop (the app's flow control waits on it)."""
        unused_broker = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
        app = build_app(unused_broker, NullRecs(), NullSentiment())
        consumer = app.consumer
        assert isinstance(consumer, BatchDeliveringConsumer)
        consumer.highwater = lambda tp: 0  # type: ignore[method-assign]  # no broker asked
        self.topic = settings.topic("clicks")
        app.topics._acking_topics.add(self.topic)  # type: ignore[attr-defined]  # as subscribing
        app.flow_control.resume()
        consumer.resume_flow()
        self.consumer = consumer
        self.feeds = feeds_of(app)
        self.feed: InputFeed = self.feeds[self.topic]

    async def pass_through(self, fetch: Fetch) -> int:
        """Deliver one fetch, take it and acknowledge it; the records taken."""
        await self.consumer._deliver(fetch, None, self.feeds)
        taken = await self.feed.take(sum(map(len, fetch.values())), 0)
        self.consumer.acknowledge(taken)
        return len(taken.records)


@dataclass(frozen=True)
class OutputTopicNames:
    """Where outputs would go (:class:`recstream.streams.agents.OutputTopics`)."""

    recommendations: str = "recommendations"
    sentiment: str = "sentiment"
    sessions: str = "sessions"
    deadletter: str = "deadletter"


class ImmediateProducer:
    """aiokafka's record batches, each acknowledged as soon as it is submitted."""

    def __init__(self, batch_bytes: int) -> None:
        self.batch_bytes = batch_bytes

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0, key_serializer=None, value_serializer=None)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def partitions_of(topic: str) -> int:
    """Every output topic's partition count here."""
    return OUTPUT_PARTITIONS


def fetched_batches(records: list[RawRecord], topic: str, batch_size: int) -> list[Fetch]:
    """The backlog as the worker's consumer gets it from aiokafka, ``batch_size`` records
    a fetch: each partition's records as aiokafka parsed them (``ParsedRecords``)."""
    fetches = []
    for start in range(0, len(records), batch_size):
        by_partition: dict[int, list[RawRecord]] = {}
        for r in records[start : start + batch_size]:
            by_partition.setdefault(r.partition, []).append(r)
        fetch: Fetch = {}
        for partition, mine in by_partition.items():
            tp = TopicPartition(topic, partition)
            pairs = [(r.key or b"", r.value or b"") for r in mine]
            data = MemoryRecords(b"".join(record_batches(pairs, mine[0].offset)))
            parsed = PartitionRecords(tp, data, [], mine[0].offset, None, None, True, 0)
            fetch[TP(topic, partition)] = list(ParsedRecords.like(parsed))
        fetches.append(fetch)
    return fetches


async def run_once(
    records: list[RawRecord], settings: Settings, partitions: int
) -> dict[str, float]:
    """CPU seconds of each step over the whole backlog, and the outputs made."""
    fetches = fetched_batches(records, settings.topic("clicks"), settings.batch_size)
    return await run_fetched(records, fetches, settings, partitions)


async def run_fetched(
    records: list[RawRecord],
    fetches: list[Fetch] | None,
    settings: Settings,
    partitions: int,
) -> dict[str, float]:
    """:func:`run_once` on the backlog already made into ``fetches``; None: without the
    delivery step (its Faust consumer does not do the same work from run to run)."""
    delivery = Delivery(settings) if fetches is not None else None
    pipeline = Pipeline(settings, NullRecs(), NullSentiment(), partitions=partitions)
    store = DictStore()
    producer = ImmediateProducer(settings.producer_max_batch_bytes)
    spent = dict.fromkeys(STEPS, 0.0)
    outputs = delivered = 0
    clock = time.process_time
    for index, start in enumerate(range(0, len(records), settings.batch_size)):
        batch = records[start : start + settings.batch_size]
        t0 = clock()
        if delivery is not None and fetches is not None:
            delivered += await delivery.pass_through(fetches[index])
        t1 = clock()
        decoded, dead = pipeline.decode(batch)
        t2 = clock()
        work = pipeline.prepare(decoded, store)
        t3 = clock()
        scores = pipeline.score(work)
        t4 = clock()
        out = pipeline.finish(work, scores)
        t5 = clock()
        for partition in range(partitions):
            out.sessions += pipeline.sweep(partition, store)
        t6 = clock()
        out.dead_letters = dead + out.dead_letters
        outbox = RecordBatches(producer, partitions_of)
        add_outputs(outbox, out, OutputTopicNames())
        outputs += len(outbox)
        await asyncio.gather(*await outbox.send())
        t7 = clock()
        marks = (t0, t1, t2, t3, t4, t5, t6, t7)
        for step, begun, ended in zip(STEPS, marks[:-1], marks[1:], strict=True):
            spent[step] += ended - begun
    if delivery is not None and delivered != len(records):
        raise RuntimeError(f"delivered {delivered} of {len(records)} records")
    spent["outputs"] = outputs
    return spent


def set_collector(setting: str, young_threshold: int, default: tuple[int, int, int]) -> None:
    """Put the garbage collector in ``setting`` (the other's frozen objects thawed)."""
    gc.unfreeze()
    gc.set_threshold(*default)
    if setting == WORKER_GC:
        prepare_garbage_collector(young_threshold)
    else:
        gc.collect()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both settings; returns the results (also what is written as JSON)."""
    settings = Settings(batch_size=args.batch_size)
    records, source = backlog_records(args.events, args.users, args.partitions)
    default = gc.get_threshold()
    runs: dict[str, list[dict[str, float]]] = {PYTHON_GC: [], WORKER_GC: []}
    try:
        for _ in range(args.repeats):
            for setting in (PYTHON_GC, WORKER_GC):
                set_collector(setting, settings.gc_young_threshold, default)
                runs[setting].append(asyncio.run(run_once(records, settings, args.partitions)))
    finally:
        gc.unfreeze()
        gc.set_threshold(*default)
    per_event: dict[str, dict[str, float]] = {}
    for setting, measured in runs.items():
        medians = {step: statistics.median(m[step] for m in measured) for step in STEPS}
        per_event[setting] = {step: 1e6 * s / len(records) for step, s in medians.items()}
        per_event[setting]["total"] = sum(per_event[setting][step] for step in STEPS)
    return {
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "events": len(records),
            "backlog_source": source,
            "partitions": args.partitions,
            "batch_size": settings.batch_size,
            "repeats": args.repeats,
            "gc_young_threshold": settings.gc_young_threshold,
            "python_gc_threshold": list(default),
        },
        "outputs_per_run": runs[WORKER_GC][0]["outputs"],
        "cpu_us_per_event": per_event,
        "total_ratio_python_over_worker": (
            per_event[PYTHON_GC]["total"] / per_event[WORKER_GC]["total"]
        ),
    }


def passes(args: argparse.Namespace) -> None:
    """``args.passes`` passes over the backlog with the worker's collector, without the
    delivery step, no output (what :func:`count_instructions` runs).  The last pass is
    called through ``functools.reduce``, which nothing else calls meanwhile: the C
    function :data:`COUNTED_FUNCTION` that callgrind counts inside."""
    settings = Settings(batch_size=args.batch_size)
    records, _ = backlog_records(args.events, args.users, args.partitions)
    prepare_garbage_collector(settings.gc_young_threshold)

    def one_pass(_unused: object = None, _also_unused: object = None) -> None:
        asyncio.run(run_fetched(records, None, settings, args.partitions))

    for _ in range(args.passes - 1):
        one_pass()
    for cache in FIRST_SIGHT_CACHES:
        cache.cache_clear()
    functools.reduce(one_pass, [None], None)


def callgrind_total(text: str) -> int:
    """The instructions counted in a callgrind output file (its ``summary`` line)."""
    for line in text.splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError("no summary line in the callgrind output")


def count_instructions(command: Sequence[str], env: Mapping[str, str]) -> int:
    """The instructions ``command`` executes inside :data:`COUNTED_FUNCTION`, counted by
    valgrind's callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind not found (Debian: apt install valgrind)")
    # Without address randomisation (util-linux's setarch): objects land at the same
    # addresses in every run, so hashing by identity does the same work each time.
    setarch = shutil.which("setarch")
    fixed = (setarch, platform.machine(), "-R") if setarch is not None else ()
    with tempfile.TemporaryDirectory(prefix="batch-speed-") as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            [
                *fixed,
                valgrind,
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--toggle-collect={COUNTED_FUNCTION}",
                f"--callgrind-out-file={out}",
                *command,
            ],
            env=dict(env),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed under callgrind: {done.stderr[-2000:]}")
        return callgrind_total(out.read_text())


def instructions(args: argparse.Namespace) -> dict[str, Any]:
    """Instructions per event of the second of two passes, under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--events", str(args.events), "--users", str(args.users)),
        *("--partitions", str(args.partitions), "--batch-size", str(args.batch_size)),
        *("--passes", "2"),
    ]
    counted = count_instructions(command, env)
    settings = Settings(batch_size=args.batch_size)
    return {
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "events": args.events,
            "users_asked": args.users,
            "partitions": args.partitions,
            "batch_size": args.batch_size,
            "gc_young_threshold": settings.gc_young_threshold,
        },
        "instructions": {"second_pass": counted},
        "instructions_per_event": counted / args.events,
    }


def table(result: dict[str, Any]) -> str:
    """The per-step CPU table of a result, as Markdown."""
    rows = []
    for setting, steps in result["cpu_us_per_event"].items():
        rows.append([setting, *(f"{steps[step]:.2f}" for step in (*STEPS, "total"))])
    return bc.markdown_table(["garbage collector", *STEPS, "total"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=60_000, help="backlog size")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users asked for")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--quick", action="store_true", help="5,000 clicks, 1 repeat")
    parser.add_argument("--out", type=Path, help="default: results/batch_speed[_quick].json")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count one pass's instructions with valgrind (results/batch_instructions.json)",
    )
    parser.add_argument("--passes", type=int, help=argparse.SUPPRESS)  # run under callgrind
    args = parser.parse_args(argv)
    if args.passes is not None:
        passes(args)
        return 0
    if args.instructions:
        counted = instructions(args)
        print(
            f"{args.events:,} clicks, batches of {args.batch_size}: "
            f"{counted['instructions_per_event']:,.0f} instructions per event "
            "(one pass, callgrind)"
        )
        bc.write_json(args.out or INSTRUCTION_RESULTS, counted)
        return 0
    if args.quick:
        args.events, args.repeats = 5_000, 1
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    result = run(args)
    meta = result["meta"]
    print(
        f"{meta['events']:,} clicks ({meta['backlog_source']}), batches of "
        f"{meta['batch_size']}, {meta['partitions']} partitions; CPU µs per event, median "
        f"of {meta['repeats']}:\n"
    )
    print(table(result))
    print(f"\nPython's collector / the worker's: {result['total_ratio_python_over_worker']:.2f}")
    bc.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
