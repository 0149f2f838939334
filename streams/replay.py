"""Replay an event log (any supported format) into recstream's Kafka input topics.

Each event of the log (read by :mod:`recstream.model.adapters`) is published in its
canonical JSON form to ``clicks`` / ``searches`` / ``reviews`` (with the topic
prefix), keyed by ``user_id``, with ``acks="all"`` and, where the broker supports
it, an idempotent producer.  A user's events keep their order: one key always
maps to one partition, sends are issued in log order, and the producer keeps one
request in flight per partition.  When sends fail (the broker went away), the
replayer stops issuing new sends, waits for the ones in flight to settle, and
sends the failed events again in log order, with backoff, for up to
``--retry-for`` seconds.

Pacing: ``--speed 0`` (default) sends as fast as the broker acknowledges,
``--speed 1`` keeps the log's own gaps, ``--speed N`` makes them N times shorter.
``--rebase-time`` shifts every timestamp by one offset so the first event replayed
happens "now" (gaps kept).

Progress is checkpointed in a state file (``--state``, default
``PATH.replay-state.json`` next to the log, or in the current folder when that one
is read-only): every event is numbered by its position in the log, and the file
records the position below which every event is acknowledged (plus the few
acknowledged above it, and the source line reached).  ``--resume`` skips exactly
those, so a replay stopped by Ctrl-C, ``--limit`` or a broker outage continues
without duplicates.  (An event whose send was in flight at a hard kill may have
reached the broker without its acknowledgement: the worker drops such repeats by
``event_id``.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson

from recstream.model.adapters import FORMATS, AdapterError, AdapterStats, Located, read_located
from recstream.streams.records import InvalidEvent, event_to_dict, parse_ts, topic_of
from recstream.streams.settings import Settings, get_settings

#: Most sends waiting for their acknowledgement at once.
DEFAULT_MAX_PENDING: Final = 2_000
#: Seconds between state-file writes during a replay.
CHECKPOINT_EVERY_S: Final = 1.0
#: Seconds the replayer keeps retrying failed sends before it gives up.
DEFAULT_RETRY_FOR_S: Final = 600.0
#: Seconds to wait for in-flight acknowledgements when stopping.
FLUSH_TIMEOUT_S: Final = 30.0
#: Seconds without an acknowledgement (sends waiting) before the replay says so.
STALL_REPORT_S: Final = 10.0
#: Bad lines printed one by one before the rest are only counted.
SHOWN_BAD_LINES: Final = 50

Outcome = Literal["complete", "limit", "interrupted", "failed"]


# ----------------------------------------------------------------------------
# Injectable time and transport
# ----------------------------------------------------------------------------


class Clock(Protocol):
    """Time as the replayer sees it; tests pass a fake one."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Sink(Protocol):
    """Where events go: ``send`` enqueues one and returns a future of its acknowledgement."""

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]: ...


# ----------------------------------------------------------------------------
# Checkpoint state
# ----------------------------------------------------------------------------


@dataclass
class ReplayState:
    """How far a replay of one log got (saved as JSON between runs)."""

    source: str
    format: str
    next_position: int = 0
    """Every event at a position below this is acknowledged (or filtered out)."""
    acked_beyond: list[int] = field(default_factory=list)
    """Acknowledged positions at or above ``next_position`` (sends still settling)."""
    last_line: int = 0
    """Source line of the event at ``next_position - 1``."""
    sent: int = 0
    """Events acknowledged over all runs."""
    rebase_offset: float | None = None
    """Seconds added to every timestamp (``--rebase-time``), kept for resumed runs."""
    complete: bool = False

    def save(self, path: Path) -> None:
        """Write atomically (a crash never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ReplayState:
        raw = orjson.loads(path.read_bytes())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class _Done:
    """Positions that are finished, as a watermark plus the finished ones above it."""

    def __init__(self, state: ReplayState) -> None:
        self.state = state
        self._beyond = set(state.acked_beyond)
        self._lines: dict[int, int] = {}

    def __contains__(self, position: int) -> bool:
        return position < self.state.next_position or position in self._beyond

    def mark(self, position: int, line: int) -> None:
        state = self.state
        if position in self:
            return
        if position != state.next_position:
            self._beyond.add(position)
            self._lines[position] = line
            return
        state.next_position, state.last_line = position + 1, line
        while state.next_position in self._beyond:
            self._beyond.remove(state.next_position)
            state.last_line = self._lines.pop(state.next_position, state.last_line)
            state.next_position += 1

    def snapshot(self) -> ReplayState:
        self.state.acked_beyond = sorted(self._beyond)
        return self.state


# ----------------------------------------------------------------------------
# The replayer
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    speed: float = 0.0
    """0: as fast as possible; 1: original pacing; N: N times faster."""
    rebase_time: bool = False
    limit: int | None = None
    """Send at most this many events in this run."""
    start: float | None = None
    """Only events with ``ts >= start`` (original time)."""
    end: float | None = None
    """Only events with ``ts < end`` (original time)."""
    max_pending: int = DEFAULT_MAX_PENDING
    retry_for: float = DEFAULT_RETRY_FOR_S
    stop_after_acks: int | None = None
    """Test hook: stop (as if interrupted) once this many sends are acknowledged."""


@dataclass
class ReplaySummary:
    outcome: Outcome = "complete"
    error: str | None = None
    sent: Counter[str] = field(default_factory=Counter)
    """Acknowledged events of this run, by full topic name."""
    filtered: int = 0
    already_sent: int = 0
    failed_sends: int = 0
    unacknowledged: int = 0
    """Sends still unanswered when the run stopped (sent again by --resume)."""
    elapsed_s: float = 0.0
    adapter: AdapterStats = field(default_factory=AdapterStats)

    def lines(self, state: ReplayState, state_path: Path | None) -> list[str]:
        """A human-readable report."""
        total = sum(self.sent.values())
        rate = total / self.elapsed_s if self.elapsed_s > 0 else 0.0
        out = [f"replay {self.outcome}" + (f": {self.error}" if self.error else "")]
        out.append(f"  sent (acknowledged): {total:,} in {self.elapsed_s:.1f} s ({rate:,.0f}/s)")
        out += [f"    {topic}: {n:,}" for topic, n in sorted(self.sent.items())]
        skipped = {
            "outside --start/--end": self.filtered,
            "already sent by an earlier run (--resume)": self.already_sent,
            **{f"not an input event: {r}": n for r, n in self.adapter.skipped.items()},
            **{f"bad line: {r}": n for r, n in self.adapter.malformed.items()},
        }
        if any(skipped.values()):
            out.append("  skipped:")
            out += [f"    {reason}: {n:,}" for reason, n in skipped.items() if n]
        if self.failed_sends:
            out.append(f"  failed sends retried: {self.failed_sends:,}")
        if self.unacknowledged:
            out.append(f"  unacknowledged at stop (resend with --resume): {self.unacknowledged:,}")
        where = f"position {state.next_position:,} (source line {state.last_line:,})"
        out.append(f"  reached {where}; {state.sent:,} acknowledged over all runs")
        if state_path is not None:
            hint = "" if state.complete else "; continue with --resume"
            out.append(f"  state: {state_path}{hint}")
        return out


class ReplayStopped(Exception):
    """The replay cannot go on (strict bad line, or sends failing for too long)."""


@dataclass
class _Item:
    position: int
    line: int
    topic: str
    key: bytes
    value: bytes


class Replayer:
    """Sends located events to a :class:`Sink` with pacing, retries and checkpoints."""

    def __init__(
        self,
        sink: Sink,
        settings: Settings,
        options: ReplayOptions,
        state: ReplayState,
        *,
        clock: Clock | None = None,
        save_state: Callable[[ReplayState], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.options = options
        self.clock = clock or SystemClock()
        self.summary = ReplaySummary()
        self._done = _Done(state)
        self._save_state = save_state
        self._on_progress = on_progress
        self._report = report or (lambda message: print(message, file=sys.stderr))
        self._pending: dict[int, _Item] = {}
        self._failed: list[_Item] = []
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._stop_outcome: Outcome = "interrupted"
        self._acks = 0
        self._anchor: tuple[float, float] | None = None
        self._warned_future = False
        self._last_save = 0.0

    @property
    def state(self) -> ReplayState:
        return self._done.snapshot()

    @property
    def acknowledged(self) -> int:
        """Sends acknowledged in this run so far."""
        return self._acks

    @property
    def in_flight(self) -> int:
        """Sends waiting for their acknowledgement (or failed, waiting for a retry)."""
        return len(self._pending) + len(self._failed)

    def request_stop(self, outcome: Outcome = "interrupted") -> None:
        """Stop after the sends in flight settle (Ctrl-C, test hooks)."""
        if not self._stop.is_set():
            self._stop_outcome = outcome
            self._stop.set()

    async def run(self, located: Iterable[Located]) -> ReplaySummary:
        """Replay ``located`` (positions are indices in it); always checkpoints at the end."""
        began = self.clock.monotonic()
        summary = self.summary
        sent_this_run, exhausted = 0, False
        try:
            for position, item in enumerate(located):
                if self._stop.is_set():
                    break
                if position in self._done:
                    summary.already_sent += 1
                    continue
                event = item.event
                if (self.options.start is not None and event.ts < self.options.start) or (
                    self.options.end is not None and event.ts >= self.options.end
                ):
                    summary.filtered += 1
                    self._done.mark(position, item.line)
                    continue
                if self.options.limit is not None and sent_this_run >= self.options.limit:
                    self.request_stop("limit")
                    break
                await self._pace(event.ts)
                if self._stop.is_set():
                    break
                offset = self._rebase_offset(event.ts)
                if offset:
                    event = dataclasses.replace(event, ts=event.ts + offset)
                    self._check_future(event.ts)
                value = orjson.dumps(event_to_dict(event))
                topic = self.settings.topic(topic_of(event))
                key = event.user_id.encode()
                if not await self._send(_Item(position, item.line, topic, key, value)):
                    break  # stopped while earlier failed sends were waiting for a retry
                sent_this_run += 1
                self._maybe_checkpoint()
            else:
                exhausted = True
            summary.outcome = "complete" if exhausted else self._stop_outcome
            await self._finish(retry=summary.outcome in ("complete", "limit"))
            if self.in_flight and summary.outcome != "failed":
                summary.outcome = "interrupted"  # stopped before everything was acknowledged
        except (AdapterError, ReplayStopped) as exc:
            summary.outcome, summary.error = "failed", str(exc)
            await self._finish(retry=False)
        finally:
            state = self._done.snapshot()
            state.complete = summary.outcome == "complete" and not self.in_flight
            summary.unacknowledged = self.in_flight
            summary.elapsed_s = self.clock.monotonic() - began
            if self._save_state is not None:
                self._save_state(state)
        return summary

    # --- pacing ------------------------------------------------------------------

    def _rebase_offset(self, ts: float) -> float:
        state = self._done.state
        if not self.options.rebase_time:
            return 0.0
        if state.rebase_offset is None:
            state.rebase_offset = self.clock.time() - ts
        return state.rebase_offset

    def _check_future(self, ts: float) -> None:
        """Warn once when rebased times run further ahead than the worker accepts."""
        ahead = ts - self.clock.time()
        if not self._warned_future and ahead > self.settings.max_future_skew:
            self._warned_future = True
            self._report(
                f"warning: rebased event times now run {ahead:.0f} s ahead of the clock, "
                f"beyond RECSTREAM_MAX_FUTURE_SKEW={self.settings.max_future_skew:.0f}: "
                "the worker dead-letters such events (replay with --speed 1, or without "
                "--rebase-time)"
            )

    async def _pace(self, ts: float) -> None:
        if self.options.speed <= 0:
            return
        if self._anchor is None:
            self._anchor = (self.clock.monotonic(), ts)
            return
        started, first_ts = self._anchor
        wait = started + (ts - first_ts) / self.options.speed - self.clock.monotonic()
        if wait > 0:
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when a stop is requested."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, stopper):
            task.cancel()

    # --- sending -----------------------------------------------------------------

    async def _send(self, item: _Item) -> bool:
        """Send one event after any earlier failed ones; False if a stop came first."""
        if self._failed:
            await self._recover()
            if self._failed:  # stopped while retrying: sending newer events would reorder
                return False
        while len(self._pending) >= self.options.max_pending:
            self._room.clear()
            await self._room.wait()
        await self._issue(item)
        return True

    async def _issue(self, item: _Item) -> bool:
        """Hand one event to the sink; False (and queued for a retry) if that fails."""
        try:
            future = await self.sink.send(item.topic, item.key, item.value)
        except Exception as exc:  # e.g. no metadata for the topic: the broker is away
            self._failed.append(item)
            self.summary.failed_sends += 1
            self._report(f"send failed ({type(exc).__name__}: {exc}); will retry")
            return False
        self._pending[item.position] = item
        self._idle.clear()
        future.add_done_callback(lambda f: self._settled(item, f))
        return True

    def _settled(self, item: _Item, future: asyncio.Future[Any]) -> None:
        self._pending.pop(item.position, None)
        if future.cancelled() or future.exception() is not None:
            self._failed.append(item)
            self.summary.failed_sends += 1
        else:
            self._done.mark(item.position, item.line)
            self._done.state.sent += 1
            self.summary.sent[item.topic] += 1
            self._acks += 1
            if self._on_progress is not None:
                self._on_progress(1)
            stop_after = self.options.stop_after_acks
            if stop_after is not None and self._acks >= stop_after:
                self.request_stop("interrupted")
        if len(self._pending) < max(1, self.options.max_pending // 2):
            self._room.set()
        if not self._pending:
            self._idle.set()

    async def _settle(self, timeout: float | None = None) -> bool:
        """Wait until no send is in flight; False when ``timeout`` passed first."""
        if timeout is None:
            await self._idle.wait()
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _recover(self) -> None:
        """Resend failed events in log order, with backoff, until they are acknowledged."""
        await self._settle()
        since, attempt = self.clock.monotonic(), 0
        while self._failed:
            if self._stop.is_set():
                return
            if self.clock.monotonic() - since > self.options.retry_for:
                raise ReplayStopped(
                    f"sends kept failing for {self.options.retry_for:.0f} s "
                    f"({len(self._failed)} events unacknowledged)"
                )
            delay = min(30.0, 0.5 * 2**attempt)
            attempt += 1
            self._report(f"{len(self._failed)} sends failed; retrying in {delay:.1f} s")
            await self._sleep(delay)
            if self._stop.is_set():
                return
            batch = sorted(self._failed, key=lambda item: item.position)
            self._failed.clear()
            for index, item in enumerate(batch):
                if not await self._issue(item):
                    self._failed += batch[index + 1 :]  # keep the order: retry the rest later
                    break
            await self._settle()

    async def _finish(self, *, retry: bool) -> None:
        """Let in-flight sends settle (retrying failures when asked), then checkpoint."""
        if retry:
            await self._settle()
            if self._failed:
                await self._recover()
        elif not await self._settle(FLUSH_TIMEOUT_S):
            self._report(f"{len(self._pending)} sends still unacknowledged after flush timeout")

    def _maybe_checkpoint(self) -> None:
        now = self.clock.monotonic()
        if self._save_state is not None and now - self._last_save >= CHECKPOINT_EVERY_S:
            self._last_save = now
            self._save_state(self._done.snapshot())


# ----------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------


class KafkaSink:
    """An aiokafka producer (``acks="all"``; idempotent where the broker supports it)."""

    def __init__(self, settings: Settings, idempotence: str = "auto") -> None:
        self.settings = settings
        self.idempotence = idempotence
        self.idempotent = False
        self._producer: Any = None

    async def start(self, *, retry_for: float, report: Callable[[str], None]) -> None:
        """Connect, retrying while the broker is unreachable for up to ``retry_for`` s."""
        from aiokafka.errors import KafkaConnectionError, KafkaError

        deadline, attempt = time.monotonic() + retry_for, 0
        modes = {"auto": (True, False), "on": (True,), "off": (False,)}[self.idempotence]
        while True:
            try:
                await self._start_first_working(modes)
                return
            except KafkaConnectionError as exc:
                if time.monotonic() > deadline:
                    raise ReplayStopped(f"cannot reach the brokers: {exc}") from exc
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                report(
                    f"cannot reach {self.settings.bootstrap_servers} ({exc}); retry in {delay} s"
                )
                await asyncio.sleep(delay)
            except KafkaError as exc:
                raise ReplayStopped(f"cannot start the producer: {exc}") from exc

    async def _start_first_working(self, modes: tuple[bool, ...]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaConnectionError, KafkaError

        from recstream.streams.kafka_config import aiokafka_kwargs

        for index, idempotent in enumerate(modes):
            producer = AIOKafkaProducer(
                **aiokafka_kwargs(self.settings),
                acks="all",
                enable_idempotence=idempotent,
                linger_ms=5,
                max_batch_size=256 * 1024,
                request_timeout_ms=15_000,
            )
            try:
                await producer.start()
            except KafkaConnectionError:
                await producer.stop()
                raise
            except KafkaError:
                await producer.stop()
                if index == len(modes) - 1:
                    raise
                continue  # the broker refused InitProducerId: no idempotent producer there
            self._producer, self.idempotent = producer, idempotent
            return

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        return future

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._producer.stop(), FLUSH_TIMEOUT_S)


# ----------------------------------------------------------------------------
# Command line: recstream replay
# ----------------------------------------------------------------------------


def parse_when(value: str) -> float:
    """A time filter: epoch seconds/milliseconds, ISO-8601 with zone, or a UTC date."""
    try:
        number: float | str = float(value)
    except ValueError:
        number = f"{value}T00:00:00+00:00" if len(value) == 10 else value
    try:
        return parse_ts(number, max_future_s=float("inf"))
    except InvalidEvent as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def default_state_path(source: str) -> Path | None:
    """``PATH.replay-state.json`` beside the log, or in the current folder if that is read-only."""
    if source == "-":
        return None
    path = Path(source)
    beside = path.with_name(path.name + ".replay-state.json")
    return beside if os.access(beside.parent, os.W_OK) else Path.cwd() / beside.name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream replay``."""
    parser.add_argument("path", help="event log (.gz ok; - reads standard input)")
    parser.add_argument("--format", default="jsonl", choices=FORMATS, help="log format")
    parser.add_argument(
        "--speed", type=float, default=0.0, help="0 = as fast as possible (default), 1 = original"
    )
    parser.add_argument("--rebase-time", action="store_true", help="shift times so replay is now")
    parser.add_argument("--limit", type=int, help="send at most this many events")
    parser.add_argument("--start", type=parse_when, help="skip events before this time")
    parser.add_argument("--end", type=parse_when, help="skip events at or after this time")
    parser.add_argument("--topic-prefix", help="override RECSTREAM_TOPIC_PREFIX")
    parser.add_argument("--bootstrap-servers", help="override RECSTREAM_BOOTSTRAP_SERVERS")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")
    parser.add_argument(
        "--state", type=Path, help="checkpoint file (default PATH.replay-state.json)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--max-pending", type=int, default=DEFAULT_MAX_PENDING, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--idempotence", choices=("auto", "on", "off"), default="auto",
        help="idempotent producer: auto = when the broker supports it",
    )  # fmt: skip
    parser.add_argument(
        "--retry-for", type=float, default=DEFAULT_RETRY_FOR_S,
        help="seconds to keep retrying while the broker is unavailable",
    )  # fmt: skip


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in (
            ("bootstrap_servers", args.bootstrap_servers),
            ("topic_prefix", args.topic_prefix),
        )
        if value is not None
    }
    return get_settings().model_copy(update=overrides)


def _load_state(args: argparse.Namespace, state_path: Path | None) -> ReplayState:
    fresh = ReplayState(source=str(args.path), format=args.format)
    if not args.resume:
        return fresh
    if state_path is None or not state_path.exists():
        raise ReplayStopped(f"--resume: no state file {state_path or '(use --state FILE)'}")
    state = ReplayState.load(state_path)
    if (state.source, state.format) != (fresh.source, fresh.format):
        raise ReplayStopped(
            f"--resume: {state_path} belongs to {state.source} ({state.format}), "
            f"not {fresh.source} ({fresh.format})"
        )
    return state


async def _watch_stalls(replayer: Replayer, report: Callable[[str], None]) -> None:
    """Say when acknowledgements stop coming (broker away) and when they resume."""
    last, quiet_since, stalled = replayer.acknowledged, time.monotonic(), False
    while True:
        await asyncio.sleep(1.0)
        if replayer.acknowledged != last or not replayer.in_flight:
            if stalled:
                report("acknowledgements resumed")
            last, quiet_since, stalled = replayer.acknowledged, time.monotonic(), False
        elif not stalled and time.monotonic() - quiet_since > STALL_REPORT_S:
            stalled = True
            report(
                f"no acknowledgement for {STALL_REPORT_S:.0f} s with {replayer.in_flight} sends "
                "waiting: is the broker up? (retrying; Ctrl-C stops and checkpoints)"
            )


def run(args: argparse.Namespace) -> int:
    """Replay the log; exit 0 when done, 130 when interrupted, 1 on failure."""
    return asyncio.run(run_async(args))


async def run_async(args: argparse.Namespace) -> int:
    """The replay command inside a running event loop (what :func:`run` runs)."""
    from tqdm import tqdm

    settings = _settings(args)
    state_path = args.state or default_state_path(args.path)
    try:
        state = _load_state(args, state_path)
    except (ReplayStopped, orjson.JSONDecodeError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    options = ReplayOptions(
        speed=args.speed, rebase_time=args.rebase_time, limit=args.limit, start=args.start,
        end=args.end, max_pending=args.max_pending, retry_for=args.retry_for,
    )  # fmt: skip
    bar = tqdm(unit=" ev", desc="replay", disable=args.no_progress, dynamic_ncols=True)
    shown = 0

    def report(message: str) -> None:
        bar.write(message, file=sys.stderr)

    def bad_line(error: AdapterError) -> None:
        nonlocal shown
        shown += 1
        if shown <= SHOWN_BAD_LINES:
            report(f"skipped bad line {error}")
        elif shown == SHOWN_BAD_LINES + 1:
            report("more bad lines: counted in the summary, not shown")

    sink = KafkaSink(settings, args.idempotence)
    try:
        await sink.start(retry_for=args.retry_for, report=report)
    except ReplayStopped as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not sink.idempotent:
        report("note: the broker does not support idempotent producers; sending without")

    def save(snapshot: ReplayState) -> None:
        if state_path is not None:
            snapshot.save(state_path)

    replayer = Replayer(
        sink, settings, options, state, save_state=save, on_progress=bar.update, report=report
    )
    replayer.summary.adapter.on_malformed = bad_line
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, replayer.request_stop)
    watchdog = asyncio.create_task(_watch_stalls(replayer, report))
    # aiokafka logs every reconnect attempt while a broker is away; the watchdog and
    # the replayer report outages once instead.
    kafka_log = logging.getLogger("aiokafka")
    previous_level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        located = read_located(
            args.path, args.format, strict=args.strict, stats=replayer.summary.adapter
        )
        summary = await replayer.run(located)
    finally:
        watchdog.cancel()
        loop.remove_signal_handler(signal.SIGINT)
        await sink.stop()
        kafka_log.setLevel(previous_level)
        bar.close()
    for line in summary.lines(replayer.state, state_path):
        print(line, file=sys.stderr)
    return {"complete": 0, "limit": 0, "interrupted": 130}.get(summary.outcome, 1)
