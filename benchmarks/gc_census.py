"""What the worker's young collections walk: the tracked objects the batch code leaves
behind per event under live clicks, counted by kind.

A young collection walks every container object (tuples, lists, class instances, ...)
allocated since the last one and still alive.  The worker collects its young generation
every ``RECSTREAM_GC_YOUNG_THRESHOLD`` such objects (net of those freed), so the objects
each event leaves alive set how often the event loop stops for one: a collection walks
about as many objects whatever their kind (40-120 ms each measured under 5,000 clicks/s,
``latency_probe.py``), and fewer left per event means fewer collections.

Live clicks of new users (``bench_common.live_clicks``, the shape of pipeline_speed's
backlog) run through :class:`recstream.streams.pipeline.Pipeline` in batches, as the
worker's agents do: each decoded, applied, scored, turned into outputs and its partitions
swept (``Pipeline.run``).  After ``--warmup`` clicks (the caches of tokens and decoded
states fill) everything is collected and frozen, the collector is turned off,
``--events`` more clicks run, and what is left in the young generation is counted, by
type (tuples and lists also by the types of their items).
No clock is read: the counts are the same from run to run on the same code.

    python benchmarks/gc_census.py                   # SASRec-size model, 100,000 warm-up
    python benchmarks/gc_census.py --warmup 10000    # nearer a cold start
    python benchmarks/gc_census.py --quick           # null scorers, small (tests)

Prints a table and writes ``benchmarks/results/gc_census[_quick].json``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_common as bc
import orjson
from bench_workers import NullRecs, NullSentiment

from recstream.streams.pipeline import DictStore, Pipeline, RawRecord
from recstream.streams.scoring import RecsScorer, SentimentScorer, load_scorers
from recstream.streams.settings import Settings

RESULTS = bc.RESULTS_DIR / "gc_census.json"
QUICK_RESULTS = bc.RESULTS_DIR / "gc_census_quick.json"
PARTITIONS = 4
#: How many kinds the table shows (the JSON has them all).
SHOWN = 12


def kind_of(obj: object) -> str:
    """A tracked object's kind: its type, and for a tuple or a list its items' types
    (the first four; a list by its first item)."""
    name = type(obj).__name__
    if isinstance(obj, tuple):
        return f"tuple({', '.join(type(item).__name__ for item in obj[:4])})"
    if isinstance(obj, list):
        return f"list of {type(obj[0]).__name__}" if obj else "list (empty)"
    return name


def clicks(n: int, clicks_per_user: float, rate: float) -> list[RawRecord]:
    """``n`` live clicks as fetched records, ``rate`` clicks per second of event time."""
    start = 1_700_000_000.0
    keyed = []
    for i, (key, event) in enumerate(bc.live_clicks(n, clicks_per_user, "g")):
        event["ts"] = start + i / rate
        keyed.append((key, orjson.dumps(event)))
    return bc.click_records(keyed, PARTITIONS)


def scorers(model: str, items: int) -> tuple[RecsScorer, SentimentScorer]:
    """The benchmark's SASRec-size model (int8, in this process), or null scorers."""
    if model == "null":
        return NullRecs(), NullSentiment()
    from pipeline_speed import sasrec_size_models

    settings = Settings(
        model_dir=sasrec_size_models(items), model_processes="false", model_variant="int8"
    )
    return load_scorers(settings)


def census(args: argparse.Namespace) -> dict[str, Any]:
    """Run the warm-up and the counted clicks; the young generation's kinds per event."""
    recs, sentiment = scorers(args.model, args.items)
    pipeline = Pipeline(Settings(), recs, sentiment, partitions=PARTITIONS)
    store = DictStore()
    records = clicks(args.warmup + args.events, args.clicks_per_user, args.rate)
    size = args.batch_size
    for start in range(0, args.warmup, size):
        pipeline.run(records[start : min(start + size, args.warmup)], store)
    with bc.collector_paused():  # what exists frozen, no collection until the count
        for start in range(args.warmup, len(records), size):
            pipeline.run(records[start : start + size], store)
        kinds = Counter(map(kind_of, gc.get_objects(0)))
    total = sum(kinds.values())
    return {
        "schema_version": 1,
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "model": args.model,
            "items": args.items,
            "warmup": args.warmup,
            "events": args.events,
            "clicks_per_user": args.clicks_per_user,
            "rate": args.rate,
            "batch_size": size,
            "partitions": PARTITIONS,
        },
        "tracked_left": total,
        "per_event": total / args.events,
        "kinds_per_event": {kind: count / args.events for kind, count in kinds.most_common()},
    }


def table(result: dict[str, Any]) -> str:
    """The most common kinds, per event and as a share of all, as Markdown."""
    total = result["per_event"]
    rows = [
        [kind, f"{per_event:.2f}", f"{100 * per_event / total:.1f}"]
        for kind, per_event in list(result["kinds_per_event"].items())[:SHOWN]
    ]
    return bc.markdown_table(["kind", "per event", "%"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000, help="clicks counted")
    parser.add_argument("--warmup", type=int, default=100_000, help="clicks run first")
    parser.add_argument("--clicks-per-user", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5_000.0, help="clicks per s of event time")
    parser.add_argument(
        "--batch-size", type=int, default=80, help="clicks per batch (~80 at 5,000/s measured)"
    )
    parser.add_argument("--model", choices=["sasrec", "null"], default="sasrec")
    parser.add_argument("--items", type=int, default=50_000, help="the model's catalogue")
    parser.add_argument("--quick", action="store_true", help="null scorers, 2,000 + 1,000")
    parser.add_argument("--out", type=Path, help="default: results/gc_census[_quick].json")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.warmup, args.events = "null", 2_000, 1_000
    result = census(args)
    meta = result["meta"]
    print(
        f"{meta['events']:,} clicks after {meta['warmup']:,} ({meta['model']} scorers, "
        f"batches of {meta['batch_size']}): {result['per_event']:.2f} tracked objects "
        "left per event\n"
    )
    print(table(result))
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    bc.write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
