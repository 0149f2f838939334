"""Replay a generated log into a real (embedded) broker and read every record back."""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from worker_processes import WORKER_COMMAND, start_process, stop_processes, wait_ready, worker_env

from recstream.model.adapters import Located, read_events, read_located
from recstream.model.shoplog import generate, write_log
from recstream.streams import replay
from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.offline_eval import evaluate, load_model
from recstream.streams.records import Event, event_to_dict
from recstream.streams.replay import KafkaSink, Replayer, ReplayOptions, ReplayState
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

INPUTS = ("clicks", "searches", "reviews")


def _log(tmp_path: Path) -> tuple[Path, list[Located]]:
    path = tmp_path / "shop.jsonl"
    write_log(path, generate(30, 40, 2.0, 9))
    return path, list(read_located(path, "jsonl"))


def _args(path: Path, settings: Settings, state: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return parser.parse_args(
        [str(path), "--bootstrap-servers", settings.bootstrap_servers,
         "--topic-prefix", settings.topic_prefix, "--state", str(state), "--no-progress", *extra]
    )  # fmt: skip


async def _consume_all(settings: Settings, expected: int) -> list[tuple[str, int, bytes, bytes]]:
    """Every record of the input topics: (topic, partition, key, value), partition order."""
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in INPUTS),
        **aiokafka_kwargs(settings),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[str, int, bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 60.0
        quiet_polls = 0
        # Read until everything expected arrived, then two more polls to catch extras.
        while time.monotonic() < deadline and quiet_polls < 2:
            batch = await consumer.getmany(timeout_ms=500)
            got = [
                (r.topic, r.partition, r.key or b"", r.value or b"")
                for rs in batch.values()
                for r in rs
            ]
            records += got
            if len(records) >= expected and not got:
                quiet_polls += 1
    finally:
        await consumer.stop()
    return records


def _check_exactly_once_in_user_order(
    records: list[tuple[str, int, bytes, bytes]], located: list[Located]
) -> None:
    ids = Counter(orjson.loads(value)["event_id"] for _t, _p, _k, value in records)
    assert len(ids) == len(located) and set(ids.values()) == {1}
    want: dict[str, list[str]] = defaultdict(list)
    for item in located:
        want[item.event.user_id].append(item.event.event_id)
    got: dict[str, list[str]] = defaultdict(list)
    partitions: dict[str, set[tuple[str, int]]] = defaultdict(set)
    # One topic-partition's records come back in log order; compare per topic.
    for topic, partition, key, value in records:
        event = orjson.loads(value)
        assert key.decode() == event["user_id"]
        partitions[event["user_id"]].add((topic.split(".")[-1], partition))
        got[event["user_id"]].append(event["event_id"])
    kinds = {i.event.event_id: type(i.event).__name__ for i in located}
    for user, events in want.items():
        for kind in {kinds[e] for e in events}:
            assert [e for e in got[user] if kinds[e] == kind] == [
                e for e in events if kinds[e] == kind
            ]
    assert all(
        len({t for t, _p in tps}) == len(tps) for tps in partitions.values()
    )  # one per topic


async def test_replay_into_kafka_and_consume_back(kafka_settings: Settings, tmp_path: Path) -> None:
    await create_topics(kafka_settings, INPUTS)
    path, located = _log(tmp_path)
    state = tmp_path / "state.json"
    assert await replay.run_async(_args(path, kafka_settings, state)) == 0
    records = await _consume_all(kafka_settings, len(located))
    _check_exactly_once_in_user_order(records, located)
    by_id = {i.event.event_id: event_to_dict(i.event) for i in located}
    assert all(orjson.loads(v) == by_id[orjson.loads(v)["event_id"]] for _t, _p, _k, v in records)
    saved = ReplayState.load(state)
    assert saved.complete and saved.sent == len(located) == saved.next_position


async def test_interrupted_replay_resumes_without_duplicates(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    await create_topics(kafka_settings, INPUTS)
    path, located = _log(tmp_path)
    state_file = tmp_path / "state.json"
    sink = KafkaSink(kafka_settings)
    await sink.start(retry_for=30.0, report=print)
    first = Replayer(
        sink, kafka_settings, ReplayOptions(max_pending=50, stop_after_acks=120),
        ReplayState(source=str(path), format="jsonl"),
        save_state=lambda s: s.save(state_file), report=print,
    )  # fmt: skip
    try:
        summary = await first.run(read_located(path, "jsonl"))
    finally:
        await sink.stop()
    assert summary.outcome == "interrupted"
    assert 120 <= ReplayState.load(state_file).sent < len(located)
    assert await replay.run_async(_args(path, kafka_settings, state_file, "--resume")) == 0
    records = await _consume_all(kafka_settings, len(located))
    _check_exactly_once_in_user_order(records, located)
    assert ReplayState.load(state_file).complete


# ----------------------------------------------------------------------------
# The worker's own recommendations equal the offline evaluation's
# ----------------------------------------------------------------------------


def _clicks_only_tiny_log(path: Path) -> list[Event]:
    """Clicks of a generated log over the tiny models' items (``item-0`` .. ``item-39``).

    Clicks only: one input topic, so the worker sees each user's events in log order
    (events of different topics may interleave in any order).
    """
    lines = []
    for event in generate(25, 40, 2.0, 17):
        if "action" in event:
            event["item_id"] = f"item-{int(event['item_id'][1:])}"
            lines.append(event)
    write_log(path, iter(lines))
    return list(read_events(path, "jsonl"))


async def _collect_recommendations(settings: Settings, expected: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        settings.topic("recommendations"), **aiokafka_kwargs(settings),
        group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    got: dict[str, Any] = {}
    await consumer.start()
    try:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and len(got) < expected:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    rec = orjson.loads(record.value or b"{}")
                    got[rec["trigger_event_id"]] = rec
    finally:
        await consumer.stop()
    return got


@pytest.mark.slow
async def test_worker_recommendations_equal_offline_evaluation(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from recstream.export.tiny import build_tiny_models

    models = tmp_path / "models"
    build_tiny_models(models)
    settings = kafka_settings.model_copy(update={"web_port": free_port(), "model_dir": models})
    await create_topics(settings, ALL_TOPICS)
    env = worker_env(
        settings, models, tmp_path / "data", RECSTREAM_PROVIDERS="CPUExecutionProvider"
    )
    log = tmp_path / "worker.log"
    worker = start_process(WORKER_COMMAND, env, log)
    try:
        wait_ready(worker, settings.web_port, log, 60)
        path = tmp_path / "clicks.jsonl"
        events = _clicks_only_tiny_log(path)
        assert await replay.run_async(_args(path, settings, tmp_path / "state.json")) == 0
        online = await _collect_recommendations(settings, len(events))
    finally:
        stop_processes(worker, timeout=30)
    recs, _ = load_model(str(models), settings)
    offline = evaluate(events, recs, settings).recommendations
    assert len(offline) == len(events) == len(online), log.read_text()[-3000:]
    for rec in offline:
        shown = online[rec.trigger_event_id]
        assert [i["item_id"] for i in shown["items"]] == [
            i.item_id for i in rec.items[: settings.top_k]
        ]
        assert shown["fallback"] == rec.fallback
