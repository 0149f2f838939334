"""Replayer logic against a fake broker and a fake clock (no sockets, no real sleeps)."""

from __future__ import annotations

import argparse
import asyncio
import random
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from recstream.model.adapters import Located, read_located
from recstream.model.shoplog import generate, write_log
from recstream.streams import replay
from recstream.streams.records import Click, event_to_dict
from recstream.streams.replay import (
    Replayer,
    ReplayOptions,
    ReplayState,
    default_state_path,
    parse_when,
)
from recstream.streams.settings import Settings

SETTINGS = Settings(topic_prefix="t.")


class FakeClock:
    """Monotonic and wall time that only move when someone sleeps."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self.now = 100.0
        self.wall_minus_mono = wall - self.now
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_minus_mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


class FakeBroker:
    """Partitions by key; acknowledges heads of random partitions (in order within one).

    While ``down`` every send it answers fails, like batches expiring during an outage.
    """

    def __init__(self, clock: FakeClock, partitions: int = 3, seed: int = 0) -> None:
        self.clock = clock
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.queues: dict[int, list[tuple[asyncio.Future[Any], tuple[str, bytes, bytes]]]] = (
            defaultdict(list)
        )
        self.logs: dict[int, list[tuple[str, bytes, bytes]]] = defaultdict(list)
        self.sent_at: list[float] = []
        self.down = False

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        partition = zlib.crc32(key) % self.partitions
        self.queues[partition].append((future, (topic, key, value)))
        self.sent_at.append(self.clock.monotonic())
        asyncio.get_running_loop().call_soon(self._tick)
        return future

    def _tick(self) -> None:
        busy = [p for p, q in self.queues.items() if q]
        partition = self.rng.choice(busy)
        future, record = self.queues[partition].pop(0)
        if self.down:
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            self.logs[partition].append(record)
            future.set_result(None)

    def records(self) -> list[tuple[str, bytes, bytes]]:
        return [r for log in self.logs.values() for r in log]


def _log(tmp_path: Path, users: int = 25, days: float = 2.0) -> Path:
    path = tmp_path / "shop.jsonl"
    write_log(path, generate(users, 40, days, 3))
    return path


def _replayer(
    broker: FakeBroker, clock: FakeClock, options: ReplayOptions, state: ReplayState | None = None
) -> Replayer:
    state = state or ReplayState(source="log", format="jsonl")
    return Replayer(broker, SETTINGS, options, state, clock=clock, report=lambda _m: None)


def _user_orders_kept(broker: FakeBroker, expected: list[Located]) -> None:
    """Each user's delivered events are exactly that user's events of the log, in order."""
    want: dict[str, list[str]] = defaultdict(list)
    for located in expected:
        want[located.event.user_id].append(located.event.event_id)
    got: dict[str, list[str]] = defaultdict(list)
    for log in broker.logs.values():
        for _topic, key, value in log:
            got[key.decode()].append(orjson.loads(value)["event_id"])
    assert got == want


async def test_fast_replay_delivers_everything_once_in_user_order(tmp_path: Path) -> None:
    path = _log(tmp_path)
    located = list(read_located(path, "jsonl"))
    clock = FakeClock()
    broker = FakeBroker(clock)
    summary = await _replayer(broker, clock, ReplayOptions(max_pending=16)).run(located)
    assert summary.outcome == "complete" and clock.sleeps == []
    assert sum(summary.sent.values()) == len(located) > 300
    assert set(summary.sent) == {"t.clicks", "t.searches", "t.reviews"}
    _user_orders_kept(broker, located)
    by_id = {loc.event.event_id: loc.event for loc in located}
    for topic, key, value in broker.records():
        event = by_id[orjson.loads(value)["event_id"]]
        assert orjson.loads(value) == event_to_dict(event)  # canonical form, unchanged
        assert key == event.user_id.encode()
        kind = "clicks" if isinstance(event, Click) else topic.removeprefix("t.")
        assert topic == f"t.{kind}"


def _clicks(times: list[float]) -> list[Located]:
    return [
        Located(i + 1, Click(f"e{i}", f"u{i % 2}", "p1", "view", ts)) for i, ts in enumerate(times)
    ]


@pytest.mark.parametrize(("speed", "expected"), [(1.0, [10.0, 60.0]), (10.0, [1.0, 6.0])])
async def test_pacing_follows_the_log_gaps(speed: float, expected: list[float]) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    times = [1_700_000_000.0, 1_700_000_010.0, 1_700_000_010.0, 1_700_000_070.0]
    await _replayer(broker, clock, ReplayOptions(speed=speed)).run(_clicks(times))
    assert clock.sleeps == pytest.approx(expected)
    offsets = [t - broker.sent_at[0] for t in broker.sent_at]
    assert offsets == pytest.approx([(t - times[0]) / speed for t in times])


async def test_events_behind_the_pace_are_sent_at_once() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    times = [1_700_000_100.0, 1_700_000_050.0, 1_700_000_130.0]  # second one is out of order
    await _replayer(broker, clock, ReplayOptions(speed=1.0)).run(_clicks(times))
    assert clock.sleeps == pytest.approx([30.0])


async def test_rebase_time_shifts_to_now_and_keeps_gaps() -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    broker = FakeBroker(clock)
    times = [1_700_000_000.0, 1_700_000_005.5, 1_700_000_100.0]
    replayer = _replayer(broker, clock, ReplayOptions(rebase_time=True))
    await replayer.run(_clicks(times))
    sent = sorted(orjson.loads(v)["ts"] for _t, _k, v in broker.records())
    assert sent == pytest.approx([1_800_000_000.0, 1_800_000_005.5, 1_800_000_100.0])
    assert replayer.state.rebase_offset == pytest.approx(100_000_000.0)
    # A resumed run keeps the first run's offset, whatever the time is now.
    clock.now += 5_000.0
    later = _replayer(FakeBroker(clock), clock, ReplayOptions(rebase_time=True), replayer.state)
    assert (await later.run(_clicks([*times, 1_700_000_200.0]))).already_sent == 3
    assert replayer.state.rebase_offset == pytest.approx(100_000_000.0)


async def test_rebased_times_too_far_ahead_are_warned_about() -> None:
    clock = FakeClock()
    messages: list[str] = []
    replayer = Replayer(
        FakeBroker(clock), SETTINGS, ReplayOptions(rebase_time=True),
        ReplayState(source="log", format="jsonl"), clock=clock, report=messages.append,
    )  # fmt: skip
    day = 86_400.0
    await replayer.run(_clicks([1.7e9, 1.7e9 + 0.5 * day, 1.7e9 + 2 * day, 1.7e9 + 3 * day]))
    assert len(messages) == 1 and "MAX_FUTURE_SKEW" in messages[0]


async def test_start_end_and_limit_filters() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    times = [1_700_000_000.0 + 10 * i for i in range(10)]
    options = ReplayOptions(start=times[2], end=times[8], limit=4)
    replayer = _replayer(broker, clock, options)
    summary = await replayer.run(_clicks(times))
    sent = sorted(orjson.loads(v)["ts"] for _t, _k, v in broker.records())
    assert sent == times[2:6]
    assert summary.outcome == "limit" and summary.filtered == 2
    state = replayer.state
    assert state.next_position == 6 and state.last_line == 6 and not state.complete
    # Continuing sends the rest inside the window, and the state ends complete.
    rest = _replayer(broker, clock, ReplayOptions(start=times[2], end=times[8]), state)
    summary = await rest.run(_clicks(times))
    assert summary.outcome == "complete" and summary.already_sent == 6 and summary.filtered == 2
    assert sorted(orjson.loads(v)["ts"] for _t, _k, v in broker.records()) == times[2:8]
    assert rest.state.complete and rest.state.next_position == 10


async def test_stop_and_resume_send_each_event_once(tmp_path: Path) -> None:
    path = _log(tmp_path)
    located = list(read_located(path, "jsonl"))
    clock = FakeClock()
    broker = FakeBroker(clock, seed=5)
    state_file = tmp_path / "state.json"
    first = Replayer(
        broker, SETTINGS, ReplayOptions(max_pending=32, stop_after_acks=100),
        ReplayState(source=str(path), format="jsonl"), clock=clock,
        save_state=lambda s: s.save(state_file), report=lambda _m: None,
    )  # fmt: skip
    summary = await first.run(located)
    assert summary.outcome == "interrupted"
    acked_first = sum(summary.sent.values())
    assert 100 <= acked_first < len(located)
    saved = ReplayState.load(state_file)
    assert saved.sent == acked_first and not saved.complete
    second = _replayer(broker, clock, ReplayOptions(max_pending=32), saved)
    summary = await second.run(located)
    assert summary.outcome == "complete"
    assert summary.already_sent == acked_first
    ids = [orjson.loads(v)["event_id"] for _t, _k, v in broker.records()]
    assert sorted(ids) == sorted(loc.event.event_id for loc in located)  # each exactly once


async def test_broker_outage_is_retried_in_order(tmp_path: Path) -> None:
    located = list(read_located(_log(tmp_path), "jsonl"))
    clock = FakeClock()
    broker = FakeBroker(clock, seed=2)
    outage_after = 150

    async def go_down_later() -> None:
        while len(broker.sent_at) < outage_after:
            await asyncio.sleep(0)
        broker.down = True

    def come_back_after_two_retries() -> None:
        if len(clock.sleeps) >= 2:
            broker.down = False

    clock.on_sleep = come_back_after_two_retries
    watcher = asyncio.create_task(go_down_later())
    summary = await _replayer(broker, clock, ReplayOptions(max_pending=8)).run(located)
    await watcher
    assert summary.outcome == "complete" and summary.failed_sends > 0
    assert clock.sleeps[:2] == [0.5, 1.0]  # exponential backoff
    _user_orders_kept(broker, located)


async def test_stop_during_an_outage_then_resume(tmp_path: Path) -> None:
    located = list(read_located(_log(tmp_path), "jsonl"))
    clock = FakeClock()
    broker = FakeBroker(clock, seed=4)
    first = _replayer(broker, clock, ReplayOptions(max_pending=8))

    async def outage_then_ctrl_c() -> None:
        while len(broker.sent_at) < 100:
            await asyncio.sleep(0)
        broker.down = True

    def broker_back_as_ctrl_c_comes() -> None:
        if len(clock.sleeps) >= 2:
            broker.down = False  # newer events would now go through, ahead of the failed ones
            first.request_stop()

    clock.on_sleep = broker_back_as_ctrl_c_comes
    watcher = asyncio.create_task(outage_then_ctrl_c())
    summary = await first.run(located)
    await watcher
    assert summary.outcome == "interrupted" and summary.unacknowledged > 0
    state = first.state
    assert not state.complete and state.sent == sum(summary.sent.values())
    clock.on_sleep = None
    summary = await _replayer(broker, clock, ReplayOptions(max_pending=8), state).run(located)
    assert summary.outcome == "complete"
    _user_orders_kept(broker, located)  # every event exactly once, each user's in order


async def test_gives_up_when_the_broker_stays_away() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    broker.down = True
    times = [1_700_000_000.0 + i for i in range(5)]
    replayer = _replayer(broker, clock, ReplayOptions(retry_for=60.0))
    summary = await replayer.run(_clicks(times))
    assert summary.outcome == "failed" and summary.error and "kept failing" in summary.error
    assert replayer.state.next_position == 0 and summary.unacknowledged > 0
    assert sum(clock.sleeps) > 60.0


async def test_bad_lines_skipped_or_strict(tmp_path: Path) -> None:
    good = [orjson.dumps(event_to_dict(loc.event)).decode() for loc in _clicks([1.7e9, 1.7e9 + 1])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good[0], good[1], "{broken", good[0].replace("e0", "e9")]) + "\n")
    clock = FakeClock()
    lenient = _replayer(FakeBroker(clock), clock, ReplayOptions())
    summary = await lenient.run(
        read_located(path, "jsonl", strict=False, stats=lenient.summary.adapter)
    )
    assert sum(summary.sent.values()) == 3 and summary.adapter.malformed["bad_json"] == 1
    strict = _replayer(FakeBroker(clock), clock, ReplayOptions())
    summary = await strict.run(read_located(path, "jsonl", strict=True))
    assert summary.outcome == "failed" and summary.error and f"{path}:3:" in summary.error
    assert strict.state.next_position == 2 and strict.state.last_line == 2


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = ReplayState("a.jsonl", "jsonl", 7, [9, 12], 8, 9, 12.5, False)
    state.save(tmp_path / "s.json")
    assert ReplayState.load(tmp_path / "s.json") == state
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp file left


def test_time_filters_and_default_state_path(tmp_path: Path) -> None:
    assert parse_when("1700000000") == 1_700_000_000.0
    assert parse_when("1700000000000") == 1_700_000_000.0
    assert parse_when("2024-01-01") == parse_when("2024-01-01T00:00:00Z") == 1_704_067_200.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when("2024-01-01T00:00:00")  # no zone
    assert default_state_path(str(tmp_path / "x.jsonl")) == tmp_path / "x.jsonl.replay-state.json"
    assert default_state_path("-") is None


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    args = parser.parse_args(
        ["log.csv", "--format", "rees46", "--speed", "2", "--limit", "5", "--rebase-time",
         "--start", "2019-10-01", "--topic-prefix", "x.", "--bootstrap-servers", "h:1"]
    )  # fmt: skip
    assert (args.format, args.speed, args.limit, args.rebase_time) == ("rees46", 2.0, 5, True)
    settings = replay._settings(args)
    assert settings.topic("clicks") == "x.clicks" and settings.bootstrap_servers == "h:1"
