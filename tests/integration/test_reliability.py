"""A worker restart: per-user state comes back from the changelog and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from worker_processes import (
    FAKE_WORKER_COMMAND,
    OUTPUT_TIMEOUT_S,
    collect,
    e2e_env,
    produce,
    start_process,
    stop_processes,
    wait_ready,
)

from recstream.streams.broker import free_port
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics


def _click(eid: str, user: str, ts: float) -> bytes:
    obj = {"event_id": eid, "user_id": user, "item_id": "item-3", "action": "view", "ts": ts}
    return orjson.dumps(obj)


def test_restart_recovers_sessions_from_the_changelog(
    kafka_settings: Settings, broker_kind: str, tmp_path: Path
) -> None:
    if broker_kind == "tansu":
        pytest.skip("tansu answers ListOffsets latest wrongly: Faust table recovery loses data")
    settings = kafka_settings.model_copy(update={"web_port": free_port()})
    asyncio.run(create_topics(settings, ALL_TOPICS))
    env = e2e_env(settings, tmp_path / "no-models", tmp_path / "data")
    now = time.time()
    run = uuid.uuid4().hex[:6]
    first = [
        ("clicks", b"user-x", _click(f"x1-{run}", "user-x", now - 10)),
        ("clicks", None, _click(f"y1-{run}", "user-y", now - 10)),  # unkeyed: repartitioned
    ]

    worker = start_process(FAKE_WORKER_COMMAND, env, tmp_path / "worker-1.log")
    try:
        wait_ready(worker, settings.web_port, tmp_path / "worker-1.log", 40)
        asyncio.run(produce(settings, first))
        got = asyncio.run(collect(settings, {"recommendations": 2}, 30))
        assert len(got["recommendations"]) == 2
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        stop_processes(worker)

    worker = start_process(FAKE_WORKER_COMMAND, env, tmp_path / "worker-2.log")
    try:
        wait_ready(worker, settings.web_port, tmp_path / "worker-2.log", 40)
        x2 = _click(f"x2-{run}", "user-x", now - 9.5)
        asyncio.run(produce(settings, [("clicks", b"user-x", x2)]))
        wanted = {"recommendations": 3, "sessions": 2}
        got = asyncio.run(collect(settings, wanted, OUTPUT_TIMEOUT_S))
    finally:
        stop_processes(worker)

    recs: dict[str, list[dict[str, Any]]] = {}
    for rec in got["recommendations"]:
        recs.setdefault(rec["trigger_event_id"], []).append(rec)
    assert set(recs) == {f"x1-{run}", f"y1-{run}", f"x2-{run}"}
    # x2 continued the session x1 opened before the restart: the state was recovered.
    assert recs[f"x2-{run}"][0]["session_id"] == recs[f"x1-{run}"][0]["session_id"]
    sessions = {s["user_id"]: s for s in got["sessions"]}
    assert sum(sessions["user-x"]["counts"].values()) == 2
    # user-y had no event after the restart: its session was closed by the idle sweep
    # of the recovered state.
    assert sum(sessions["user-y"]["counts"].values()) == 1


def test_worker_refuses_input_topics_with_another_partition_count(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """User state is placed by user id modulo RECSTREAM_PARTITIONS: a mismatch would
    scatter it, so the worker stops before joining the group."""
    asyncio.run(create_topics(kafka_settings, ALL_TOPICS))  # 2 partitions
    settings = kafka_settings.model_copy(update={"partitions": 3, "web_port": free_port()})
    env = e2e_env(settings, tmp_path / "no-models", tmp_path / "data")
    done = subprocess.run(FAKE_WORKER_COMMAND, env=env, capture_output=True, timeout=90)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    message = done.stderr.decode()
    assert "wrong partition counts" in message
    assert f"{settings.topic('clicks')} has 2" in message
    assert "RECSTREAM_PARTITIONS=3" in message


def test_worker_refuses_missing_input_topics(kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings.model_copy(update={"web_port": free_port()})
    env = e2e_env(settings, tmp_path / "no-models", tmp_path / "data")
    done = subprocess.run(FAKE_WORKER_COMMAND, env=env, capture_output=True, timeout=90)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert f"missing input topics {settings.topic('clicks')}" in done.stderr.decode()
