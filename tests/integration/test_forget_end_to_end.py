"""A ``privacy`` forget request end to end: tables, changelogs and the storefront purged.

After the forget, the user's state and storefront row are gone from the worker's
tables, both changelog topics end with a tombstone (``None`` value) for the user, the
storefront answers the popular-items fallback, and only new activity (events processed
after the forget) builds a fresh session and history.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from worker_processes import (
    FAKE_WORKER_COMMAND,
    e2e_env,
    produce,
    start_process,
    stop_processes,
    wait_ready,
)

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

TIMEOUT_S = 40.0


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def _wait_for(port: int, path: str, test: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = _get(port, path)
        if test(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"{what}: last answer {body}")


async def _changelog(settings: Settings, topic: str, key: bytes) -> list[bytes | None]:
    """Every value written for ``key`` to ``topic``, in order (``None`` = tombstone)."""
    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False,
        **aiokafka_kwargs(settings),
    )  # fmt: skip
    values: list[bytes | None] = []
    await consumer.start()
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values += [m.value for ms in batches.values() for m in ms if m.key == key]
            if values and values[-1] is None:
                break
    finally:
        await consumer.stop()
    return values


def test_forget_purges_tables_changelogs_and_storefront(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(update={"web_port": free_port()})
    asyncio.run(create_topics(settings, ALL_TOPICS))
    env = e2e_env(settings, tmp_path / "no-models", tmp_path / "data")
    env["RECSTREAM_SESSION_GAP"] = "600"  # sessions stay open during the test
    env["RECSTREAM_ALLOWED_LATENESS"] = "60"
    log = tmp_path / "worker.log"
    proc = start_process(FAKE_WORKER_COMMAND, env, log)
    run = uuid.uuid4().hex[:6]
    now = time.time()
    alice, bob = f"alice-{run}", f"bob-{run}"

    def click(eid: str, user: str, ts: float) -> tuple[str, bytes, bytes]:
        obj = {"event_id": eid, "user_id": user, "item_id": "item-3", "action": "view", "ts": ts}
        return ("clicks", user.encode(), orjson.dumps(obj))

    review = orjson.dumps({"event_id": f"r-{run}", "user_id": alice, "item_id": "item-3",
                           "text": "great", "ts": now - 50})  # fmt: skip
    try:
        wait_ready(proc, settings.web_port, log, 60)
        port = settings.web_port
        asyncio.run(produce(settings, [
            click(f"a1-{run}", alice, now - 60), click(f"a2-{run}", alice, now - 55),
            ("reviews", alice.encode(), review), click(f"b1-{run}", bob, now - 60),
        ]))  # fmt: skip
        _wait_for(port, f"/v1/users/{alice}/session",
                  lambda b: b["known"] and len(b["recent"]) == 2 and b["reviews"],
                  "alice's session never showed her 2 clicks and review")  # fmt: skip
        rec = _get(port, f"/v1/users/{alice}/recommendations")
        assert rec["fallback"] is False and rec["trigger_event_id"] == f"a2-{run}"

        forget = orjson.dumps({"event_id": f"f-{run}", "user_id": alice, "ts": now - 40})
        asyncio.run(produce(settings, [("privacy", alice.encode(), forget)]))
        gone = _wait_for(port, f"/v1/users/{alice}/session", lambda b: not b["known"],
                         "alice's state was not purged")  # fmt: skip
        assert gone["recent"] == [] and gone["reviews"] == []
        rec = _get(port, f"/v1/users/{alice}/recommendations")
        assert rec["fallback"] is True and rec["trigger_event_id"] == ""
        assert _get(port, f"/v1/users/{bob}/session")["known"]  # others untouched

        for table in ("user-state", "storefront-latest"):
            topic = f"{settings.app_id}-{table}-changelog"
            values = asyncio.run(_changelog(settings, topic, alice.encode()))
            assert values and values[-1] is None, f"{topic}: no tombstone last ({values})"
            # (both tables' records wait for the next offset commit, the latest per user:
            # a row and the forget within one commit interval leave only the tombstone;
            # the storefront answered alice's row above, before the forget)
        bob_values = asyncio.run(
            _changelog(settings, f"{settings.app_id}-user-state-changelog", bob.encode())
        )
        assert bob_values and bob_values[-1] is not None

        # New activity after the forget starts from nothing: a new session, one event.
        asyncio.run(produce(settings, [click(f"a3-{run}", alice, now - 30)]))
        fresh = _wait_for(port, f"/v1/users/{alice}/session", lambda b: b["known"],
                          "alice's new activity was not recorded")  # fmt: skip
        assert len(fresh["recent"]) == 1 and fresh["reviews"] == []
        rec = _wait_for(
            port,
            f"/v1/users/{alice}/recommendations",
            lambda b: not b["fallback"],
            "no recommendation for new activity",
        )
        assert rec["trigger_event_id"] == f"a3-{run}"
        assert rec["session_id"] == f"{alice}:{round((now - 30) * 1000)}"
        assert proc.poll() is None
    finally:
        stop_processes(proc)
