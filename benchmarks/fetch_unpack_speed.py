"""Fetch unpacking speed: aiokafka's fetched click records to the columns the worker reads.

The benchmark backlog of ``pipeline_speed`` (the built-in shop log, keyed by user) is
written into record batches as aiokafka's producer makes them (16 KiB each, on the
partitions the keys hash to) and cut into fetch responses of up to 1 MiB a partition
(aiokafka's defaults).  Each fetch is then read as aiokafka's consumer reads it
(``FetchResult.getall``) and made into the offset, value and key columns the worker's
consumer reads (``BatchDeliveringConsumer._deliver_batch``), two ways, alternated in
repeats:

- ``consumer-records``: aiokafka's own, a ``ConsumerRecord`` made of every record;
- ``parsed``: the worker's, the records as aiokafka parsed them
  (:class:`recstream.streams.input_batches.ParsedRecords`).

Under the worker's garbage collector (``prepare_garbage_collector``, called once the
backlog is built, as the worker calls it once started; under Python's thresholds the
collections added 0.3-0.8 µs a record to both ways on 200,000 clicks).  CPU time per
record, median of the repeats, and the ratio of the two measured in the same run.
Prints a table and writes ``benchmarks/results/fetch_unpack_speed.json``.

    python benchmarks/fetch_unpack_speed.py                 # 200,000 clicks, 7 repeats
    python benchmarks/fetch_unpack_speed.py --events 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import platform
import struct
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bench_common as bc
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from recstream.streams.input_batches import ParsedRecords
from recstream.streams.pipeline import partition_for_key
from recstream.streams.settings import Settings
from recstream.streams.worker import prepare_garbage_collector

RESULTS = bc.RESULTS_DIR / "fetch_unpack_speed.json"
TOPIC = "clicks"
#: aiokafka's producer ``max_batch_size`` and consumer ``max_partition_fetch_bytes``.
BATCH_BYTES, FETCH_BYTES = 16_384, 1_048_576
#: The two ways of reading a fetch, in the order each repeat runs them.
WAYS: dict[str, Callable[[PartitionRecords], PartitionRecords]] = {
    "consumer-records": lambda records: records,
    "parsed": ParsedRecords.like,
}
_OFFSET, _VALUE, _KEY = attrgetter("offset"), attrgetter("value"), attrgetter("key")


def record_batches(pairs: Sequence[tuple[bytes, bytes]], base: int) -> list[bytes]:
    """``pairs`` (key, value) as a producer writes them, the first at offset ``base``:
    record batches of up to :data:`BATCH_BYTES`, each as the broker stores it."""
    batches: list[bytes] = []
    index = 0
    while index < len(pairs):
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, BATCH_BYTES)
        first = index
        while index < len(pairs):
            key, value = pairs[index]
            if builder.append(index - first, 1_700_000_000_000, key, value, []) is None:
                break  # full: the next batch starts here
            index += 1
        data = bytearray(builder.build())
        struct.pack_into(">q", data, 0, base + first)
        batches.append(bytes(data))
    return batches


def fetches(pairs: Sequence[tuple[bytes, bytes]], partitions: int) -> list[tuple[int, bytes]]:
    """The backlog as fetch responses: (partition, its data), up to :data:`FETCH_BYTES`
    of whole record batches each."""
    by_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(partitions)]
    for key, value in pairs:
        by_partition[partition_for_key(key, partitions)].append((key, value))
    answers = []
    for partition, mine in enumerate(by_partition):
        data = b""
        for batch in record_batches(mine, 0):
            if data and len(data) + len(batch) > FETCH_BYTES:
                answers.append((partition, data))
                data = b""
            data += batch
        if data:
            answers.append((partition, data))
    return answers


class _Position:
    """A partition's fetch position, as ``FetchResult`` reads and moves it."""

    paused = False

    def __init__(self) -> None:
        self.position = 0

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def read(answers: Sequence[tuple[int, bytes]], way: str) -> tuple[float, int]:
    """CPU seconds to read every fetch ``way`` and take its columns; the records read."""
    make = WAYS[way]
    positions = {p: _Position() for p, _ in answers}
    assignment = SimpleNamespace(active=True, state_value=lambda tp: positions[tp.partition])
    count = 0
    spent = 0.0
    for partition, data in answers:
        tp = TopicPartition(TOPIC, partition)
        fetched = PartitionRecords(
            tp, MemoryRecords(data), [], positions[partition].position, None, None, True, 0
        )
        started = time.process_time()
        result = FetchResult(tp, assignment=assignment, partition_records=make(fetched), backoff=0)
        records = result.getall()
        offsets = list(map(_OFFSET, records))
        values = list(map(_VALUE, records))
        keys = list(map(_KEY, records))
        spent += time.process_time() - started
        count += len(offsets)
        assert len(values) == len(keys) == len(offsets)
    return spent, count


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both ways; returns the results (also what is written as JSON)."""
    backlog = bc.make_backlog(args.events, args.users)
    answers = fetches(backlog.records, args.partitions)
    per_record: dict[str, list[float]] = {way: [] for way in WAYS}
    default = gc.get_threshold()
    prepare_garbage_collector(Settings().gc_young_threshold)  # as the worker, once started
    try:
        for _ in range(args.repeats):
            for way in WAYS:
                spent, count = read(answers, way)
                if count != len(backlog):
                    raise RuntimeError(f"{way}: read {count} of {len(backlog)} records")
                per_record[way].append(spent / count * 1e9)
    finally:
        gc.unfreeze()
        gc.set_threshold(*default)
    medians = {way: bc.median(times) for way, times in per_record.items()}
    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(),
            "events": len(backlog),
            "backlog_source": backlog.source,
            "partitions": args.partitions,
            "fetches": len(answers),
            "batch_bytes": BATCH_BYTES,
            "fetch_bytes": FETCH_BYTES,
            "repeats": args.repeats,
        },
        "cpu_ns_per_record": {"median": medians, "runs": per_record},
        "consumer_records_over_parsed": medians["consumer-records"] / medians["parsed"],
    }


def table(result: dict[str, Any]) -> str:
    """The result as Markdown."""
    medians = result["cpu_ns_per_record"]["median"]
    rows = [[way, f"{medians[way]:.0f}"] for way in WAYS]
    return bc.markdown_table(["records read as", "CPU ns per record (median)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="backlog size")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users asked for")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7, help="runs per way (median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args)
    meta = result["meta"]
    print(
        f"{meta['events']:,} clicks ({meta['backlog_source']}), {meta['fetches']} fetches "
        f"over {meta['partitions']} partitions, median of {meta['repeats']}:\n"
    )
    print(table(result))
    print(f"\nConsumerRecords / parsed: {result['consumer_records_over_parsed']:.2f}x")
    bc.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
