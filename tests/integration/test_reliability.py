"""A worker restart: per-user state comes back from the changelog and nothing is lost."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from recstream.streams.broker import free_port
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics


def _end_to_end_helpers() -> ModuleType:
    """The worker helpers of test_end_to_end.py (test files are not importable packages)."""
    path = Path(__file__).with_name("test_end_to_end.py")
    spec = importlib.util.spec_from_file_location("recstream_e2e_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


E2E = _end_to_end_helpers()


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
    env = E2E._env(settings, tmp_path / "no-models", tmp_path / "data")
    command = [sys.executable, "-c", E2E.FAKE_WORKER]
    now = time.time()
    run = uuid.uuid4().hex[:6]
    first = [
        ("clicks", b"user-x", _click(f"x1-{run}", "user-x", now - 10)),
        ("clicks", None, _click(f"y1-{run}", "user-y", now - 10)),  # unkeyed: repartitioned
    ]

    worker = E2E._start(command, env, tmp_path / "worker-1.log")
    try:
        E2E._wait_ready(worker, settings.web_port, tmp_path / "worker-1.log", 40)
        asyncio.run(E2E._produce(settings, first))
        got = asyncio.run(E2E._collect(settings, {"recommendations": 2}, 30))
        assert len(got["recommendations"]) == 2
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        E2E._stop(worker)

    worker = E2E._start(command, env, tmp_path / "worker-2.log")
    try:
        E2E._wait_ready(worker, settings.web_port, tmp_path / "worker-2.log", 40)
        asyncio.run(E2E._produce(settings, [("clicks", b"user-x", _click(f"x2-{run}", "user-x",
                                                                         now - 9.5))]))  # fmt: skip
        wanted = {"recommendations": 3, "sessions": 2}
        got = asyncio.run(E2E._collect(settings, wanted, E2E.OUTPUT_TIMEOUT_S))
    finally:
        E2E._stop(worker)

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
    env = E2E._env(settings, tmp_path / "no-models", tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", E2E.FAKE_WORKER], env=env, capture_output=True, timeout=90
    )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    message = done.stderr.decode()
    assert "wrong partition counts" in message
    assert f"{settings.topic('clicks')} has 2" in message
    assert "RECSTREAM_PARTITIONS=3" in message


def test_worker_refuses_missing_input_topics(kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings.model_copy(update={"web_port": free_port()})
    env = E2E._env(settings, tmp_path / "no-models", tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", E2E.FAKE_WORKER], env=env, capture_output=True, timeout=90
    )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert f"missing input topics {settings.topic('clicks')}" in done.stderr.decode()
