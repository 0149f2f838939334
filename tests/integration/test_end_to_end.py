"""End to end on an embedded broker: a worker process turns input topics into outputs.

Two ways to start the worker:

* ``recstream worker`` with real tiny ONNX models (``export.tiny.build_tiny_models``,
  a random-init export through the real export path; building them takes most of
  that test's time);
* the same :func:`recstream.streams.worker.serve` in a subprocess whose
  ``load_scorers`` returns ``scoring.FakeRecsScorer``/``FakeSentimentScorer``
  (test-only), which checks the Kafka/Faust wiring independently of the models.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from worker_processes import (
    FAKE_WORKER_COMMAND,
    OUTPUT_TIMEOUT_S,
    REPO,
    WORKER_COMMAND,
    collect,
    e2e_env,
    metric_samples,
    produce,
    start_process,
    stop_processes,
    wait_ready,
)

from recstream.streams.broker import free_port
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics


@pytest.fixture
def e2e_settings(kafka_settings: Settings) -> Settings:
    return kafka_settings.model_copy(update={"web_port": free_port()})


@pytest.fixture
def fake_worker(e2e_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    asyncio.run(create_topics(e2e_settings, ALL_TOPICS))
    env = e2e_env(e2e_settings, tmp_path / "no-models", tmp_path / "data")
    log = tmp_path / "worker.log"
    proc = start_process(FAKE_WORKER_COMMAND, env, log)
    try:
        wait_ready(proc, e2e_settings.web_port, log, 40)
        yield proc
    finally:
        stop_processes(proc)


def _inputs(now: float) -> tuple[list[tuple[str, bytes | None, bytes]], dict[str, Any]]:
    """(topic kind, key, value) records, and what each should produce."""
    records: list[tuple[str, bytes | None, bytes]] = []
    clicks, searches, reviews, bad = [], [], [], []
    for n in range(12):
        user = f"user-{n % 5}"
        keyed = n % 2 == 0
        key = user.encode() if keyed else None
        eid = f"c-{n}-{uuid.uuid4().hex[:6]}"
        action = ("view", "add_to_cart", "purchase")[n % 3]
        obj = {"event_id": eid, "user_id": user, "item_id": f"item-{n % 7}", "action": action,
               "ts": now - 30 + n / 10}  # fmt: skip
        records.append(("clicks", key, orjson.dumps(obj)))
        clicks.append(eid)
        if n % 3 == 0:
            sid = f"s-{n}"
            search = {
                "event_id": sid,
                "user_id": user,
                "query": "red shoes",
                "ts": now - 30 + n / 10,
            }
            records.append(("searches", key, orjson.dumps(search)))
            searches.append(sid)
        if n % 4 == 0:
            rid = f"r-{n}"
            text = "质量很好" if n == 4 else "great product"
            records.append(("reviews", key, orjson.dumps(
                {"event_id": rid, "user_id": user, "item_id": "item-1", "text": text,
                 "ts": now - 30 + n / 10, "rating": 5})))  # fmt: skip
            reviews.append(rid)
        if n in (3, 7, 9):  # malformed records between good ones
            malformed = {
                3: ("clicks", b"{not json"),
                7: ("searches", orjson.dumps({"event_id": "x", "user_id": "u", "ts": now})),
                9: ("reviews", orjson.dumps({"event_id": "x", "user_id": "u", "item_id": 5.5,
                                             "text": "t", "ts": now})),
            }[n]  # fmt: skip
            records.append((malformed[0], None, malformed[1]))
            bad.append(malformed)
    return records, {"recs": clicks + searches, "reviews": reviews, "bad": bad}


def _check_outputs(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    now = time.time()
    records, expected = _inputs(now)
    asyncio.run(produce(settings, records))
    wanted = {
        "recommendations": len(expected["recs"]),
        "sentiment": len(expected["reviews"]),
        "deadletter": len(expected["bad"]),
        "sessions": 5,  # one per user, closed by the idle sweep after gap + lateness (4 s)
    }
    got = asyncio.run(collect(settings, wanted, OUTPUT_TIMEOUT_S))
    assert worker.poll() is None, "worker died"
    recs = got["recommendations"]
    assert sorted(r["trigger_event_id"] for r in recs) == sorted(expected["recs"])
    for r in recs:
        assert set(r) == {"user_id", "session_id", "trigger_event_id", "items",
                          "model_version", "event_ts", "emitted_at", "fallback"}  # fmt: skip
        assert r["session_id"].startswith(r["user_id"] + ":")
        assert 1 <= len(r["items"]) <= 5 and set(r["items"][0]) == {"item_id", "score"}
        assert r["emitted_at"] >= r["event_ts"]
    sentiments = got["sentiment"]
    assert sorted(s["event_id"] for s in sentiments) == sorted(expected["reviews"])
    for s in sentiments:
        assert s["label"] in ("negative", "neutral", "positive")
        assert set(s["probs"]) == {"negative", "neutral", "positive"}
    dead = got["deadletter"]
    assert len(dead) == len(expected["bad"])
    reasons = sorted(d["error"].split(":")[0] for d in dead)
    assert reasons == ["bad_json", "missing_field", "wrong_type"]
    payloads = {base64.b64decode(d["payload"]) for d in dead}
    assert payloads == {value for _, value in expected["bad"]}
    # Every user's session was closed by the idle sweep, keyed and unkeyed events together.
    sessions = got["sessions"]
    per_user = {s["user_id"]: s for s in sessions}
    assert len(per_user) == 5 and len(sessions) == 5
    total = sum(sum(s["counts"].values()) for s in sessions)
    assert total == len(expected["recs"])


def test_worker_with_fake_scorers_end_to_end(
    e2e_settings: Settings, fake_worker: subprocess.Popen[bytes]
) -> None:
    _check_outputs(e2e_settings, fake_worker)


@pytest.fixture
def tiny_worker(
    e2e_settings: Settings, tiny_models: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``recstream worker`` with tiny models on fresh topics, ready."""
    asyncio.run(create_topics(e2e_settings, ALL_TOPICS))
    env = e2e_env(e2e_settings, tiny_models, tmp_path / "data")
    env["RECSTREAM_MODEL_PROCESSES"] = "true"  # also on a machine with one CPU (auto: off)
    log = tmp_path / "worker.log"
    proc = start_process(WORKER_COMMAND, env, log)
    try:
        wait_ready(proc, e2e_settings.web_port, log, 40)
        yield proc
    finally:
        stop_processes(proc)


def test_recstream_worker_with_tiny_models_end_to_end(
    e2e_settings: Settings, tiny_worker: subprocess.Popen[bytes]
) -> None:
    _check_outputs(e2e_settings, tiny_worker)


def _model_processes(worker: int) -> set[int]:
    """The pids of ``worker``'s model processes (children running ``model_process``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == worker and b"recstream.streams.model_process" in command:
            found.add(int(entry.name))
    return found


def _clicks(tag: str, now: float) -> list[tuple[str, bytes | None, bytes]]:
    return [
        ("clicks", f"user-{n % 4}".encode(), orjson.dumps(
            {"event_id": f"{tag}-{n}", "user_id": f"user-{n % 4}", "item_id": f"item-{n}",
             "action": "view", "ts": now + n / 100}))
        for n in range(12)
    ]  # fmt: skip


def test_a_killed_model_process_costs_no_recommendation(
    e2e_settings: Settings, tiny_worker: subprocess.Popen[bytes]
) -> None:
    """SIGKILL the worker's model processes: the next clicks are still answered by the
    model (no fallback), the worker keeps running and starts new model processes."""
    answered: list[dict[str, Any]] = []
    killed: set[int] = set()
    for round_, tag in enumerate(("before", "after", "again")):
        asyncio.run(produce(e2e_settings, _clicks(tag, time.time())))
        wanted = {"recommendations": 12 * (round_ + 1)}
        answered = asyncio.run(collect(e2e_settings, wanted, OUTPUT_TIMEOUT_S))["recommendations"]
        mine = [r for r in answered if r["trigger_event_id"].startswith(f"{tag}-")]
        assert len(mine) == 12
        assert not any(r["fallback"] for r in mine)
        children = _model_processes(tiny_worker.pid)
        if tag == "before":
            assert children, "no model process started"
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            killed = children
    assert children and not children & killed  # new ones answered the last clicks
    assert tiny_worker.poll() is None, "worker died"
    assert len({r["trigger_event_id"] for r in answered}) == 36
    url = f"http://127.0.0.1:{e2e_settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        failures = metric_samples(response.read())[
            ("recstream_model_process_failures_total", frozenset())
        ]
    # A process found dead before a batch is replaced without a failure; one that
    # died with a batch failed it (the batch then ran in the thread).
    assert failures <= len(killed)


def test_worker_refuses_to_start_without_models(e2e_settings: Settings, tmp_path: Path) -> None:
    env = e2e_env(e2e_settings, tmp_path / "missing", tmp_path / "data")
    done = subprocess.run(WORKER_COMMAND, env=env, cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"cannot load the models" in done.stderr
