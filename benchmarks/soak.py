"""Soak: feed a worker faster than it can score and watch its memory stay flat.

Starts a worker (fake scorers that sleep ``--scorer-ms`` per batch, so scoring is the
bottleneck, or ``--models DIR`` for ``recstream worker`` with real ONNX models), sends
clicks at ``--rate`` events per second for ``--minutes`` (or ``--seconds``), samples
the worker's resident memory (``VmRSS``) every ``--interval`` seconds, and reports
the first, peak and last RSS, events produced and recommendations seen. Flat memory
while the backlog grows means the worker slows its consumption (bounded input feeds of
fetched batches, at most ``RECSTREAM_SCORING_THREADS`` + 1 batches per agent in flight,
awaited sends) instead of buffering without bound.

    .venv/bin/python benchmarks/soak.py --minutes 10            # embedded noida broker
    .venv/bin/python benchmarks/soak.py --seconds 60 --bootstrap 127.0.0.1:9092

Writes ``benchmarks/results/soak.json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recstream.streams.broker import EmbeddedBroker, free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: Events per batch of the soaked worker: with the fake scorer's delay it sets the
#: worker's capacity (256 / 0.25 s = 1,024 events/s by default, below the offered load).
SOAK_BATCH_SIZE = 256
#: The worker with fake scorers that take ``SOAK_SCORER_MS`` per batch, one batch at a
#: time however many scoring threads call them (a saturated model's capacity does not
#: grow with threads; a plain sleep would).
SLOW_FAKE_WORKER = """
import os, sys, threading, time
from recstream.streams import scoring, worker

delay = float(os.environ["SOAK_SCORER_MS"]) / 1000.0
recs = scoring.FakeRecsScorer([f"item-{i}" for i in range(40)])
plain = recs.recommend
busy = threading.Lock()

def slow_recommend(histories, exclude, k):
    with busy:
        time.sleep(delay)
    return plain(histories, exclude, k)

recs.recommend = slow_recommend
scoring.load_scorers = lambda settings: (recs, scoring.FakeSentimentScorer())
sys.exit(worker.serve(worker.get_settings()))
"""


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc, or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def worker_env(
    settings: Settings, data_dir: Path, models: Path | None, scorer_ms: float
) -> dict[str, str]:
    env = {**os.environ, **settings.connection_env()}
    env.update(
        RECSTREAM_DATA_DIR=str(data_dir),
        RECSTREAM_MODEL_DIR=str(models or data_dir / "no-models"),
        RECSTREAM_PROVIDERS="CPUExecutionProvider",
        RECSTREAM_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1",
        SOAK_SCORER_MS=str(scorer_ms),
        # Fixed here, so the worker's capacity (batch size / delay) does not follow the default.
        RECSTREAM_BATCH_SIZE=str(SOAK_BATCH_SIZE),
    )
    return env


async def produce(settings: Settings, rate: float, seconds: float, users: int) -> int:
    """Send clicks at ``rate`` per second for ``seconds``; returns how many were sent."""
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings), linger_ms=5)
    await producer.start()
    run = uuid.uuid4().hex[:6]
    sent = 0
    try:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                user = f"u{sent % users}"
                obj = {
                    "event_id": f"{run}-{sent}",
                    "user_id": user,
                    "item_id": f"item-{sent % 40}",
                    "action": "view",
                    "ts": time.time(),
                }
                await producer.send(settings.topic("clicks"), orjson.dumps(obj), user.encode())
                sent += 1
            await asyncio.sleep(0.02)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def count_outputs(settings: Settings, seconds: float) -> int:
    """Recommendations on the output topic, read for up to ``seconds``."""
    consumer = AIOKafkaConsumer(
        settings.topic("recommendations"), auto_offset_reset="earliest",
        enable_auto_commit=False, **aiokafka_kwargs(settings),
    )  # fmt: skip
    seen = 0
    await consumer.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=10_000)
            got = sum(len(messages) for messages in batches.values())
            if not got and seen:
                break
            seen += got
    finally:
        await consumer.stop()
    return seen


async def sample_rss(
    pid: int, interval: float, samples: list[tuple[float, int]], stop: asyncio.Event
) -> None:
    """Append (seconds, RSS bytes) every ``interval`` until ``stop`` or the worker exits."""
    start = time.monotonic()
    while not stop.is_set():
        rss = rss_bytes(pid)
        if rss is None:
            return
        samples.append((round(time.monotonic() - start, 1), rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker not ready after {timeout}s")


def soak(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    """Run one soak against ``bootstrap``; returns the measured figures."""
    prefix = f"soak{uuid.uuid4().hex[:6]}."
    settings = Settings(
        bootstrap_servers=bootstrap, topic_prefix=prefix, app_id=f"recstream-{prefix[:-1]}",
        partitions=args.partitions, web_port=free_port(),
    )  # fmt: skip
    asyncio.run(create_topics(settings, ALL_TOPICS))
    env = worker_env(settings, work / "data", args.models, args.scorer_ms)
    command = (
        [sys.executable, "-m", "recstream", "worker"] if args.models
        else [sys.executable, "-c", SLOW_FAKE_WORKER]
    )  # fmt: skip
    log = (work / "worker.log").open("wb")
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = args.seconds if args.seconds else args.minutes * 60.0
    samples: list[tuple[float, int]] = []
    try:
        wait_ready(proc, settings.web_port, 90)

        async def run() -> int:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(proc.pid, args.interval, samples, stop))
            sent = await produce(settings, args.rate, seconds, args.users)
            stop.set()
            await sampler
            return sent

        sent = asyncio.run(run())
        alive = proc.poll() is None
        outputs = asyncio.run(count_outputs(settings, 10.0))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    rss = [value for _, value in samples]
    mib = 1024 * 1024
    return {
        "seconds": seconds,
        "rate": args.rate,
        "scorer_ms_per_batch": args.scorer_ms,
        "partitions": args.partitions,
        "events_produced": sent,
        "recommendations_seen_at_end": outputs,
        "backlog_at_end": sent - outputs,
        "worker_alive_at_end": alive,
        "rss_first_mib": round(rss[0] / mib, 1) if rss else None,
        "rss_peak_mib": round(max(rss) / mib, 1) if rss else None,
        "rss_last_mib": round(rss[-1] / mib, 1) if rss else None,
        "rss_growth_mib": round((max(rss) - rss[0]) / mib, 1) if rss else None,
        "samples": [(t, round(v / mib, 1)) for t, v in samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=0.0, help="overrides --minutes")
    parser.add_argument("--rate", type=float, default=1500.0, help="clicks per second")
    parser.add_argument(
        "--scorer-ms",
        type=float,
        default=250.0,
        help="fake scorer delay per batch: the worker answers at most "
        f"{SOAK_BATCH_SIZE} events per batch / delay events/s (1,024 by default)",
    )
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--interval", type=float, default=3.0, help="RSS sample period (s)")
    parser.add_argument("--models", type=Path, default=None, help="real ONNX models folder")
    parser.add_argument("--bootstrap", default=None, help="existing Kafka (default: noida)")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recstream-soak-") as tmp:
        work = Path(tmp)
        if args.bootstrap:
            result = soak(args, args.bootstrap, work)
        else:
            broker = EmbeddedBroker(kind="noida", data_dir=work / "broker")
            broker.start()
            try:
                result = soak(args, broker.bootstrap_servers, work)
            finally:
                broker.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    rows = [
        ("duration (s)", result["seconds"]),
        ("offered rate (events/s)", result["rate"]),
        ("events produced", result["events_produced"]),
        ("recommendations seen", result["recommendations_seen_at_end"]),
        ("backlog at end (events)", result["backlog_at_end"]),
        ("worker alive", result["worker_alive_at_end"]),
        ("RSS first (MiB)", result["rss_first_mib"]),
        ("RSS peak (MiB)", result["rss_peak_mib"]),
        ("RSS last (MiB)", result["rss_last_mib"]),
        ("RSS growth first->peak (MiB)", result["rss_growth_mib"]),
    ]
    for name, value in rows:
        print(f"{name:<30} {value}")
    print(f"wrote {args.json}")
    return 0 if result["worker_alive_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
