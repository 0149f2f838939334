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
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

REPO = Path(__file__).resolve().parents[2]
#: Seconds the outputs may take to appear once the worker is ready.
OUTPUT_TIMEOUT_S = 45.0

#: A test-only worker: ``serve()`` with the export helper's fake scorers (never used
#: outside this test).
FAKE_WORKER = """
import sys
from recstream.streams import scoring, worker

catalogue = [f"item-{i}" for i in range(40)]
fakes = (scoring.FakeRecsScorer(catalogue), scoring.FakeSentimentScorer())
scoring.load_scorers = lambda settings: fakes
sys.exit(worker.serve(worker.get_settings()))
"""


def _env(settings: Settings, model_dir: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RECSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        RECSTREAM_TOPIC_PREFIX=settings.topic_prefix,
        RECSTREAM_APP_ID=settings.app_id,
        RECSTREAM_PARTITIONS=str(settings.partitions),
        RECSTREAM_WEB_PORT=str(settings.web_port),
        RECSTREAM_MODEL_DIR=str(model_dir),
        RECSTREAM_DATA_DIR=str(data_dir),
        RECSTREAM_BATCH_WITHIN="0.05",
        RECSTREAM_SESSION_GAP="2",
        RECSTREAM_ALLOWED_LATENESS="2",
        RECSTREAM_TOP_K="5",
        RECSTREAM_LOG_LEVEL=os.environ.get("E2E_LOG_LEVEL", "warning"),
        RECSTREAM_PROVIDERS="CPUExecutionProvider",
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture
def e2e_settings(kafka_settings: Settings) -> Settings:
    return kafka_settings.model_copy(update={"web_port": free_port()})


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"worker not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def fake_worker(e2e_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    asyncio.run(create_topics(e2e_settings, ALL_TOPICS))
    env = _env(e2e_settings, tmp_path / "no-models", tmp_path / "data")
    log = tmp_path / "worker.log"
    proc = _start([sys.executable, "-c", FAKE_WORKER], env, log)
    try:
        _wait_ready(proc, e2e_settings.web_port, log, 40)
        yield proc
    finally:
        _stop(proc)


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


async def _produce(settings: Settings, records: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        for kind, key, value in records:
            await producer.send(settings.topic(kind), value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _collect(
    settings: Settings, wanted: dict[str, int], timeout: float
) -> dict[str, list[dict[str, Any]]]:
    topics = {settings.topic(name): name for name in wanted}
    consumer = AIOKafkaConsumer(
        *topics, auto_offset_reset="earliest", enable_auto_commit=False,
        **aiokafka_kwargs(settings),
    )  # fmt: skip
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(len(got[name]) < n for name, n in wanted.items()):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                got[topics[tp.topic]] += [orjson.loads(m.value) for m in messages]
    finally:
        await consumer.stop()
    return got


def _check_outputs(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    now = time.time()
    records, expected = _inputs(now)
    asyncio.run(_produce(settings, records))
    wanted = {
        "recommendations": len(expected["recs"]),
        "sentiment": len(expected["reviews"]),
        "deadletter": len(expected["bad"]),
        "sessions": 5,  # one per user, closed by the idle sweep after gap + lateness (4 s)
    }
    got = asyncio.run(_collect(settings, wanted, OUTPUT_TIMEOUT_S))
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


def test_recstream_worker_with_tiny_models_end_to_end(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    from recstream.export.tiny import build_tiny_models

    models = tmp_path / "models"
    build_tiny_models(models)
    asyncio.run(create_topics(e2e_settings, ALL_TOPICS))
    env = _env(e2e_settings, models, tmp_path / "data")
    log = tmp_path / "worker.log"
    proc = _start([sys.executable, "-m", "recstream", "worker"], env, log)
    try:
        _wait_ready(proc, e2e_settings.web_port, log, 40)
        _check_outputs(e2e_settings, proc)
    finally:
        _stop(proc)


def test_worker_refuses_to_start_without_models(e2e_settings: Settings, tmp_path: Path) -> None:
    env = _env(e2e_settings, tmp_path / "missing", tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "recstream", "worker"],
        env=env, cwd=REPO, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"cannot load the models" in done.stderr
