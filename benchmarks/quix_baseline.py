"""Quix Streams doing recstream's stateful pass-through: the reference Python stream processor.

Per event: read the user's history (a list capped at 50 item ids) from Quix state, append,
write it back (Quix writes it to its changelog topic) and produce one output.  Runs until
stopped (SIGTERM); the parent times it by counting outputs.

    python benchmarks/quix_baseline.py --bootstrap H:P --source T --sink T2 --group G \
        [--store memory|rocksdb]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

HISTORY = 50


def build_and_run(args: argparse.Namespace) -> None:
    """Build the Quix application and run it until it is stopped."""
    from quixstreams import Application
    from quixstreams.state.memory import MemoryStore
    from quixstreams.state.rocksdb import RocksDBStore

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="bench-quix-"),
        loglevel="WARNING",
        commit_interval=1.0,
        producer_extra_config={"acks": 1, "enable.idempotence": False, "linger.ms": 5},
        # Short group timeouts: Tansu holds a JoinGroup for half the session timeout.
        consumer_extra_config={"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000},
    )
    source = app.topic(args.source, value_deserializer="json", key_deserializer="bytes")
    sink = app.topic(args.sink, value_serializer="json", key_serializer="bytes")
    sdf = app.dataframe(source)
    sdf.register_store(store_type=MemoryStore if args.store == "memory" else RocksDBStore)

    def update(event: dict[str, Any], state: Any) -> dict[str, Any]:
        history = [*state.get("history", []), event["item_id"]][-HISTORY:]
        state.set("history", history)
        return {
            "user_id": event["user_id"],
            "trigger_event_id": event["event_id"],
            "event_ts": event["ts"],
            "history": len(history),
        }

    sdf = sdf.apply(update, stateful=True)
    sdf.to_topic(sink)
    app.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    build_and_run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
