"""Run the whole product end to end on an embedded broker and print what it does.

Steps: start a local broker (or use ``RECSTREAM_BOOTSTRAP_SERVERS``), create the
topics, generate a shop log, train and export small models when ``models/`` has
none, start a worker, replay the log, print a sample of the recommendation and
sentiment events with a summary, and stop everything it started.

Training, export, the worker and the replay run as the same ``recstream``
commands a user would type, in child processes; this module stays torch-free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from recstream.model import shoplog
from recstream.streams.broker import EmbeddedBroker, free_port
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.records import parse_ts
from recstream.streams.settings import Settings
from recstream.streams.storefront import storefront_url
from recstream.streams.topic_admin import create_topics

INPUTS = ("clicks", "searches", "reviews")
OUTPUTS = ("recommendations", "sentiment", "deadletter", "sessions")
#: Wall-clock skew between input topics that a sped-up replay tolerates.
SKEW_SECONDS = 10.0


def say(message: str) -> None:
    """Tell the person watching what is happening."""
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=300, help="shoppers in the shop log")
    parser.add_argument("--items", type=int, default=300, help="catalog size")
    parser.add_argument("--days", type=float, default=4.0, help="days of shop activity")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the shop log")
    parser.add_argument("--broker", choices=("noida", "tansu"), default="noida")
    parser.add_argument("--work-dir", default="runs/demo", help="shop log and checkpoints")
    parser.add_argument("--retrain", action="store_true", help="train even if models exist")
    parser.add_argument(
        "--replay-seconds", type=float, default=30.0, help="wall time the replay is paced over"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for outputs")
    parser.add_argument(
        "--web", action="store_true", help="then keep the worker serving the storefront page"
    )


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        return asyncio.run(_demo(args, settings))
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


# ----------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------


def _recstream(*args: str) -> list[str]:
    return [sys.executable, "-u", "-m", "recstream", *args]


def _run_step(what: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run one ``recstream`` command, its output going to ``log``; fail with the log's tail."""
    say(f"{what}: recstream {' '.join(command[4:])}")
    started = time.monotonic()
    with open(log, "wb") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise DemoError(f"{what} failed (exit {done.returncode}); end of {log}:\n{tail}")
    say(f"{what}: done in {time.monotonic() - started:.0f} s (log: {log})")


def _ensure_models(args: argparse.Namespace, log: Path, model_dir: Path, work: Path) -> None:
    if not args.retrain and all((model_dir / f).is_file() for f in ("recs.onnx", "sentiment.onnx")):
        say(f"using the models in {model_dir}/ (--retrain to train new ones)")
        return
    recs, sentiment = work / "recs", work / "sentiment"
    reviews = work / "reviews.jsonl"
    count = shoplog.write_log(reviews, _rated_reviews(args.seed))
    say(f"generated {count} rated reviews (English and Chinese) to train the sentiment model")
    _run_step(
        "training the recommender",
        _recstream("train", "recs", "--data", str(log), "--format", "jsonl", "--out", str(recs),
                   "--epochs", "8", "--max-len", "30", "--seed", str(args.seed), "--quiet"),
        work / "train-recs.log",
    )  # fmt: skip
    _run_step(
        "training the sentiment model",
        _recstream("train", "sentiment", "--data", str(reviews), "--format", "jsonl",
                   "--out", str(sentiment), "--epochs", "4", "--seed", str(args.seed),
                   "--quiet"),
        work / "train-sentiment.log",
    )  # fmt: skip
    _run_step(
        "exporting both to ONNX",
        _recstream("export", "--recs", str(recs), "--sentiment", str(sentiment),
                   "--out", str(model_dir)),
        work / "export.log",
    )  # fmt: skip


def _rated_reviews(seed: int) -> Iterator[dict[str, Any]]:
    """Reviews with stars from a larger generated shop: the sentiment model's training set."""
    for event in shoplog.generate(users=4000, items=300, days=14, seed=seed + 1):
        if "text" in event and "rating" in event:
            yield event


@contextmanager
def _worker(env: dict[str, str], web_port: int, log_path: Path) -> Iterator[None]:
    """A ``recstream worker`` child process, ready when its /readyz answers 200."""
    say(f"starting a worker (log: {log_path})")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_recstream("worker"), env=env, stdout=log, stderr=log)
    try:
        _wait_ready(process, web_port, log_path)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        say("worker stopped")


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}/readyz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise DemoError(f"the worker exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    say("worker is ready (partitions assigned, models loaded)")
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise DemoError("the worker did not become ready within 120 s")


@dataclass
class Observed:
    """What the demo saw on the topics."""

    input_times: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, list[tuple[int, dict[str, Any]]]] = field(
        default_factory=lambda: {name: [] for name in OUTPUTS}
    )

    def answered(self) -> int:
        return len(self.outputs["recommendations"]) + len(self.outputs["sentiment"])


async def _watch(settings: Settings, seen: Observed, stop: asyncio.Event) -> None:
    """Consume inputs (for their produce times) and outputs until ``stop`` is set."""
    topics = {settings.topic(name): name for name in (*INPUTS, *OUTPUTS)}
    consumer = AIOKafkaConsumer(
        *topics, auto_offset_reset="earliest", enable_auto_commit=False, **aiokafka_kwargs(settings)
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for part, messages in batches.items():
                kind = topics[part.topic]
                for message in messages:
                    try:
                        obj = orjson.loads(message.value or b"")
                    except orjson.JSONDecodeError:
                        continue
                    if kind in INPUTS:
                        seen.input_times[str(obj.get("event_id"))] = message.timestamp
                        seen.inputs[str(obj.get("event_id"))] = obj
                    else:
                        seen.outputs[kind].append((message.timestamp, obj))
    finally:
        await consumer.stop()


def _replay(log: Path, env: dict[str, str], speed: float) -> None:
    _run_step(
        "replaying the shop log into Kafka",
        _recstream("replay", str(log), "--format", "jsonl", "--speed", f"{speed:g}",
                   "--no-progress"),
        log.parent / "replay.log",
        env,
    )  # fmt: skip


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = settings.model_dir
    with ExitStack() as stack:
        if "RECSTREAM_BOOTSTRAP_SERVERS" in os.environ:
            say(f"using the Kafka cluster at {settings.bootstrap_servers}")
        else:
            say(f"starting an embedded {args.broker} broker on 127.0.0.1")
            broker = stack.enter_context(EmbeddedBroker(args.broker))
            settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
            say(f"broker ready at {broker.bootstrap_servers}")
        created = await create_topics(settings)
        say(f"topics created: {', '.join(created) or 'all existed already'}")

        log = work / "shop.jsonl"
        count = shoplog.write_log(
            log,
            shoplog.generate(users=args.users, items=args.items, days=args.days, seed=args.seed),
        )
        say(f"generated a shop log of {count} events ({args.users} shoppers) at {log}")
        _ensure_models(args, log, model_dir, work)

        web_port = free_port()
        # The replay compresses days into seconds, and each input topic is consumed on its
        # own, so a few seconds of skew between topics span hours of event time: the worker
        # tolerates SKEW_SECONDS of wall-clock skew at this speed before calling events late.
        speed = max(_log_span_seconds(log) / max(args.replay_seconds, 1.0), 1.0)
        lateness = max(settings.allowed_lateness, SKEW_SECONDS * speed)
        say(f"replay speed {speed:.0f}x, so allowed lateness {lateness:.0f} s of event time")
        state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="recstream-demo-"))
        env = {
            **os.environ,
            "RECSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "RECSTREAM_WEB_PORT": str(web_port),
            "RECSTREAM_DATA_DIR": state_dir,
            "RECSTREAM_MODEL_DIR": str(model_dir),
            "RECSTREAM_LOG_LEVEL": "warning",
            "RECSTREAM_ALLOWED_LATENESS": f"{lateness:.0f}",
            "RECSTREAM_CATALOG_PATH": str(log),
        }
        seen = Observed()
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(settings, seen, stop))
        with _worker(env, web_port, work / "worker.log"):
            await asyncio.to_thread(_replay, log, env, speed)
            expected = _expected_answers(log)
            say(f"waiting for {expected} recommendation and sentiment events")
            deadline = time.monotonic() + args.timeout
            while seen.answered() < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            stop.set()
            await watcher
            _report(seen, expected)
            if args.web:
                page = storefront_url(settings.model_copy(update={"web_port": web_port}))
                say(f"storefront page: {page}  (Ctrl-C stops the worker and the broker)")
                await _until_interrupted()
        if seen.answered() < expected:
            raise DemoError(f"only {seen.answered()} of {expected} answers arrived in time")
    return 0


async def _until_interrupted() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()


def _log_span_seconds(log: Path) -> float:
    """Seconds of event time the log covers (paces the replay)."""
    times = []
    with open(log, "rb") as handle:
        for line in handle:
            times.append(parse_ts(orjson.loads(line)["ts"], max_future_s=float("inf")))
    return max(times) - min(times) if times else 0.0


def _expected_answers(log: Path) -> int:
    with open(log, "rb") as handle:
        return sum(1 for line in handle if line.strip())


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _report(seen: Observed, expected: int) -> None:
    recs = seen.outputs["recommendations"]
    sentiments = seen.outputs["sentiment"]
    print("\n=== A few recommendations ===")
    for _, rec in recs[-5:]:
        trigger = seen.inputs.get(rec["trigger_event_id"], {})
        what = trigger.get("query") or f"{trigger.get('action')} {trigger.get('item_id')}"
        items = ", ".join(f"{i['item_id']} ({i['score']:.2f})" for i in rec["items"][:5])
        tag = " [popular fallback]" if rec.get("fallback") else ""
        print(f"user {rec['user_id']} after {what!r}:{tag}\n    -> {items}")
    print("\n=== A few review sentiments ===")
    for _, sent in sentiments[-6:]:
        text = str(seen.inputs.get(sent["event_id"], {}).get("text", ""))[:70]
        probs = " ".join(f"{k}={v:.2f}" for k, v in sent["probs"].items())
        print(f"{sent['label']:>8}  ({probs})  {text!r}")
    latencies = [
        float(out_ts - seen.input_times[key])
        for out_ts, out in recs + sentiments
        if (key := out.get("trigger_event_id") or out.get("event_id")) in seen.input_times
    ]
    dead = seen.outputs["deadletter"]
    print("\n=== Summary ===")
    print(f"events in:             {len(seen.input_times)}")
    print(f"recommendations out:   {len(recs)}")
    print(f"sentiment events out:  {len(sentiments)}")
    print(f"closed sessions out:   {len(seen.outputs['sessions'])}")
    reasons = Counter(str(d.get("error", "")).split(":", 1)[0] for _, d in dead)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    print(f"dead letters:          {len(dead)}{f' ({by_reason})' if dead else ''}")
    print(f"answered / expected:   {len(recs) + len(sentiments)} / {expected}")
    print(
        "end-to-end latency (input produced -> output produced): "
        f"p50 {_percentile(latencies, 0.5):.0f} ms, p99 {_percentile(latencies, 0.99):.0f} ms"
    )
