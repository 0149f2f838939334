"""The processes the pipeline benchmark measures, one per scenario, each run as a child process.

    python benchmarks/bench_workers.py raw-decode  --bootstrap H:P --source T --events N
    python benchmarks/bench_workers.py raw-produce --bootstrap H:P --source T --sink T2 --events N
    python benchmarks/bench_workers.py faust-naive --bootstrap H:P --source T --sink T2 --app-id A
    python benchmarks/bench_workers.py recstream-passthrough   (RECSTREAM_* settings from the env)

The raw scenarios time themselves and print one JSON line; the Faust scenario runs until
it is stopped (SIGTERM) and is timed from outside by counting its outputs.  Every output
carries the input event's ``event_ts`` so the parent can measure latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HISTORY = 50
SCENARIOS = (
    "raw-decode",
    "raw-produce",
    "faust-naive",
    "recstream-passthrough",
    "build-models",
)


def _output(obj: dict[str, Any], length: int) -> bytes:
    return orjson.dumps(
        {
            "user_id": obj.get("user_id"),
            "trigger_event_id": obj.get("event_id"),
            "event_ts": obj.get("ts"),
            "history": length,
        }
    )


async def raw_kafka(args: argparse.Namespace, produce: bool) -> dict[str, Any]:
    """aiokafka consume + orjson decode (+ one produced output per event): the floor."""
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=50,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks=1, linger_ms=5)
    await consumer.start()
    if produce:
        await producer.start()
    seen = 0
    first: float | None = None
    first_cpu = 0.0
    try:
        while seen < args.events:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if first is None and batches:
                first = time.perf_counter()
                first_cpu = time.process_time()
            for records in batches.values():
                for record in records:
                    obj = orjson.loads(record.value)
                    if produce:
                        await producer.send(args.sink, _output(obj, 1), key=record.key)
                    seen += 1
        if produce:
            await producer.flush()
        done = time.perf_counter()
        cpu_s = time.process_time() - first_cpu
    finally:
        await consumer.stop()
        if produce:
            await producer.stop()
    seconds = done - (first or done)
    rate = seen / seconds if seconds else 0.0
    return {"events": seen, "seconds": seconds, "rate": rate, "cpu_s": cpu_s}


def faust_naive(args: argparse.Namespace) -> None:
    """The textbook Faust app: one agent, a per-user Table, one ``send`` per event."""
    import faust

    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="bench-faust-"),
        value_serializer="json",  # the Table's values; the topics below are raw
        key_serializer="raw",
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        producer_acks=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
    )
    source = app.topic(args.source, value_serializer="raw", key_serializer="raw")
    sink = app.topic(args.sink, value_serializer="raw", key_serializer="raw")
    table = app.Table("history", default=list, partitions=args.partitions)

    @app.agent(source)
    async def process(stream: Any) -> None:
        async for event in stream.events():
            obj = orjson.loads(event.value)
            history = [*table[event.key], obj["item_id"]][-HISTORY:]
            table[event.key] = history
            await sink.send(key=event.key, value=_output(obj, len(history)))

    worker = faust.Worker(app, loglevel="WARN", quiet=True)
    worker.execute_from_commandline()


class NullRecs:
    """Scoring disabled: every recommendation is an empty fallback (pass-through benchmark)."""

    model_version = "scoring-disabled"

    def recommend(self, histories: Any, exclude: Any, k: int) -> list[Any]:
        from recstream.streams.scoring import RecsResult

        return [RecsResult((), True)] * len(histories)


class NullSentiment:
    """Scoring disabled for reviews (the backlog holds none; present for the interface)."""

    model_version = "scoring-disabled"

    def classify(self, texts: Any) -> list[Any]:
        from recstream.streams.scoring import SentimentResult

        return [SentimentResult("neutral", {}, ("scoring_disabled",))] * len(texts)


def recstream_passthrough() -> None:
    """``recstream worker`` (``streams/worker.py``, ``serve``) with scoring disabled.

    Everything the worker does per batch (decode, validate, sessions, changelog writes,
    sweeps, one output per event, the hop to the scoring thread, metrics, the
    storefront's latest answers) except running the models: the scorers return empty
    fallbacks at once.  Configured by RECSTREAM_* like the worker.
    """
    from recstream.streams.settings import Settings
    from recstream.streams.worker import serve

    sys.exit(serve(Settings(), (NullRecs(), NullSentiment())))


def build_models(out: Path, items: int) -> None:
    """Export a random-init SASRec-size recommender and a tiny sentiment model into ``out``.

    50k items, length 50, d 64, 2 layers by default: the shape the issue's figures use.
    Goes through recstream's real export path; written to a temporary folder first so a
    half-built folder is never mistaken for a finished one.
    """
    import shutil

    import torch

    from recstream.export.onnx_export import export_recs, export_sentiment
    from recstream.export.tiny import tiny_sentiment
    from recstream.model.features import FIRST_ITEM
    from recstream.model.sasrec import SASRec

    torch.manual_seed(0)
    torch.set_num_threads(1)
    vocab = [f"p{n}" for n in range(items)]  # the shop log's item ids
    hparams: dict[str, Any] = {
        "n_items": items + FIRST_ITEM,
        "max_len": 50,
        "dim": 64,
        "layers": 2,
        "heads": 1,
        "dropout": 0.0,
    }
    meta = {
        "kind": "recs",
        "hparams": hparams,
        "vocab": vocab,
        "popular": vocab[:100],
        "max_len": 50,
        "data_fingerprint": f"benchmark-random-init-{items}",
        "metrics": {},
        "trained_at": "2026-01-01T00:00:00+00:00",
    }
    building = out.with_name(out.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    variants = ("fp32", "int8")  # RECSTREAM_MODEL_VARIANT picks the one served
    export_recs(SASRec(**hparams).eval(), meta, building, variants)
    encoder, sentiment_meta = tiny_sentiment(0)
    export_sentiment(encoder, sentiment_meta, building, variants)
    shutil.rmtree(out, ignore_errors=True)
    building.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--source", default="")
    parser.add_argument("--sink", default="")
    parser.add_argument("--group", default="bench-raw")
    parser.add_argument("--app-id", default="bench-faust")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, help="build-models: the folder to write")
    parser.add_argument("--items", type=int, default=50_000, help="build-models: catalogue size")
    args = parser.parse_args(argv)
    if args.scenario == "build-models":
        build_models(args.out, args.items)
        return 0
    if args.scenario in ("faust-naive", "recstream-passthrough"):
        sys.argv = sys.argv[:1]  # faust.Worker reads argv; give it none of ours
        if args.scenario == "faust-naive":
            faust_naive(args)
        else:
            recstream_passthrough()
        return 0
    result = asyncio.run(raw_kafka(args, produce=args.scenario == "raw-produce"))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
