"""BatchProcessor (the agents' body) against in-memory stand-ins for Faust's producer and table.

Faust's ``agent.test_context()`` cannot drive the agents (app tasks taking whole
fetched batches from the consumer's feeds), so the agents' logic is tested here
through :class:`BatchProcessor`, and the real Faust wiring by
``tests/integration/test_end_to_end.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from faust.types import TP
from pydantic import SecretStr

from recstream.streams.agents import REPARTITIONED, BatchProcessor, add_outputs
from recstream.streams.input_batches import Taken
from recstream.streams.metrics import Metrics
from recstream.streams.pipeline import (
    Outputs,
    Pipeline,
    RawRecord,
    UserIds,
    home_partition,
    repartition_payload,
)
from recstream.streams.records import (
    Click,
    DeadLetter,
    Recommendation,
    ScoredItem,
    Sentiment,
    SessionSummary,
    to_json,
)
from recstream.streams.scoring import (
    FakeRecsScorer,
    FakeSentimentScorer,
    RecsResult,
    RecsScorer,
    Token,
)
from recstream.streams.sessions import UserState
from recstream.streams.settings import Settings
from recstream.streams.state_store import TableStateStore
from recstream.streams.topics import Topics
from recstream.streams.transactions import Transactions

NOW = 1_800_000_000.0
PARTITIONS = 4


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    #: Set by the consumer's ``ack`` (the offset may commit).
    acked: bool = False


@dataclass(slots=True)
class Batch(Taken):
    """A take of stand-in messages, made into the records the consumer's feeds hand over."""

    messages: list[Message] = field(default_factory=list)

    def __getitem__(self, index: int) -> Message:
        return self.messages[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)


class Consumer:
    def __init__(self) -> None:
        self.acked: list[Message] = []

    def acknowledge(self, taken: Taken) -> None:
        assert isinstance(taken, Batch)
        for message in taken.messages:
            assert not message.acked, "acknowledged twice"
            message.acked = True
            self.acked.append(message)


class RecordBatch:
    """aiokafka's ``BatchBuilder``, unbounded."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes, timestamp: None) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []
        #: The transactional id of each record sent (None outside transactions).
        self.routes: list[str | None] = []
        #: Faust's transactional producers and their locks, one per transactional id.
        self._transaction_producers = TransactionProducers(self)
        self._trn_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _ensure_producer(self) -> Producer:
        """Faust's producer stands in for the aiokafka producer under it too."""
        return self

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> RecordBatch:
        return RecordBatch()

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        assert batch.closed  # see test_record_batches
        for key, value in batch.records:
            self.sent.append((topic, key, value, partition))
            self.routes.append(None)
        return self.acknowledgement()

    def acknowledgement(self) -> asyncio.Future[None]:
        """The future the producer resolves once the broker has the record (at once here)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class RoutedProducer:
    """Faust's transactional producer of one id: sends through the test's producer and
    notes the id of every record."""

    def __init__(self, producer: Producer, route: str) -> None:
        self.producer = producer
        self.route = route

    def create_batch(self) -> RecordBatch:
        return self.producer.create_batch()

    async def partitions_for(self, topic: str) -> set[int]:
        return await self.producer.partitions_for(topic)

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        assert self.producer._trn_locks[self.route].locked()  # as Faust's own send
        before = len(self.producer.routes)
        ack = await self.producer.send_batch(batch, topic, partition=partition)
        self.producer.routes[before:] = [self.route] * (len(self.producer.routes) - before)
        return ack


class TransactionProducers(dict[str, RoutedProducer]):
    """One producer per transactional id, made when first asked for."""

    def __init__(self, producer: Producer) -> None:
        super().__init__()
        self.producer = producer

    def get(self, route: str, default: Any = None) -> RoutedProducer:
        return self.setdefault(route, RoutedProducer(self.producer, route))


class Assignor:
    def group_for_topic(self, topic: str) -> int:
        return 0


class Conf:
    id = "app"


class App:
    def __init__(self) -> None:
        self.producer = Producer()
        self.consumer = Consumer()
        self.assignor = Assignor()
        self.conf = Conf()
        self.crash_reason: BaseException | None = None

    async def crash(self, reason: BaseException) -> None:
        self.crash_reason = reason


class NamedTopic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


CHANGELOG = "app-user-state-changelog"


class Table:
    def __init__(self, app: App | None = None) -> None:
        self.app = app or App()
        self.data: dict[bytes, bytes] = {}
        #: Records sent at once (a store without ``defer_changelog``).
        self.changelog: list[tuple[int | None, bytes, bytes | None]] = []
        self.changelog_topic = NamedTopic(CHANGELOG)

    @property
    def flushed(self) -> list[tuple[int | None, bytes | None, bytes | None]]:
        """Records a deferring store flushed through the app's producer."""
        return [(p, k, v) for t, k, v, p in self.app.producer.sent if t == CHANGELOG]

    def send_changelog(
        self, partition: int | None, key: bytes, value: bytes | None, *_: Any
    ) -> None:
        self.changelog.append((partition, key, value))


def make(
    salt: str | None = None,
    defer: bool = False,
    exactly_once: bool = False,
    scoring_threads: int = 1,
    recs: RecsScorer | None = None,
) -> tuple[BatchProcessor, App, Table]:
    settings = Settings(
        partitions=PARTITIONS, user_id_salt=SecretStr(salt) if salt else None, top_k=3
    )
    pipeline = Pipeline(
        settings,
        recs or FakeRecsScorer([f"item-{i}" for i in range(10)]),
        FakeSentimentScorer(),
        partitions=PARTITIONS,
        clock=lambda: NOW,
    )
    app = App()
    table = Table(app)
    topics = Topics(
        inputs={},
        repartition=cast(Any, NamedTopic("app-events-repartition")),
        recommendations="recommendations",
        sentiment="sentiment",
        sessions="sessions",
        deadletter="deadletter",
    )
    transactions = Transactions(cast(Any, app), dict) if exactly_once else None
    store = TableStateStore(cast(Any, table), defer_changelog=defer, transactions=transactions)
    processor = BatchProcessor(
        cast(Any, app), pipeline, store, topics, None, transactions, scoring_threads
    )
    return processor, app, table


def batch(*messages: Message) -> Batch:
    """Stand-in messages as one take of the topics' feeds (the repartition topic's
    records are of kind ``repartitioned``, the others' of their topic's name)."""
    records = [
        RawRecord(
            REPARTITIONED if m.topic.endswith("-repartition") else m.topic,
            m.topic,
            m.partition,
            m.offset,
            m.value,
            m.key,
        )
        for m in messages
    ]
    spans: list[tuple[TP, int, int]] = []  # runs of one topic partition, as a take has them
    for index, m in enumerate(messages):
        tp = TP(m.topic, m.partition)
        if spans and spans[-1][0] == tp and spans[-1][2] == index:
            spans[-1] = (tp, spans[-1][1], index + 1)
        else:
            spans.append((tp, index, index + 1))
    return Batch(records, spans, messages=list(messages))


async def whole(processor: BatchProcessor, kind: str, taken: Batch) -> None:
    """Process a batch and wait until it is completed (outputs sent, records acknowledged)."""
    await processor.process(kind, taken)
    await processor.drain()


def click(eid: str, user: str, partition: int, offset: int = 0) -> Message:
    value = orjson.dumps(
        {"event_id": eid, "user_id": user, "item_id": "item-1", "action": "view", "ts": NOW - 5}
    )
    return Message("clicks", partition, offset, value, user.encode())


def test_records_on_the_home_partition_are_processed_and_others_forwarded() -> None:
    processor, app, table = make(salt="pepper")
    home = home_partition("alice", PARTITIONS)
    other = (home + 1) % PARTITIONS
    pseudo = UserIds("pepper")("alice")

    async def scenario() -> None:
        await whole(
            processor, "clicks", batch(click("c1", "alice", home), click("c2", "alice", other))
        )
        # c2 went to the repartition topic, keyed and placed for alice's home partition.
        forwarded = [s for s in app.producer.sent if s[0] == "app-events-repartition"]
        assert len(forwarded) == 1
        topic, key, value, partition = forwarded[0]
        assert key == pseudo.encode() and partition == home
        assert b"alice" not in value and orjson.loads(value)["kind"] == "clicks"
        # The repartition agent then processes it on the home partition.
        await whole(processor, REPARTITIONED, batch(Message(topic, home, 0, value, key)))

    asyncio.run(scenario())
    recs = [orjson.loads(v) for t, _, v, _ in app.producer.sent if t == "recommendations"]
    assert [r["trigger_event_id"] for r in recs] == ["c1", "c2"]
    assert all(r["user_id"] == pseudo for r in recs)
    # One changelog write per user per batch, on the home partition, under the pseudonym.
    assert [(p, k) for p, k, _ in table.changelog] == [(home, pseudo.encode())] * 2
    assert set(table.data) == {pseudo.encode()}


def test_input_delays_are_recorded_where_the_events_are_processed() -> None:
    """From each event's time to its batch's start (the pipeline's clock), once per event:
    a forwarded click counts on its home partition, not where it was forwarded from.  The
    end-to-end latency is read on the same clock."""
    processor, app, _ = make()
    metrics = processor.metrics = Metrics()
    home = home_partition("erin", PARTITIONS)
    other = (home + 1) % PARTITIONS
    sample = metrics.registry.get_sample_value

    async def scenario() -> None:
        await whole(
            processor, "clicks", batch(click("e1", "erin", home), click("e2", "erin", other))
        )
        assert sample("recstream_input_delay_seconds_count") == 1
        assert sample("recstream_input_delay_seconds_sum") == pytest.approx(5.0)  # NOW - ts
        topic, key, value, _ = next(
            s for s in app.producer.sent if s[0] == "app-events-repartition"
        )
        await whole(processor, REPARTITIONED, batch(Message(topic, home, 0, value, key)))
        assert sample("recstream_input_delay_seconds_count") == 2
        assert sample("recstream_input_delay_seconds_bucket", {"le": "5.0"}) == 2
        assert sample("recstream_end_to_end_latency_seconds_count") == 2
        assert sample("recstream_end_to_end_latency_seconds_sum") == pytest.approx(10.0)

    asyncio.run(scenario())
    processor.close()


def test_invalid_records_are_dead_lettered_and_the_batch_goes_on() -> None:
    processor, app, _ = make()
    home = home_partition("bob", PARTITIONS)
    bad = Message("clicks", home, 1, b"{oops", None)
    review = Message(
        "reviews",
        2,
        0,
        orjson.dumps({"event_id": "r1", "user_id": "bob", "item_id": "i", "text": "好", "ts": NOW}),
    )
    asyncio.run(whole(processor, "clicks", batch(click("c1", "bob", home), bad)))
    asyncio.run(whole(processor, "reviews", batch(review)))
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, _, value, _ in app.producer.sent:
        by_topic.setdefault(topic, []).append(orjson.loads(value))
    assert [d["offset"] for d in by_topic["deadletter"]] == [1]
    assert by_topic["deadletter"][0]["error"].startswith("bad_json")
    assert [r["trigger_event_id"] for r in by_topic["recommendations"]] == ["c1"]
    assert [s["event_id"] for s in by_topic["sentiment"]] == ["r1"]
    processor.close()


class SkippedStub:
    """Stands in for SkippedRecords: the first batch reveals offsets 0-1 as skipped,
    and offsets in ``repeats`` as delivered again."""

    def __init__(self, records: list[RawRecord], repeats: frozenset[int] = frozenset()) -> None:
        self.records = records
        self.repeats = repeats
        self.asked: list[tuple[str, list[tuple[str, int, int]]]] = []

    async def recover(
        self, kind: str, positions: list[tuple[str, int, int]]
    ) -> tuple[list[RawRecord], list[int]]:
        self.asked.append((kind, positions))
        found, self.records = self.records, []
        return found, [i for i, (_, _, offset) in enumerate(positions) if offset in self.repeats]


def test_records_the_consumer_skipped_are_processed_first() -> None:
    processor, app, _ = make()
    home = home_partition("carol", PARTITIONS)
    skipped = [
        RawRecord("clicks", "clicks", home, e.offset, e.value, e.key)
        for e in (click("c0", "carol", home, 0), click("c1", "carol", home, 1))
    ]
    stub = SkippedStub(skipped, repeats=frozenset({1}))
    processor.skipped = cast(Any, stub)
    processor.metrics = Metrics()
    asyncio.run(whole(processor, "clicks", batch(click("c2", "carol", home, 2))))
    # offset 1 delivered again after it was re-read: dropped
    asyncio.run(
        whole(
            processor,
            "clicks",
            batch(click("c1", "carol", home, 1), click("c3", "carol", home, 3)),
        )
    )
    assert stub.asked == [
        ("clicks", [("clicks", home, 2)]),
        ("clicks", [("clicks", home, 1), ("clicks", home, 3)]),
    ]
    recs = [orjson.loads(v) for t, _, v, _ in app.producer.sent if t == "recommendations"]
    assert [r["trigger_event_id"] for r in recs] == ["c0", "c1", "c2", "c3"]
    assert processor.metrics.registry.get_sample_value("recstream_reread_records_total") == 2
    assert processor.metrics.registry.get_sample_value("recstream_repeated_records_total") == 1
    processor.close()


def test_each_scored_batch_records_its_size_time_and_the_scoring_thread_s_time() -> None:
    processor, _, _ = make()
    metrics = processor.metrics = Metrics()
    home = home_partition("dave", PARTITIONS)
    asyncio.run(whole(processor, "clicks", batch(click("d0", "dave", home, 0))))
    later = batch(click("d1", "dave", home, 1), click("d2", "dave", home, 2))
    asyncio.run(whole(processor, "clicks", later))
    sample = metrics.registry.get_sample_value
    assert sample("recstream_scoring_batch_size_count", {"model": "recs"}) == 2
    assert sample("recstream_scoring_batch_size_sum", {"model": "recs"}) == 3
    wall = sample("recstream_scoring_latency_seconds_sum", {"model": "recs"})
    states = {
        state: sample("recstream_scoring_thread_seconds_total", {"state": state})
        for state in ("cpu", "runqueue", "blocked")
    }
    assert wall is not None and wall > 0 and states["cpu"] and states["cpu"] > 0
    # the states split the scoring wall time (the clocks tick apart by a little)
    assert sum(v or 0.0 for v in states.values()) == pytest.approx(wall, rel=0.2, abs=1e-3)
    processor.close()


class SlowAckProducer(Producer):
    """Acknowledges nothing until the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.acks: list[asyncio.Future[None]] = []

    def acknowledgement(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(future)
        return future


def test_state_reaches_the_changelog_only_after_the_outputs_are_acknowledged() -> None:
    """A crash before the acks must not leave a changelog that remembers the batch's
    event ids (the replayed events would be dropped as duplicates: outputs lost)."""
    processor, app, table = make(defer=True)
    producer = SlowAckProducer()
    app.producer = producer
    home = home_partition("carol", PARTITIONS)

    async def scenario() -> None:
        task = asyncio.create_task(whole(processor, "clicks", batch(click("c1", "carol", home))))
        while not producer.acks:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert [t for t, *_ in producer.sent] == ["recommendations"]
        assert processor.store.held == 0  # outputs sent but not acknowledged yet
        assert b"carol" in table.data  # the local table is already up to date
        for ack in producer.acks:
            ack.set_result(None)
        await task
        # released: held for the next flush (the consumer's commit), not sent yet
        assert processor.store.held == 1 and table.flushed == []
        flushing = asyncio.create_task(processor.store.flush())
        while len(producer.acks) < 2:
            await asyncio.sleep(0)
        assert not flushing.done()  # a flush waits for the broker's acknowledgement
        producer.acks[1].set_result(None)
        await flushing
        assert [(p, k) for p, k, _ in table.flushed] == [(home, b"carol")]

    asyncio.run(scenario())
    processor.close()


def test_a_concurrent_batch_or_sweep_does_not_release_another_batchs_changelog() -> None:
    """The race behind issue #7's lost outputs: while one agent waits for its acks,
    another agent's batch and the idle sweep must not send the waiting batch's state."""
    processor, app, table = make(defer=True)
    producer = SlowAckProducer()
    app.producer = producer
    home = home_partition("dave", PARTITIONS)
    other_user = next(u for u in (f"u{i}" for i in range(100)) if u != "dave")
    other_home = home_partition(other_user, PARTITIONS)

    async def scenario() -> None:
        # two agents (clicks and the repartition topic) with a batch in flight each
        first = asyncio.create_task(whole(processor, "clicks", batch(click("d1", "dave", home))))
        while len(producer.acks) < 1:
            await asyncio.sleep(0)
        forwarded = click("o1", other_user, other_home)
        forwarded.value = repartition_payload(
            Click("o1", other_user, "item-1", "view", NOW - 5), "clicks"
        )
        second = asyncio.create_task(whole(processor, REPARTITIONED, batch(forwarded)))
        while len(producer.acks) < 2:
            await asyncio.sleep(0)
        await processor.sweep_idle()  # must not wait for, nor send, the pending batches
        assert processor.store.held == 0
        producer.acks[1].set_result(None)  # the later batch is acknowledged first ...
        await asyncio.sleep(0.01)
        assert not second.done() and processor.store.held == 0  # ... but waits for the first
        producer.acks[0].set_result(None)
        await asyncio.gather(first, second)
        assert processor.store.held == 2
        flushing = asyncio.create_task(processor.store.flush())
        while len(table.flushed) < 2:  # one batch per partition: one or two acks
            await asyncio.sleep(0)
        for ack in producer.acks[2:]:
            ack.set_result(None)
        await flushing
        assert [k for _, k, _ in table.flushed] == [b"dave", other_user.encode()]

    asyncio.run(scenario())
    processor.close()


def test_changelog_batches_keep_the_order_of_the_changes_to_one_key() -> None:
    """Two steps changing one key, released in reverse order: the changelog ends with the
    latest local value (and, held until the flush, gets only that one)."""
    table = Table()
    store = TableStateStore(cast(Any, table), defer_changelog=True)

    async def scenario() -> None:
        store.put("erin", b"v1", 2)
        early = store.seal()
        store.put("erin", b"v2", 2)
        late = store.seal()
        waiting = asyncio.create_task(store.publish(late))
        await asyncio.sleep(0)
        assert not waiting.done() and store.held == 0
        await store.publish(early)
        await waiting
        await store.flush()

    asyncio.run(scenario())
    assert table.flushed == [(2, b"erin", b"v2")]
    assert table.data[b"erin"] == b"v2"


def test_held_changelog_records_are_coalesced_per_key_until_the_flush() -> None:
    """Many batches between two commits: one changelog record per user, its latest state;
    a user deleted last gets a tombstone."""
    processor, app, table = make(defer=True)
    store = processor.store
    users = {home_partition(f"u{i}", PARTITIONS): f"u{i}" for i in range(50)}
    first, second = users[0], users[1]

    async def scenario() -> None:
        for n in range(5):
            clicks = [click(f"a{n}", first, 0, n), click(f"b{n}", second, 1, n)]
            await whole(processor, "clicks", batch(*clicks))
        store.delete(second, 1)
        await store.publish(store.seal())
        assert store.held == 2
        await store.flush()
        assert store.held == 0
        await store.flush()  # nothing new: nothing sent

    asyncio.run(scenario())
    assert table.flushed == [
        (0, first.encode(), table.data[first.encode()]),
        (1, second.encode(), None),
    ]
    recs = [t for t, *_ in app.producer.sent if t == "recommendations"]
    assert len(recs) == 10


def test_records_released_during_a_flush_go_out_after_it() -> None:
    """One flush at a time: a key changed while its earlier value is in flight reaches the
    changelog after that value, in the next flush."""
    table = Table()
    producer = SlowAckProducer()
    table.app.producer = producer
    store = TableStateStore(cast(Any, table), defer_changelog=True)

    async def scenario() -> None:
        store.put("fay", b"v1", 3)
        await store.publish(store.seal())
        first = asyncio.create_task(store.flush())
        while not producer.acks:
            await asyncio.sleep(0)
        store.put("fay", b"v2", 3)
        await store.publish(store.seal())
        second = asyncio.create_task(store.flush())
        await asyncio.sleep(0.01)
        assert [v for *_, v in table.flushed] == [b"v1"] and not second.done()
        producer.acks[0].set_result(None)
        await first
        while len(producer.acks) < 2:
            await asyncio.sleep(0)
        producer.acks[1].set_result(None)
        await second

    asyncio.run(scenario())
    assert [v for *_, v in table.flushed] == [b"v1", b"v2"]


def test_an_idle_sweep_flushes_what_it_changed() -> None:
    """No offset commit follows a sweep of idle partitions: the sweep flushes itself."""
    processor, app, table = make(defer=True)
    user = "u1"
    home = home_partition(user, PARTITIONS)
    asyncio.run(whole(processor, "clicks", batch(click("c1", user, home))))
    assert processor.store.held == 1
    processor.pipeline.watermarks[home] = NOW + 10_000  # far past the session gap
    processor._idle_since[home] = 0.0
    asyncio.run(processor.sweep_idle())
    assert processor.store.held == 0
    assert [k for _, k, _ in table.flushed] == [user.encode()]
    assert [t for t, *_ in app.producer.sent].count("sessions") == 1


def test_stored_state_is_held_at_its_own_size() -> None:
    """orjson over-allocates the bytes it returns (4 KiB for a short document); the table
    must not keep those buffers, or state memory is several times the state."""
    table = Table()
    store = TableStateStore(cast(Any, table))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1_000):
            store.put(f"user-{n}", orjson.dumps({"user": n}), 0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1_000 * 1_024, f"{grown / 1_000:.0f} bytes per 12-byte state"


def test_exactly_once_sends_each_partitions_work_in_that_partitions_transaction() -> None:
    processor, app, _ = make(exactly_once=True)
    users = {home_partition(f"u{i}", PARTITIONS): f"u{i}" for i in range(50)}
    wrong_home = click("a2", users[1], 0, 6)  # forwarded from partition 0 to partition 1
    events = batch(click("a1", users[0], 0, 5), click("b1", users[1], 1, 8), wrong_home)
    asyncio.run(whole(processor, "clicks", events))
    by_route: dict[str | None, list[str]] = {}
    for (topic, *_), route in zip(app.producer.sent, app.producer.routes, strict=True):
        by_route.setdefault(route, []).append(topic)
    changelog = "app-user-state-changelog"
    assert sorted(by_route["app-0-0"]) == sorted(
        ["recommendations", "app-events-repartition", changelog]
    )
    assert sorted(by_route["app-0-1"]) == sorted(["recommendations", changelog])
    assert set(by_route) == {"app-0-0", "app-0-1"}
    assert all(event.acked for event in events)  # acknowledged before the gate opens


def test_exactly_once_sends_every_partitions_part_before_any_acknowledgement() -> None:
    """The parts of a batch go to their transactions side by side: the second part's
    records do not wait for the broker to acknowledge the first part's."""
    processor, app, _ = make(exactly_once=True)
    producer = SlowAckProducer()
    app.producer = producer
    users = {home_partition(f"u{i}", PARTITIONS): f"u{i}" for i in range(50)}
    events = batch(click("a1", users[0], 0, 5), click("b1", users[1], 1, 8))

    async def scenario() -> None:
        task = asyncio.create_task(whole(processor, "clicks", events))
        # no acknowledgement is given meanwhile: the second part must get there without
        # (the parts are scored in threads, so wait on the clock, not a number of steps)
        deadline = time.monotonic() + 10.0
        while not {"app-0-0", "app-0-1"} <= set(producer.routes):
            assert time.monotonic() < deadline, producer.routes
            await asyncio.sleep(0.001)
        assert not any(ack.done() for ack in producer.acks) and not task.done()
        assert not any(event.acked for event in events)
        while not task.done():  # then the state changes' records, acknowledged as they come
            for ack in producer.acks:
                if not ack.done():
                    ack.set_result(None)
            await asyncio.sleep(0)
        await task
        assert all(event.acked for event in events)

    asyncio.run(scenario())
    processor.close()


def test_exactly_once_sweep_sends_each_partitions_sessions_in_its_transaction() -> None:
    processor, app, _ = make(exactly_once=True)
    user = "u1"
    home = home_partition(user, PARTITIONS)
    asyncio.run(whole(processor, "clicks", batch(click("c1", user, home))))
    app.producer.sent.clear()
    app.producer.routes.clear()
    processor.pipeline.watermarks[home] = NOW + 10_000  # far past the session gap
    processor._idle_since[home] = 0.0
    asyncio.run(processor.sweep_idle())
    topics = [topic for topic, *_ in app.producer.sent]
    assert topics == ["sessions", "app-user-state-changelog"]
    assert app.producer.routes == [f"app-0-{home}"] * 2


def test_a_transactional_store_needs_the_route_of_every_batch() -> None:
    transactions = Transactions(cast(Any, App()), dict)
    store = TableStateStore(cast(Any, Table()), transactions=transactions)
    with pytest.raises(ValueError, match="route"):
        store.seal()


class FailingProducer(Producer):
    """Accepts ``accepted`` records, then fails (a broken connection mid-batch)."""

    def __init__(self, accepted: int) -> None:
        super().__init__()
        self.accepted = accepted

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        if len(self.sent) + len(batch.records) > self.accepted:
            raise ConnectionError("broker gone")
        return await super().send_batch(batch, topic, partition=partition)


def test_exactly_once_never_commits_after_a_batch_failed_half_way() -> None:
    processor, app, _ = make(exactly_once=True)
    app.producer = FailingProducer(accepted=1)
    events = batch(click("a1", "u0", home_partition("u0", PARTITIONS)))
    with pytest.raises(ConnectionError):
        asyncio.run(whole(processor, "clicks", events))
    assert not events[0].acked
    assert processor.transactions is not None
    with pytest.raises(RuntimeError, match="failed after sending part"):
        asyncio.run(processor.transactions.commit())


def test_a_failed_batch_is_never_acknowledged_and_stops_the_worker() -> None:
    """A batch that fails is never acknowledged (its offsets never commit), its state
    never reaches the changelog, and the worker stops."""
    processor, app, table = make(defer=True)
    app.producer = FailingProducer(accepted=0)
    home = home_partition("u0", PARTITIONS)
    failed = batch(click("a1", "u0", home))
    ok = batch(click("a2", "u0", home))

    async def scenario() -> None:
        await processor.process("clicks", failed)  # returns: its completion is a task
        with pytest.raises(ConnectionError):  # the agent's next batch learns of it
            await processor.process("clicks", ok)
        await asyncio.sleep(0)
        assert isinstance(app.crash_reason, ConnectionError)  # also seen when idle
        with pytest.raises(RuntimeError, match="changelog"):  # no offset commit follows
            await processor.store.flush()

    asyncio.run(scenario())
    assert not failed[0].acked and app.consumer.acked == []
    assert processor.store.held == 0 and table.flushed == []
    processor.close()


def test_the_next_batch_is_taken_while_the_previous_one_is_scored_and_sent() -> None:
    """At-least-once, an agent's batch is completed (outputs, acknowledgement) in a task:
    the next batch's sessions are applied meanwhile, its outputs follow the previous
    batch's to the producer without waiting for their acknowledgements, and batches are
    acknowledged in order."""
    processor, app, table = make(defer=True)
    producer = SlowAckProducer()
    app.producer = producer
    home = home_partition("gus", PARTITIONS)
    first, second = batch(click("g1", "gus", home, 0)), batch(click("g2", "gus", home, 1))

    async def scenario() -> None:
        await processor.process("clicks", first)
        while not producer.acks:
            await asyncio.sleep(0)
        assert not first[0].acked  # its output is not acknowledged yet
        taking = asyncio.create_task(processor.process("clicks", second))
        await asyncio.sleep(0.01)
        # the second batch was applied to the session and sent, but waits for the first
        assert len(producer.acks) == 2 and not taking.done()
        assert len(UserState.from_bytes(table.data[b"gus"]).tokens(50)) == 2
        producer.acks[1].set_result(None)  # the second batch's acknowledgement first ...
        await asyncio.sleep(0.01)
        assert not second[0].acked and not taking.done()  # ... is not enough
        producer.acks[0].set_result(None)
        await taking  # the agent may take its third batch once the first is complete
        await processor.drain()
        assert second[0].acked

    asyncio.run(scenario())
    recs = [orjson.loads(v) for t, _, v, _ in app.producer.sent if t == "recommendations"]
    assert [r["trigger_event_id"] for r in recs] == ["g1", "g2"]
    processor.close()


class CountingScorer(FakeRecsScorer):
    """A fake recommender that takes 50 ms a call and counts the calls running at once."""

    def __init__(self) -> None:
        super().__init__([f"item-{i}" for i in range(10)])
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        time.sleep(0.05)
        with self._lock:
            self._running -= 1
        return super().recommend(histories, exclude, k)


@pytest.mark.parametrize("threads", [1, 2])
def test_scoring_threads_score_that_many_batches_of_an_agent_at_once(threads: int) -> None:
    """An agent keeps ``scoring_threads + 1`` batches in flight: that many are scored at
    once, the next one waits for the oldest, and they complete in order."""
    scorer = CountingScorer()
    processor, app, _ = make(defer=True, scoring_threads=threads, recs=scorer)
    producer = SlowAckProducer()
    app.producer = producer
    home = home_partition("ida", PARTITIONS)
    batches = [batch(click(f"i{n}", "ida", home, n)) for n in range(threads + 2)]

    async def scenario() -> None:
        for queued in batches[:threads]:  # each returns at once: its completion is a task
            await processor.process("clicks", queued)
        taking = asyncio.create_task(processor.process("clicks", batches[threads]))
        while not producer.acks:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)  # every batch in flight is scored and sent by now
        assert not taking.done()  # one more in flight than scoring threads: it waits
        assert len(producer.acks) == threads + 1  # sent without waiting for the first's acks
        for ack in reversed(producer.acks[1:]):  # acknowledged last to first ...
            ack.set_result(None)
        await asyncio.sleep(0.01)
        assert not any(m[0].acked for m in batches)  # ... they wait for the first
        producer.acks[0].set_result(None)
        await taking
        assert all(m[0].acked for m in batches[: threads + 1])
        last = asyncio.create_task(processor.process("clicks", batches[threads + 1]))
        while not batches[-1][0].acked:
            for ack in producer.acks:
                if not ack.done():
                    ack.set_result(None)
            await asyncio.sleep(0.001)
        await last
        await processor.drain()

    asyncio.run(scenario())
    assert scorer.most_at_once == threads
    assert [m[0].acked for m in batches] == [True] * (threads + 2)
    recs = [orjson.loads(v) for t, _, v, _ in app.producer.sent if t == "recommendations"]
    assert [r["trigger_event_id"] for r in recs] == [f"i{n}" for n in range(threads + 2)]
    processor.close()


def test_the_processor_tells_whether_a_batch_is_being_scored() -> None:
    """The agents wait for more records only while it is (see InputFeed.take)."""
    scorer = CountingScorer()
    processor, _, _ = make(defer=True, recs=scorer)
    home = home_partition("jo", PARTITIONS)

    async def scenario() -> None:
        assert not processor.busy_scoring()
        await processor.process("clicks", batch(click("j1", "jo", home, 0)))
        assert processor.busy_scoring()  # the scorer takes 50 ms
        await processor.drain()
        assert not processor.busy_scoring()

    asyncio.run(scenario())
    processor.close()


class FirstCallSlowScorer(FakeRecsScorer):
    """A fake recommender whose first call takes 100 ms and the others none."""

    def __init__(self) -> None:
        super().__init__([f"item-{i}" for i in range(10)])
        self._calls = 0

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        self._calls += 1
        if self._calls == 1:
            time.sleep(0.1)
        return super().recommend(histories, exclude, k)


def test_outputs_reach_the_producer_in_batch_order_when_a_later_batch_is_scored_first() -> None:
    processor, app, _ = make(defer=True, scoring_threads=2, recs=FirstCallSlowScorer())
    home = home_partition("kim", PARTITIONS)
    first, second = batch(click("k1", "kim", home, 0)), batch(click("k2", "kim", home, 1))

    async def scenario() -> None:
        await processor.process("clicks", first)
        await processor.process("clicks", second)  # scored while the first still is
        await processor.drain()

    asyncio.run(scenario())
    assert first[0].acked and second[0].acked
    recs = [orjson.loads(v) for t, _, v, _ in app.producer.sent if t == "recommendations"]
    assert [r["trigger_event_id"] for r in recs] == ["k1", "k2"]
    processor.close()


def test_a_holding_store_sends_nothing_until_its_leader_flushes() -> None:
    """A derived table's store (``hold_changelog``): its writes wait, the latest per key,
    and go out when the store it follows flushes (before the offset commit)."""
    state_table = Table()
    leader = TableStateStore(cast(Any, state_table), defer_changelog=True)
    derived_table = Table(state_table.app)
    derived = TableStateStore(cast(Any, derived_table), hold_changelog=True)
    leader.also_flush(derived)
    derived.put("u1", b"first", 0)
    derived.put("u1", b"second", 0)
    derived.put("u2", b"only", 1)
    assert derived.held == 2 and not derived_table.changelog and not derived_table.flushed
    assert derived_table.data[b"u1"] == b"second"  # the local table changes at once
    asyncio.run(leader.flush())
    assert derived.held == 0
    assert sorted(derived_table.flushed) == [(0, b"u1", b"second"), (1, b"u2", b"only")]
    assert not derived_table.changelog  # nothing went out one send at a time


def test_a_store_that_does_not_hold_sends_each_write_at_once() -> None:
    table = Table()
    store = TableStateStore(cast(Any, table))
    store.put("u1", b"v", 0)
    assert table.changelog == [(0, b"u1", b"v")] and store.held == 0


@dataclass
class RecordingOutbox:
    """An outbox that keeps what was queued, topic by topic, as (key, JSON object)."""

    queued: dict[str, list[tuple[bytes | None, Any]]] = field(default_factory=dict)

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        assert value is not None and partition is None
        self.queued.setdefault(topic, []).append((key, orjson.loads(value)))

    def add_keyed(self, topic: str, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        for key, value in zip(keys, values, strict=True):
            self.add(topic, key, value)

    async def send(self) -> list[Any]:
        return []


def test_outputs_are_queued_as_json_keyed_by_user_and_dead_letters_without_a_key() -> None:
    recs = [
        Recommendation(f"u{n}", f"u{n}:1", f"e{n}", (ScoredItem("i1", 0.5),), "v", NOW, NOW)
        for n in range(3)
    ]
    sentiment = Sentiment("r1", "u9", "i2", "pos", {"neg": 0.1, "pos": 0.9}, "v")
    session = SessionSummary("u5", "u5:1", NOW - 60, NOW, {"view": 1}, ("i1",), ())
    dead = DeadLetter.of("clicks", 2, 7, "bad_json: nope", b"{")
    out = Outputs(recs, [sentiment], [session], [dead])
    outbox = RecordingOutbox()
    topics = Topics({}, cast(Any, None), "recs-out", "sentiment-out", "sessions-out", "dead")
    add_outputs(outbox, out, topics)
    assert outbox.queued["recs-out"] == [
        (f"u{n}".encode(), orjson.loads(to_json(rec))) for n, rec in enumerate(recs)
    ]
    assert outbox.queued["sentiment-out"] == [(b"u9", orjson.loads(to_json(sentiment)))]
    assert outbox.queued["sessions-out"] == [(b"u5", orjson.loads(to_json(session)))]
    assert outbox.queued["dead"] == [(None, orjson.loads(to_json(dead)))]
    # JSON the caller already wrote for the recommendations is queued as it is.
    outbox = RecordingOutbox()
    add_outputs(outbox, out, topics, [orjson.dumps({"n": n}) for n in range(3)])
    assert outbox.queued["recs-out"] == [(f"u{n}".encode(), {"n": n}) for n in range(3)]
