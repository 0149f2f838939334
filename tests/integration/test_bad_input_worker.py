"""Malformed records through a real worker: each is dead-lettered with its reason, the
worker never crashes, and every valid record between them is processed.

Hypothesis generates whole batches (the strategies of tests/streams/test_pipeline.py:
invalid JSON and UTF-8, NaN/Infinity, deep nesting, wrong types, missing and extra
fields, empty/long/control-character ids, timestamps far in the past or future, unknown
actions, records over RECSTREAM_MAX_EVENT_BYTES); each example goes through the same
running worker, because starting one per example would take too long.

Set ``RELIABILITY_RESULTS_DIR`` to write the counts per reason there.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from worker_processes import (
    FAKE_WORKER_COMMAND,
    e2e_env,
    start_process,
    stop_processes,
    wait_ready,
)

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).resolve().parent
STRATEGIES = _load("recstream_pipeline_strategies", HERE.parent / "streams" / "test_pipeline.py")
BATCH = 200
TIMEOUT_S = 60.0
TOTALS: dict[str, Counter[str]] = {"tried": Counter(), "dead_lettered": Counter()}


class RunningWorker:
    """The module's worker process and its settings."""

    def __init__(self, settings: Settings, proc: Any) -> None:
        self.settings = settings
        self.proc = proc
        self.examples = 0


@pytest.fixture(scope="module")
def running_worker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningWorker]:
    """One fake-scorer worker for the module (starting one per example is too slow)."""
    prefix = f"bad{os.urandom(4).hex()}."
    cfg = Settings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, app_id=f"recstream-{prefix[:-1]}",
        partitions=2, web_port=free_port(), max_event_bytes=STRATEGIES.MAX_EVENT_BYTES,
    )  # fmt: skip
    asyncio.run(create_topics(cfg, ALL_TOPICS))
    tmp = tmp_path_factory.mktemp("bad-input")
    env = e2e_env(cfg, tmp / "no-models", tmp / "data")
    env["RECSTREAM_MAX_EVENT_BYTES"] = str(STRATEGIES.MAX_EVENT_BYTES)
    env["RECSTREAM_SESSION_GAP"] = "600"
    env["RECSTREAM_ALLOWED_LATENESS"] = "600"
    log = tmp / "worker.log"
    proc = start_process(FAKE_WORKER_COMMAND, env, log)
    try:
        wait_ready(proc, cfg.web_port, log, 60)
        yield RunningWorker(cfg, proc)
    finally:
        stop_processes(proc)
    folder = os.environ.get("RELIABILITY_RESULTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {name: dict(counts) for name, counts in TOTALS.items()}
        result["worker_exit"] = proc.returncode
        (Path(folder) / "bad_input.json").write_text(json.dumps(result, indent=2))


async def _produce(cfg: Settings, records: list[tuple[str, bytes]]) -> list[tuple[str, int, int]]:
    """Send unkeyed records; returns each one's (topic, partition, offset)."""
    producer = AIOKafkaProducer(**aiokafka_kwargs(cfg))
    await producer.start()
    try:
        futures = [await producer.send(cfg.topic(kind), value=raw) for kind, raw in records]
        done = [await future for future in futures]
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in done]


async def _outputs(
    cfg: Settings, wanted_ids: set[str], wanted_dead: set[tuple[str, int, int]]
) -> dict[str, list[dict[str, Any]]]:
    """This example's outputs: recommendations and sentiments by event id, dead letters
    by source position, read until all are seen (or the timeout)."""
    names = ("recommendations", "sentiment", "deadletter")
    topics = {cfg.topic(name): name for name in names}
    consumer = AIOKafkaConsumer(
        *topics, auto_offset_reset="earliest", enable_auto_commit=False,
        **aiokafka_kwargs(cfg),
    )  # fmt: skip
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    seen_ids: set[str] = set()
    seen_dead: set[tuple[str, int, int]] = set()
    await consumer.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and (seen_ids < wanted_ids or seen_dead < wanted_dead):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                name = topics[tp.topic]
                for m in messages:
                    obj = orjson.loads(m.value)
                    if name == "deadletter":
                        where = (obj["source_topic"], obj["partition"], obj["offset"])
                        if where in wanted_dead:
                            seen_dead.add(where)
                            got[name].append(obj)
                        continue
                    eid = obj["trigger_event_id" if name == "recommendations" else "event_id"]
                    if eid in wanted_ids:
                        seen_ids.add(eid)
                        got[name].append(obj)
    finally:
        await consumer.stop()
    return got


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=STRATEGIES.labelled_batch(BATCH, time.time()))
def test_malformed_records_through_a_running_worker(
    running_worker: RunningWorker, batch: list[tuple[str, bytes, str | None]]
) -> None:
    cfg = running_worker.settings
    running_worker.examples += 1
    tag = f"x{running_worker.examples}-{os.urandom(3).hex()}-"
    records: list[tuple[str, bytes]] = []
    for kind, raw, reason in batch:
        if reason is None:  # valid: give it an event id of this example
            obj = orjson.loads(raw)
            obj["event_id"] = tag + obj["event_id"]
            raw = orjson.dumps(obj)
        records.append((kind, raw))
    positions = asyncio.run(_produce(cfg, records))
    bad = {pos: (raw, reason) for pos, (_, raw, reason) in zip(positions, batch, strict=True)
           if reason is not None}  # fmt: skip
    valid = [(kind, orjson.loads(raw)["event_id"])
             for (kind, raw), (_, _, reason) in zip(records, batch, strict=True)
             if reason is None]  # fmt: skip
    scored = {eid for kind, eid in valid if kind != "privacy"}
    got = asyncio.run(_outputs(cfg, scored, set(bad)))
    assert running_worker.proc.poll() is None, "the worker crashed"
    letters = {(d["source_topic"], d["partition"], d["offset"]): d for d in got["deadletter"]}
    assert len(letters) == len(got["deadletter"]) == len(bad)
    for pos, (raw, reason) in bad.items():
        assert letters[pos]["error"].split(":", 1)[0] == reason, (raw[:200], letters[pos])
        assert base64.b64decode(letters[pos]["payload"]) == raw
    assert sorted(r["trigger_event_id"] for r in got["recommendations"]) == sorted(
        e for k, e in valid if k in ("clicks", "searches")
    )
    assert sorted(s["event_id"] for s in got["sentiment"]) == sorted(
        e for k, e in valid if k == "reviews"
    )
    TOTALS["tried"].update(reason for _, reason in bad.values())
    TOTALS["tried"]["valid"] += len(valid)
    TOTALS["dead_lettered"].update(d["error"].split(":", 1)[0] for d in letters.values())
