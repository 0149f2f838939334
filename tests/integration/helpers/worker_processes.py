"""Worker subprocesses for the integration tests: environment, start, readiness and stop,
and the records produced to and read back from them.

Not a test file: the tests import it as ``worker_processes`` (pytest's ``pythonpath``
and mypy's ``mypy_path`` in pyproject.toml name this folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings

REPO = Path(__file__).resolve().parents[3]
#: Seconds the outputs may take to appear once the worker is ready.
OUTPUT_TIMEOUT_S = 45.0
#: Seconds a ``recstream worker`` with tiny models may take to serve requests.
START_TIMEOUT_S = 120.0

#: A test-only worker: ``serve()`` with the export helper's fake scorers (never used
#: outside the tests).
FAKE_WORKER = """
import sys
from recstream.streams import scoring, worker

catalogue = [f"item-{i}" for i in range(40)]
fakes = (scoring.FakeRecsScorer(catalogue), scoring.FakeSentimentScorer())
scoring.load_scorers = lambda settings: fakes
sys.exit(worker.serve(worker.get_settings()))
"""
#: The command line of the fake-scorer worker.
FAKE_WORKER_COMMAND = (sys.executable, "-c", FAKE_WORKER)
#: The command line of the real worker (models from RECSTREAM_MODEL_DIR).
WORKER_COMMAND = (sys.executable, "-m", "recstream", "worker")

#: An input record: (topic kind, key, value).
Record = tuple[str, bytes | None, bytes]


@dataclass
class Worker:
    """A started worker process, its web port and its log file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """The end of the worker's log."""
        return self.log.read_text(errors="replace")[-4000:]


def worker_settings(kafka_bootstrap: str) -> Settings:
    """Settings on the test broker with fresh topics and group, and two partitions."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=prefix,
        app_id=f"recstream-{prefix.rstrip('.')}",
        partitions=2,
    )


def worker_env(
    settings: Settings, model_dir: Path, data_dir: Path, *, inherit: bool = True, **extra: str
) -> dict[str, str]:
    """A worker's environment: this process's (without its ``RECSTREAM_*`` variables
    unless ``inherit``), the broker, topics, group, partitions and web port of
    ``settings``, the model and state folders, a 50 ms batch window and one OpenMP
    thread; then ``extra``."""
    env = {k: v for k, v in os.environ.items() if inherit or not k.startswith("RECSTREAM_")}
    env.update(settings.connection_env())
    env.update(
        RECSTREAM_MODEL_DIR=str(model_dir),
        RECSTREAM_DATA_DIR=str(data_dir),
        RECSTREAM_BATCH_WITHIN="0.05",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def e2e_env(settings: Settings, model_dir: Path, data_dir: Path) -> dict[str, str]:
    """:func:`worker_env` with quick sessions (2 s gap and lateness), top 5, CPU scoring
    and ``E2E_LOG_LEVEL`` (default ``warning``) logs."""
    return worker_env(
        settings,
        model_dir,
        data_dir,
        RECSTREAM_SESSION_GAP="2",
        RECSTREAM_ALLOWED_LATENESS="2",
        RECSTREAM_TOP_K="5",
        RECSTREAM_LOG_LEVEL=os.environ.get("E2E_LOG_LEVEL", "warning"),
        RECSTREAM_PROVIDERS="CPUExecutionProvider",
    )


def start_process(
    command: Sequence[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository with its output going to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def start_worker(
    settings: Settings, models: Path, folder: Path, catalog_log: Path | None = None
) -> Worker:
    """Start ``recstream worker`` on a free web port, state and log in ``folder``, without
    this process's ``RECSTREAM_*`` variables (not waiting for it)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = worker_env(
        settings,
        models,
        folder / "state",
        inherit=False,
        RECSTREAM_WEB_PORT=str(port),
        RECSTREAM_PROVIDERS="CPUExecutionProvider",
    )
    if catalog_log is not None:
        env["RECSTREAM_CATALOG_PATH"] = str(catalog_log)
    log = folder / "worker.log"
    return Worker(start_process(WORKER_COMMAND, env, log), port, log)


def stop_processes(*processes: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Terminate the running processes, then kill any not gone after ``timeout`` seconds."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(
    what: str,
    check: Callable[[], bool],
    workers: Sequence[Worker],
    timeout: float = START_TIMEOUT_S,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until true (an OSError counts as not yet); fail with the workers'
    logs when one exits or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"worker exited ({worker.process.returncode}):\n{worker.output()}")
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(interval)
    logs = "\n---\n".join(w.output() for w in workers)
    pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{logs}")


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Wait until the worker's /readyz answers 200."""

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)

    wait_for("the worker to be ready", ready, [Worker(process, port, log)], timeout)


def http(
    url: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a GET, or of a POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


async def produce(settings: Settings, records: Sequence[Record]) -> None:
    """Send ``records`` to their input topics and wait until all are written."""
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        for kind, key, value in records:
            await producer.send(settings.topic(kind), value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


Outputs = dict[str, list[dict[str, Any]]]


async def read_outputs(
    settings: Settings,
    names: Sequence[str],
    done: Callable[[Outputs], bool],
    timeout: float,
    linger: float = 0.0,
    isolation_level: str = "read_uncommitted",
) -> Outputs:
    """Every JSON record of the output topics ``names`` from the start, read until
    ``done`` holds (then ``linger`` seconds more, for stragglers) or the timeout.
    ``isolation_level="read_committed"`` reads only committed transactions' records."""
    topics = {settings.topic(name): name for name in names}
    consumer = AIOKafkaConsumer(
        *topics, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level=isolation_level, **aiokafka_kwargs(settings),
    )  # fmt: skip
    got: Outputs = {name: [] for name in names}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        finished_at: float | None = None
        while time.monotonic() < deadline:
            if finished_at is None and done(got):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() >= finished_at + linger:
                break
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                got[topics[tp.topic]] += [orjson.loads(m.value) for m in messages]
    finally:
        await consumer.stop()
    return got


async def collect(settings: Settings, wanted: dict[str, int], timeout: float) -> Outputs:
    """Records of each output topic, read until ``wanted[name]`` of each are seen."""

    def enough(got: Outputs) -> bool:
        return all(len(got[name]) >= n for name, n in wanted.items())

    return await read_outputs(settings, tuple(wanted), enough, timeout)


def metric_samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A worker's /metrics text as (sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
