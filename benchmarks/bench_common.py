"""Shared helpers of the pipeline benchmarks: topics, backlogs, output counting, CPU, stats.

The benchmark scripts run as ``python benchmarks/<script>.py``, so they import this
module by its bare name.  Everything here talks only to 127.0.0.1 brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams.input_batches import pace_empty_fetches
from recstream.streams.pipeline import RawRecord, partition_for_key

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable

#: Seconds an output watcher waits after an empty fetch (``pace_empty_fetches``).
WATCH_EMPTY_FETCH_PAUSE = 0.005
ACTION_WEIGHTS = (("view", 0.90), ("add_to_cart", 0.07), ("purchase", 0.03))


# ----------------------------------------------------------------------------
# Backlog: the click events every scenario consumes
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Pre-encoded click events (key, value) and where they came from."""

    records: list[tuple[bytes, bytes]]
    source: str
    users: int

    def __len__(self) -> int:
        return len(self.records)


def synthetic_clicks(n: int, users: int, items: int, seed: int = 7) -> Backlog:
    """``n`` click JSONs keyed by ``users`` users, Zipf-like items, timestamps in the recent past.

    Each user's timestamps increase, spaced 0.05 s apart overall, ending just before now,
    so every event passes recstream's lateness and future-skew checks.
    """
    rng = random.Random(seed)
    actions = [a for a, _ in ACTION_WEIGHTS]
    weights = [w for _, w in ACTION_WEIGHTS]
    start = time.time() - n * 0.05 - 60.0
    item_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(items)]
    picked_items = rng.choices(range(items), weights=item_weights, k=n)
    picked_actions = rng.choices(actions, weights=weights, k=n)
    records = []
    for i in range(n):
        user = f"u{rng.randrange(users)}"
        event = {
            "event_id": f"e{i}",
            "user_id": user,
            "item_id": f"p{picked_items[i]}",
            "action": picked_actions[i],
            "ts": round(start + i * 0.05, 3),
        }
        records.append((user.encode(), orjson.dumps(event)))
    return Backlog(records, f"synthetic ({users} users, {items} items, seed {seed})", users)


def shoplog_clicks(n: int, users: int, items: int, seed: int = 7) -> Backlog | None:
    """The first ``n`` clicks of recstream's built-in shop log, or None when it is missing.

    Searches and reviews are left out: the benchmark topic is ``clicks``.
    """
    try:
        from recstream.model.shoplog import generate
    except ImportError:
        return None
    records = []
    seen: set[str] = set()
    days = max(2, math.ceil(2 * n / users))  # the log has more than one click per user-day
    for obj in generate(users, items, days, seed):
        if "action" not in obj:
            continue
        user = str(obj["user_id"])
        seen.add(user)
        records.append((user.encode(), orjson.dumps(obj)))
        if len(records) >= n:
            break
    if len(records) < n:
        return None
    source = f"recstream.model.shoplog ({len(seen)} users, {items} items, seed {seed})"
    return Backlog(records, source, len(seen))


def click_records(keyed: Iterable[tuple[bytes, bytes]], partitions: int) -> list[RawRecord]:
    """Keyed click JSONs as a worker fetches them from the clicks topic: each on the
    partition its key hashes to, with offsets counted per partition."""
    next_offsets = [0] * partitions
    records = []
    for key, value in keyed:
        partition = partition_for_key(key, partitions)
        offset, next_offsets[partition] = next_offsets[partition], next_offsets[partition] + 1
        records.append(RawRecord("clicks", "clicks", partition, offset, value, key))
    return records


def make_backlog(n: int, users: int, items: int = 50_000, seed: int = 7) -> Backlog:
    """The shop log when it can produce ``n`` clicks, else the synthetic generator."""
    return shoplog_clicks(n, users, items, seed) or synthetic_clicks(n, users, items, seed)


# ----------------------------------------------------------------------------
# Kafka plumbing
# ----------------------------------------------------------------------------


#: Set explicitly because Quix Streams reads them back and fails when a broker omits them.
TOPIC_CONFIGS = {"retention.ms": "604800000", "retention.bytes": "-1"}


async def delete_run_topics(bootstrap: str, run: str) -> None:
    """Delete the topics a finished run left on the broker (every name containing ``run``).

    An embedded broker keeps them otherwise, and noida's cost per fetch grows with what it
    holds (measured: its CPU during the full pipeline 27-34 % of a core run alone, ~60 %
    after the suite's other scenarios), which would charge a scenario for the ones before.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if run in name]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create topics (replication 1); existing ones are left as they are."""
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        new = [NewTopic(name, partitions, 1, topic_configs=dict(TOPIC_CONFIGS)) for name in names]
        with contextlib.suppress(Exception):  # TopicAlreadyExists comes back per topic
            await admin.create_topics(new)
    finally:
        await admin.close()
    await wait_for_topics(bootstrap, names)


async def wait_for_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> None:
    """Wait until the broker's metadata lists every topic."""
    wanted = set(names)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while not wanted <= await consumer.topics():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(wanted)} not listed after {timeout:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def produce_backlog(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes, bytes]],
    partition_of: Callable[[bytes], int] | None = None,
) -> float:
    """Produce every record (acks=1, batched), on ``partition_of(key)`` when given, else
    where the producer's partitioner puts it; returns the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            partition = None if partition_of is None else partition_of(key)
            pending.append(await producer.send(topic, value=value, key=key, partition=partition))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# ----------------------------------------------------------------------------
# CPU use of the processes taking part in a run
# ----------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of a process (and its live children); 0 if it is gone."""
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True) if children else []:
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)
    except psutil.Error:
        return 0.0


def idle_seconds() -> float:
    """Seconds the machine's CPUs spent idle (or waiting for I/O) since boot, all CPUs."""
    times = psutil.cpu_times()
    return float(times.idle + getattr(times, "iowait", 0.0))


#: The role under which :class:`CpuWindow` reports the machine's idle CPU.
IDLE = "idle"


@dataclass
class CpuWindow:
    """CPU seconds of named processes between :meth:`begin` and :meth:`end`, and the
    machine's idle CPU (role ``idle``): what no process used, so that a process held
    back by its own threads is told from one that other processes crowd out.

    Each role counts its processes' children too, except the ``observer`` (this
    process, whose children are the broker and the workers).
    """

    pids: dict[str, list[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        sample = {
            role: sum(cpu_seconds(p, children=role != "observer") for p in pids)
            for role, pids in self.pids.items()
        }
        sample[IDLE] = idle_seconds()
        return sample

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._start = self._sample()

    def end(self) -> dict[str, float]:
        """Per role: percent of one core used over the window (``idle``: left unused,
        up to 100 x the CPUs)."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        now = self._sample()
        self.result = {
            role: round(100.0 * (now[role] - self._start.get(role, 0.0)) / wall, 1) for role in now
        }
        return self.result


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process, by native thread id
    (empty if the process is gone)."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.Error:
        return {}


#: A thread's line in ``py-spy dump``: native id, state, Python name.
_DUMPED_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]*)"', re.MULTILINE)


def parse_thread_names(dump: str) -> dict[int, str]:
    """Native thread id -> Python thread name, from the text of ``py-spy dump``."""
    return {int(tid): name for tid, name in _DUMPED_THREAD.findall(dump)}


def py_spy_path() -> str | None:
    """The py-spy executable beside this Python, else on the PATH; None without one."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def thread_names(pid: int) -> dict[int, str]:
    """The Python names of a Python process's threads, by native id (``py-spy dump``,
    which pauses the process for a moment); empty without py-spy or permission."""
    py_spy = py_spy_path()
    if py_spy is None:
        return {}
    done = subprocess.run(
        [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60, check=False
    )
    return parse_thread_names(done.stdout)


@dataclass
class ThreadCpuWindow:
    """CPU of each thread of one process between :meth:`begin` and :meth:`end`."""

    pid: int
    _start: dict[int, float] = field(default_factory=dict)
    _t0: float = 0.0

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._start = thread_cpu_seconds(self.pid)

    def end(self) -> dict[int, float]:
        """Per native thread id: percent of one core used over the window."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        return {
            tid: round(100.0 * (seconds - self._start.get(tid, 0.0)) / wall, 1)
            for tid, seconds in thread_cpu_seconds(self.pid).items()
        }


def by_thread_name(percents: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    """Thread CPU by name, largest first: threads of one name summed, unnamed ones (not
    Python threads, or gone before they were named) together as ``other``."""
    named: dict[str, float] = {}
    for tid, percent in percents.items():
        name = names.get(tid, "other")
        named[name] = round(named.get(name, 0.0) + percent, 1)
    return dict(sorted(named.items(), key=lambda item: -item[1]))


# ----------------------------------------------------------------------------
# Watching an output topic
# ----------------------------------------------------------------------------


@dataclass
class OutputWatch:
    """What an output counter saw.  ``target`` may be raised or lowered while it runs.

    With a ``tag``, only outputs whose ``trigger_event_id`` starts with it count (and
    the counter starts at the topic's end); ``latency`` records ``now - event_ts``
    seconds per counted output; ``keep_times``/``keep_values`` keep receipt times
    (epoch seconds) and decoded outputs.  ``stall_s``: once outputs have begun, the
    watchers stop (``stalled`` set) when none came for that long, instead of waiting out
    their timeout (a consumer group that stopped consuming).
    """

    target: int
    tag: str | None = None
    latency: bool = False
    keep_times: bool = False
    keep_values: bool = False
    stall_s: float | None = None
    count: int = 0
    first_at: float | None = None
    first_count: int = 0
    done_at: float | None = None
    #: ``time.monotonic()`` of the last count that grew.
    progress_at: float | None = None
    stalled: bool = False
    receipt_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)

    def progressed(self, now: float) -> None:
        """Note that the count grew at ``now`` (``time.monotonic()``)."""
        self.progress_at = now

    def check_stall(self, now: float) -> bool:
        """Whether outputs began and none came for ``stall_s`` up to ``now``; sets ``stalled``."""
        if self.stall_s is not None and self.progress_at is not None:
            self.stalled = now - self.progress_at > self.stall_s
        return self.stalled

    def rate(self) -> float:
        """Outputs per second between the first received batch and the target count.

        0.0 when every output came in the first fetch: too fast to time at this size
        (tiny test runs), never a measured zero."""
        if self.first_at is None or self.done_at is None or self.done_at <= self.first_at:
            return 0.0
        return (self.count - self.first_count) / (self.done_at - self.first_at)

    def add(self, values: list[bytes], now: float) -> int:
        """Count a fetched batch; returns how many outputs counted."""
        if self.tag is None and not self.latency and not self.keep_values:
            counted = len(values)
        else:
            counted = 0
            for raw in values:
                obj = orjson.loads(raw)
                trigger = obj.get("trigger_event_id")
                if self.tag is not None and not (
                    isinstance(trigger, str) and trigger.startswith(self.tag)
                ):
                    continue
                counted += 1
                event_ts = obj.get("event_ts")
                if self.latency and isinstance(event_ts, int | float):
                    self.latencies.append(now - float(event_ts))
                if self.keep_values:
                    self.values.append(obj)
        if counted and self.first_at is None:
            self.first_at = time.perf_counter()
            self.first_count = counted
        if counted:
            self.progressed(time.monotonic())
        self.count += counted
        if self.keep_times:
            self.receipt_times.extend([now] * counted)
        return counted


async def watch_output(
    bootstrap: str,
    topic: str,
    watch: OutputWatch,
    timeout: float,
    *,
    cpu: CpuWindow | None = None,
    started: asyncio.Event | None = None,
    alive: Callable[[], str | None] | None = None,
) -> OutputWatch:
    """Count outputs on ``topic`` until ``watch.target`` have come or ``timeout`` passes.

    ``cpu`` is begun at the first output and ended at the target.  ``started`` is set
    once the consumer has its partitions and positions (so a producer can start
    without losing outputs).  ``alive`` is polled; when it returns a reason the
    watch stops early (a worker died).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest" if watch.tag is None else "latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    # As the worker's consumer: on noida (which answers empty fetches at once) an
    # unpaced watcher spins and takes most of a core from the worker it measures; a
    # receipt comes at most this much later.
    pace_empty_fetches(consumer, WATCH_EMPTY_FETCH_PAUSE)
    try:
        deadline = time.monotonic() + timeout
        while not consumer.assignment():
            await asyncio.sleep(0.05)
            if time.monotonic() > deadline:
                return watch
        for partition in consumer.assignment():
            await consumer.position(partition)  # resolve "latest" before anything is sent
        if started is not None:
            started.set()
        last_check = time.monotonic()
        cpu_begun = False
        while watch.count < watch.target and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time()
            values = [record.value for records in batches.values() for record in records]
            if values:
                watch.add(values, now)
            if cpu is not None and not cpu_begun and watch.first_at is not None:
                cpu.begin()
                cpu_begun = True
            if watch.check_stall(time.monotonic()):
                break
            if alive is not None and time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                if alive() is not None:
                    break
        if watch.count >= watch.target:
            watch.done_at = time.perf_counter()
            if cpu is not None:
                cpu.end()
    finally:
        await consumer.stop()
    return watch


async def watch_end_offsets(
    bootstrap: str,
    topic: str,
    watch: OutputWatch,
    timeout: float,
    *,
    cpu: CpuWindow | None = None,
    alive: Callable[[], str | None] | None = None,
    interval: float = 0.05,
) -> OutputWatch:
    """Like :func:`watch_output` for plain counting, by polling the topic's end offsets.

    Costs the observer almost nothing, so use it on brokers whose ListOffsets answer is
    the true log end (noida; not Tansu).  Receipt times are those of the polls.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            await consumer.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
        deadline = time.monotonic() + timeout
        last_check = time.monotonic()
        while watch.count < watch.target and time.monotonic() < deadline:
            ends = await consumer.end_offsets(partitions)
            total = sum(ends.values())
            if total > watch.count:
                if watch.first_at is None:
                    watch.first_at = time.perf_counter()
                    watch.first_count = total
                    if cpu is not None:
                        cpu.begin()
                watch.count = total
                watch.progressed(time.monotonic())
            if watch.count >= watch.target or watch.check_stall(time.monotonic()):
                break
            if alive is not None and time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                if alive() is not None:
                    break
            await asyncio.sleep(interval)
        if watch.count >= watch.target:
            watch.done_at = time.perf_counter()
            if cpu is not None:
                cpu.end()
    finally:
        await consumer.stop()
    return watch


async def send_one(bootstrap: str, topic: str, user: str, event_id: str) -> None:
    """Produce one click for ``user`` stamped now."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        event = {
            "event_id": event_id,
            "user_id": user,
            "item_id": "p1",
            "action": "view",
            "ts": time.time(),
        }
        await producer.send_and_wait(topic, orjson.dumps(event), key=user.encode())
    finally:
        await producer.stop()


async def read_changelog(
    bootstrap: str, topic: str, idle_s: float = 1.5
) -> tuple[int, dict[bytes, bytes]]:
    """All records of a changelog: (record count, latest value per key without deletions).

    Reads until no record has come for ``idle_s`` (end offsets are not trusted: Tansu
    answers a wrong log end).
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records = 0
    live: dict[bytes, bytes] = {}
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_s:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for batch in batches.values():
                for record in batch:
                    records += 1
                    key = record.key or b""
                    if record.value is None:
                        live.pop(key, None)
                    else:
                        live[key] = record.value
                    idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return records, live


def live_clicks(
    n: int, clicks_per_user: float, tag: str, items: int = 50_000, seed: int = 11
) -> list[tuple[bytes, dict[str, Any]]]:
    """``n`` clicks of the shop log (else the synthetic generator) for users the worker
    has not seen, ``clicks_per_user`` per user as in a backlog of that density.

    Live traffic then has the shape of the backlog the capacity was measured on: a
    user's history at each click is as long as there (a recommendation's cost grows
    with it).  User, session and event ids start with ``tag``; ``ts`` is left to the
    sender.  Returned as (key, event) pairs in the log's order.
    """
    backlog = make_backlog(n, max(1, round(n / clicks_per_user)), items, seed)
    clicks = []
    for i, (_, raw) in enumerate(backlog.records):
        event = orjson.loads(raw)
        user = f"{tag}{event['user_id']}"
        event["user_id"], event["event_id"] = user, f"{tag}{i}"
        if "session_id" in event:
            event["session_id"] = f"{tag}{event['session_id']}"
        clicks.append((user.encode(), event))
    return clicks


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage-collector pauses in this process while it generates load and watches
    outputs: what exists is collected and frozen, automatic collection is off until the
    block ends, then both are restored.

    This process stamps each click's ``ts`` before the producer sends it, and notes each
    output when it reads it: a collection here (the clicks made beforehand and every
    output read are all tracked objects) held stamped clicks and read outputs back, and
    counted as the worker's latency (full collections of 54-153 ms measured in
    ``latency_probe.py`` at 3,900 clicks/s, at the moments of its slowest answers).
    The worker under test keeps its own collector.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def paced_count(rate: float, seconds: float) -> int:
    """How many clicks :func:`paced_produce` sends at most at ``rate`` for ``seconds``."""
    return int(rate * seconds) + 1


async def paced_produce(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    clicks: Sequence[tuple[bytes, dict[str, Any]]],
) -> int:
    """Produce ``clicks`` (:func:`live_clicks`, made beforehand: that takes seconds) at
    ``rate`` events/s for ``seconds``, each stamped ``ts = now`` when sent.

    Sends go in 5 ms ticks so the rate is smooth; returns how many were sent.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1)
    await producer.start()
    sent = 0
    tick = 0.005
    try:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds and sent < len(clicks):
            due = min(paced_count(rate, elapsed), len(clicks))
            while sent < due:
                key, event = clicks[sent]
                event["ts"] = time.time()
                await producer.send(topic, value=orjson.dumps(event), key=key)
                sent += 1
            await asyncio.sleep(tick)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


# ----------------------------------------------------------------------------
# A worker's own figures
# ----------------------------------------------------------------------------


def scrape_metrics(port: int | str) -> str:
    """The Prometheus text of the worker serving on 127.0.0.1:``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def events_in(metrics_text: str, topic: str) -> int:
    """Messages a worker consumed from ``topic`` (its ``recstream_events_in`` counter)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "recstream_events_in":
            return int(
                sum(
                    sample.value
                    for sample in family.samples
                    if sample.name.endswith("_total") and sample.labels.get("topic") == topic
                )
            )
    return 0


def histogram_totals(metrics_text: str, name: str, labels: dict[str, str]) -> tuple[float, float]:
    """``(count, sum)`` of the histogram ``name`` with ``labels`` in a worker's metrics
    (zeros when it is not there)."""
    count = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(key) != value for key, value in labels.items()):
                continue
            if sample.name == f"{name}_count":
                count = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
    return count, total


def scoring_counts(metrics_text: str, model: str = "recs") -> dict[str, float]:
    """How many micro-batches a worker has scored for ``model`` so far, and how many
    events they held (its ``recstream_scoring_batch_size`` histogram); zeros when none."""
    batches, events = histogram_totals(
        metrics_text, "recstream_scoring_batch_size", {"model": model}
    )
    return {"batches": batches, "events": events}


def scoring_batches(metrics_text: str, model: str = "recs") -> dict[str, float] | None:
    """:func:`scoring_counts` as the number of batches and their mean size in events;
    None when the worker scored none."""
    counts = scoring_counts(metrics_text, model)
    if not counts["batches"]:
        return None
    return {"batches": counts["batches"], "mean_events": counts["events"] / counts["batches"]}


def seconds_by_state(metrics_text: str, family: str) -> dict[str, float]:
    """A worker's counter of seconds by ``state`` (``family``: its name without
    ``_total``), as scraped; empty when it has no samples."""
    seconds: dict[str, float] = {}
    for found in text_string_to_metric_families(metrics_text):
        if found.name != family:
            continue
        for sample in found.samples:
            if sample.name.endswith("_total"):
                seconds[sample.labels["state"]] = sample.value
    return seconds


def scoring_thread_seconds(metrics_text: str) -> dict[str, float]:
    """Seconds the worker's scoring threads have spent scoring so far, by state
    (``recstream_scoring_thread_seconds_total``: cpu, runqueue, blocked); empty when
    they scored nothing."""
    return seconds_by_state(metrics_text, "recstream_scoring_thread_seconds")


def scoring_thread_shares(metrics_text: str) -> dict[str, float] | None:
    """How the worker's scoring threads spent their scoring time so far, as shares by
    state (:func:`scoring_thread_seconds`); None when they scored nothing."""
    seconds = scoring_thread_seconds(metrics_text)
    total = sum(seconds.values())
    if not total:
        return None
    return {state: value / total for state, value in seconds.items()}


def scoring_threads_busy(before: str, after: str, seconds: float) -> dict[str, float] | None:
    """How many of a worker's scoring threads were busy scoring, on average, between two
    scrapes of its metrics ``seconds`` apart, by state (cpu; runqueue: waiting for a
    core; blocked: for the GIL, or for the model processes' answers).  A sum near
    ``RECSTREAM_SCORING_THREADS`` means the scoring threads are the bottleneck.  None
    when nothing was scored."""
    start, end = scoring_thread_seconds(before), scoring_thread_seconds(after)
    spent = {state: end[state] - start.get(state, 0.0) for state in end}
    if not any(spent.values()) or seconds <= 0:
        return None
    return {state: round(value / seconds, 3) for state, value in spent.items()}


def event_loop_busy(before: str, after: str, seconds: float) -> dict[str, float] | None:
    """The share of ``seconds`` between two scrapes of a worker's metrics that its event
    loop's thread spent on a core (cpu) and runnable but waiting for one (runqueue),
    from ``recstream_event_loop_seconds_total``; None where the worker does not report it."""
    start = seconds_by_state(before, "recstream_event_loop_seconds")
    end = seconds_by_state(after, "recstream_event_loop_seconds")
    if not end or seconds <= 0:
        return None
    return {state: round((end[state] - start.get(state, 0.0)) / seconds, 3) for state in end}


#: The worker's latency histograms :func:`latency_means` reads: (key, name, labels).
WORKER_LATENCIES: Final[tuple[tuple[str, str, dict[str, str]], ...]] = (
    ("input_delay", "recstream_input_delay_seconds", {}),
    ("scoring_per_batch", "recstream_scoring_latency_seconds", {"model": "recs"}),
    ("end_to_end", "recstream_end_to_end_latency_seconds", {}),
)


def latency_means(before: str, after: str) -> dict[str, float | None]:
    """The mean of each of the worker's latency histograms between two scrapes of its
    metrics, in ms (:data:`WORKER_LATENCIES`: an event's input delay, a batch's scoring,
    an event's end-to-end time); None where nothing was observed meanwhile."""
    means: dict[str, float | None] = {}
    for key, name, labels in WORKER_LATENCIES:
        count_before, sum_before = histogram_totals(before, name, labels)
        count_after, sum_after = histogram_totals(after, name, labels)
        count = count_after - count_before
        means[key] = round(1e3 * (sum_after - sum_before) / count, 2) if count else None
    return means


def gc_pauses(metrics_text: str) -> dict[str, Any]:
    """The garbage collector's pauses in a worker's metrics (``recstream_gc_pause_seconds``):
    collections and seconds in all, per generation, and the upper bound of the shortest
    bucket that holds the longest pause (None when there was none)."""
    by_generation: dict[str, dict[str, Any]] = {}
    found: dict[str, Any] = {"collections": 0, "seconds": 0.0, "by_generation": by_generation}
    longest: float | None = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "recstream_gc_pause_seconds":
            continue
        count_of: dict[str, float] = {}
        for sample in family.samples:
            generation = sample.labels["generation"]
            entry = by_generation.setdefault(generation, {"collections": 0, "seconds": 0.0})
            if sample.name.endswith("_count"):
                entry["collections"] = int(sample.value)
                found["collections"] += int(sample.value)
            elif sample.name.endswith("_sum"):
                entry["seconds"] = sample.value
                found["seconds"] += sample.value
            elif sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                # cumulative buckets: the first one holding all of a generation's pauses
                if sample.value > count_of.get(generation, 0.0):
                    count_of[generation] = sample.value
                    if sample.value and (longest is None or bound > longest):
                        longest = bound
    found["longest_at_most_s"] = longest
    return found


# ----------------------------------------------------------------------------
# Statistics and output
# ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, 0.0 for no values."""
    return float(statistics.median(values)) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return float(ordered[rank - 1])


def write_json(path: Path, result: Any) -> None:
    """Write a benchmark's ``result`` to ``path`` as indented JSON (folders made) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or '-' for a missing one."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def unique_name(*parts: str) -> str:
    """A topic or group name unlikely to clash with other runs."""
    return "-".join([*parts, f"{random.randrange(16**6):06x}"])
