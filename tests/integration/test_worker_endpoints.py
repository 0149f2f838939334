"""/healthz, /readyz and /metrics of a real ``recstream worker`` on the embedded broker.

The worker runs as a subprocess with tiny exported ONNX models, its web server on the
default host (which must be loopback) and a free port.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from worker_processes import (
    WORKER_COMMAND,
    Worker,
    metric_samples,
    start_process,
    stop_processes,
    wait_for,
    worker_env,
    worker_settings,
)

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

START_TIMEOUT_S = 90.0


@dataclass
class WatchedWorker(Worker):
    """A worker, its settings, and what its /readyz said while it was starting."""

    settings: Settings
    #: (status, body) of every /readyz answer seen until the worker was ready
    readyz_history: list[tuple[int, dict[str, object]]] = field(default_factory=list)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_ready(worker: WatchedWorker) -> None:
    """Poll /readyz from the moment the process starts, keeping every answer."""

    def ready() -> bool:
        status, body = http_get(f"{worker.url}/readyz")
        worker.readyz_history.append((status, json.loads(body)))
        return status == 200

    wait_for("/readyz to answer 200", ready, [worker], START_TIMEOUT_S, interval=0.05)


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WatchedWorker]:
    """One worker for the whole module (starting one takes seconds), on its own topics."""
    settings = worker_settings(kafka_bootstrap)
    tmp_path = tmp_path_factory.mktemp("worker")
    asyncio.run(create_topics(settings, ALL_TOPICS))
    port = free_port()
    env = worker_env(
        settings,
        tiny_models,
        tmp_path / "state",
        inherit=False,
        RECSTREAM_WEB_PORT=str(port),  # RECSTREAM_WEB_HOST deliberately left at its default
        RECSTREAM_LOG_LEVEL="warning",
        RECSTREAM_PROVIDERS="CPUExecutionProvider",  # the same answer on a GPU machine
    )
    log = tmp_path / "worker.log"
    handle = WatchedWorker(start_process(WORKER_COMMAND, env, log), port, log, settings)
    try:
        wait_until_ready(handle)
        yield handle
    finally:
        stop_processes(handle.process, timeout=20)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (Linux /proc)."""
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, _remote, state = line.split()[1:4]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if width == 8:
                    addresses.add(".".join(str(b) for b in bytes.fromhex(address)[::-1]))
                else:
                    addresses.add(address)
    return addresses


def test_readyz_goes_from_503_to_200(worker: WatchedWorker) -> None:
    statuses = [status for status, _ in worker.readyz_history]
    assert statuses[-1] == 200
    assert worker.readyz_history[-1][1] == {"ready": True, "reason": "ok"}
    assert 503 in statuses, f"never saw the not-ready state: {worker.readyz_history}"
    not_ready = [body for status, body in worker.readyz_history if status == 503]
    assert all(body["ready"] is False and body["reason"] for body in not_ready)
    assert statuses.index(200) > statuses.index(503)


def test_healthz(worker: WatchedWorker) -> None:
    status, body = http_get(f"{worker.url}/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_web_server_binds_loopback_by_default(worker: WatchedWorker) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to read listening sockets")
    assert listening_addresses(worker.port) == {"127.0.0.1"}


async def produce_clicks(settings: Settings, n: int) -> None:
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        now = time.time()
        for i in range(n):
            user = f"user-{i % 3}"
            event = {"event_id": f"e-{uuid.uuid4().hex}", "user_id": user,
                     "item_id": f"item-{i % 5}", "action": "view", "ts": now - n + i}  # fmt: skip
            await producer.send(settings.topic("clicks"), orjson.dumps(event), key=user.encode())
        await producer.send(settings.topic("clicks"), b"{not json", key=b"user-0")
        await producer.flush()
    finally:
        await producer.stop()


def test_metrics_count_real_traffic(worker: WatchedWorker) -> None:
    asyncio.run(produce_clicks(worker.settings, 6))
    clicks_in = ("recstream_events_in_total", frozenset({("topic", "clicks")}))
    recs_out = ("recstream_events_out_total", frozenset({("topic", "recommendations")}))
    bad_json = ("recstream_deadletters_total", frozenset({("reason", "bad_json")}))
    deadline = time.monotonic() + 60
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    while time.monotonic() < deadline:
        status, body = http_get(f"{worker.url}/metrics")
        assert status == 200
        samples = metric_samples(body)
        if samples[clicks_in] >= 7 and samples[recs_out] >= 6 and samples[bad_json] >= 1:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"metrics did not reach the traffic: {samples}\n{worker.output()}")
    assert samples[clicks_in] == 7
    assert samples[bad_json] == 1
    assert samples[("recstream_end_to_end_latency_seconds_count", frozenset())] >= 6
    models = {dict(labels)["kind"]: dict(labels) for (name, labels), value in samples.items()
              if name == "recstream_model_info" and value == 1}  # fmt: skip
    assert set(models) == {"recs", "sentiment"}
    assert models["recs"]["provider"] == "CPUExecutionProvider"
    lag = [labels for name, labels in samples if name == "recstream_consumer_lag"]
    assert any(("topic", "clicks") in labels for labels in lag)
