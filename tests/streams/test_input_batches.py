"""Fetched batches to the agents: the consumer's delivery and the feeds' take()."""

from __future__ import annotations

import asyncio
import gc
import struct
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import FetchError, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import TopicPartitionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from recstream.streams import input_batches
from recstream.streams.app import build_app
from recstream.streams.broker import EmbeddedBroker
from recstream.streams.input_batches import (
    BatchDeliveringConsumer,
    FedBatch,
    InputFeed,
    ParsedRecords,
    Taken,
    feeds_of,
    fetch_state,
    hand_out_parsed_records,
    pace_empty_fetches,
)
from recstream.streams.pipeline import RawRecord
from recstream.streams.scoring import FakeRecsScorer, FakeSentimentScorer
from recstream.streams.settings import Settings

CLICKS = "clicks"
CHANGELOG = "app-user-state-changelog"


def record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = f"{topic}:{offset}".encode()
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", value, None, 1, len(value), ())


def record_batch(
    base: int,
    values: Sequence[bytes],
    *,
    producer_id: int = -1,
    control: int | None = None,
) -> bytes:
    """A record batch as a broker stores it, its first record at offset ``base``: of
    ``producer_id``'s transaction when one is given; with ``control``, the transaction's
    marker instead (0: abort, 1: commit)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=int(producer_id >= 0),
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    if control is not None:
        values = [struct.pack(">hi", 0, 0)]  # version, coordinator epoch
    for delta, value in enumerate(values):
        key = struct.pack(">hh", 0, control) if control is not None else b"k%d" % (base + delta)
        builder.append(delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    if control is not None:  # the attributes' control bit, and the checksum over it
        struct.pack_into(">h", data, 21, struct.unpack_from(">h", data, 21)[0] | 0x20)
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def parsed(topic: str, partition: int, offsets: Sequence[int]) -> list[Any]:
    """Records at ``offsets`` as aiokafka parses them from a fetch (``topic:offset`` values)."""
    tp = TopicPartition(topic, partition)
    data = b"".join(record_batch(o, [f"{topic}:{o}".encode()]) for o in offsets)
    return list(ParsedRecords.like(PartitionRecords(tp, MemoryRecords(data), [], 0, *_PLAIN)))


#: What aiokafka's fetcher gives a partition's records besides the data: no key or value
#: deserializer, checksums checked, and the isolation level (0: read everything).
_PLAIN = (None, None, True, 0)


class _Thread:
    """Stands in for the consumer thread: notes what it is asked to fetch again."""

    def __init__(self) -> None:
        self.again: list[dict[TP, int]] = []

    async def fetch_again(self, first_offsets: dict[TP, int]) -> None:
        self.again.append(dict(first_offsets))


def started(app: Any) -> BatchDeliveringConsumer:
    """The app's consumer as a running worker has it (no broker: nothing is fetched, and
    its thread is a :class:`_Thread`)."""
    consumer = app.consumer
    assert isinstance(consumer, BatchDeliveringConsumer)
    consumer._thread = _Thread()  # type: ignore[assignment]
    consumer.highwater = lambda tp: 100  # type: ignore[method-assign]
    app.topics._acking_topics.update({CLICKS, CHANGELOG})  # set when Faust subscribes
    app.flow_control.resume()
    consumer.resume_flow()
    return consumer


@pytest.fixture
async def app() -> Any:
    """Built on the test's event loop (the app's flow control waits on it)."""
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    return build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())


async def test_a_fed_topic_gets_each_partitions_records_as_one_tracked_batch(app: Any) -> None:
    consumer = started(app)
    delivered: list[Any] = []

    async def one_by_one(message: Any) -> None:
        delivered.append(message)

    consumer.callback = one_by_one
    tp0, tp1, log0 = TP(CLICKS, 0), TP(CLICKS, 1), TP(CHANGELOG, 0)
    records = {
        tp0: parsed(CLICKS, 0, [3, 4, 5]),
        tp1: parsed(CLICKS, 1, [0]),
        log0: [record(CHANGELOG, 0, o) for o in (7, 8)],
    }
    await consumer._deliver(records, {tp0, tp1, log0}, feeds_of(app))
    queue = feeds_of(app)[CLICKS].queue
    batches = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [b.records for b in batches] == [
        [RawRecord(CLICKS, CLICKS, 0, o, b"clicks:%d" % o, b"k%d" % o) for o in (3, 4, 5)],
        [RawRecord(CLICKS, CLICKS, 1, 0, b"clicks:0", b"k0")],
    ]
    assert [b.tp for b in batches] == [tp0, tp1]
    # Faust's bookkeeping: read offsets, and pending acknowledgements a rebalance waits
    # for (each batch stands for its records)
    assert consumer._read_offset[tp0] == 5 and consumer._read_offset[tp1] == 0
    assert set(consumer._unacked_messages) == set(batches)
    assert [b.generation_id for b in batches] == [app.consumer_generation_id] * 2
    # other topics (table changelogs) keep Faust's path, a record at a time
    assert [(m.topic, m.offset) for m in delivered] == [(CHANGELOG, 7), (CHANGELOG, 8)]


async def test_a_commit_due_by_count_runs_beside_the_delivery(app: Any) -> None:
    """Faust commits every ``broker_commit_every`` acks inside its delivery loop; the
    worker's commit flushes the changelog first, so it runs in its own task (one at a
    time) and the records after it are delivered meanwhile."""
    consumer = started(app)
    release = asyncio.Event()
    commits: list[str] = []

    async def slow_commit(*args: Any, **kwargs: Any) -> bool:
        commits.append("started")
        await release.wait()
        commits.append("done")
        return True

    consumer.commit = slow_commit  # type: ignore[method-assign]
    consumer._commit_every = 2
    tp = TP(CLICKS, 0)
    await consumer._deliver({tp: [record(CLICKS, 0, 0)]}, {tp}, feeds_of(app))
    consumer._n_acked = 2  # two acknowledged: a commit is due
    # (awaited in the delivery, the commit would hold it until released)
    await asyncio.wait_for(consumer._deliver({tp: [record(CLICKS, 0, 1)]}, {tp}, feeds_of(app)), 5)
    await asyncio.sleep(0)
    assert commits == ["started"] and consumer._n_acked == 0
    consumer._n_acked = 2  # due again while it runs: no second one
    await consumer._deliver({tp: [record(CLICKS, 0, 2)]}, {tp}, feeds_of(app))
    queue = feeds_of(app)[CLICKS].queue
    delivered = [queue.get_nowait().records for _ in range(queue.qsize())]
    assert [r.offset for records in delivered for r in records] == [0, 1, 2]
    release.set()
    await asyncio.sleep(0.01)
    assert commits == ["started", "done"]
    release.clear()
    consumer._n_acked = 2  # the next one due starts anew
    await consumer._deliver({tp: [record(CLICKS, 0, 3)]}, {tp}, feeds_of(app))
    await asyncio.sleep(0)
    assert commits == ["started", "done", "started"]
    release.set()


class _EachSensor(faust.Sensor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[TP, int]] = []
        self.messages: list[Any] = []

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        self.seen.append((tp, offset))
        self.messages.append(message)


class _BatchSensor(_EachSensor):
    def on_messages_in(self, tp: TP, messages: Sequence[Any]) -> None:
        self.seen.append((tp, len(messages)))


async def test_sensors_hear_of_a_batch_once_or_of_each_message(app: Any) -> None:
    consumer = started(app)
    each, batched = _EachSensor(), _BatchSensor()
    app.sensors.add(each)
    app.sensors.add(batched)
    tp = TP(CLICKS, 2)
    await consumer._deliver({tp: parsed(CLICKS, 2, [5, 6, 7])}, {tp}, feeds_of(app))
    assert isinstance(batched, input_batches.BatchSensor)
    assert not isinstance(each, input_batches.BatchSensor)
    assert each.seen == [(tp, 5), (tp, 6), (tp, 7)]
    # Faust's messages, as Faust makes them of aiokafka's ConsumerRecords
    first = each.messages[0]
    assert (first.topic, first.partition, first.offset, first.key) == (CLICKS, 2, 5, b"k5")
    assert (first.value, first.serialized_key_size, first.serialized_value_size) == (
        b"clicks:5",
        2,
        8,
    )
    assert (first.timestamp, first.headers, first.tp) == (1_700_000_000.0, (), tp)
    assert batched.seen == [(tp, 3)]
    later = _BatchSensor()  # added between two deliveries: heard from the next one on
    app.sensors.add(later)
    await consumer._deliver({tp: [record(CLICKS, 2, 8)]}, {tp}, feeds_of(app))
    assert later.seen == [(tp, 1)] and batched.seen == [(tp, 3), (tp, 1)]
    assert each.seen[-1] == (tp, 8)


async def test_acknowledged_batches_make_their_offsets_committable(app: Any) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    consumer._committed_offset[tp] = 2
    await consumer._deliver({tp: [record(CLICKS, 0, o) for o in (3, 4)]}, {tp}, feeds_of(app))
    await consumer._deliver({tp: [record(CLICKS, 0, 5)]}, {tp}, feeds_of(app))
    feed = feeds_of(app)[CLICKS]
    first, second = await feed.take(2, 0), await feed.take(10, 0)
    assert [r.offset for r in first.records + second.records] == [3, 4, 5]
    consumer.acknowledge(second)
    assert consumer._new_offset(tp) is None  # 3 and 4 are not done: nothing commits
    assert consumer._unacked_messages  # a rebalance still waits for the first batch
    consumer.acknowledge(first)
    assert consumer._new_offset(tp) == 6
    assert not consumer._unacked_messages
    assert consumer._n_acked == 3 and all(b.acked for b in first.completes + second.completes)
    consumer.acknowledge(first)  # again: nothing more to count
    consumer._acked_index[tp].clear()  # (even when the offsets were forgotten since)
    consumer.acknowledge(second)
    assert consumer._n_acked == 3


async def test_acknowledging_counts_as_fausts_ack_does(app: Any) -> None:
    """Offsets below the committed one, or acknowledged already, are not counted again;
    a batch's partitions are told apart; messages of topics without acknowledgements
    count for nothing."""
    consumer = started(app)
    tp0, tp1 = TP(CLICKS, 0), TP(CLICKS, 1)
    consumer._committed_offset[tp0] = 5
    records = {
        tp0: [record(CLICKS, 0, o) for o in (4, 5, 6)],
        tp1: [record(CLICKS, 1, o) for o in (0, 1)],
    }
    await consumer._deliver(records, {tp0, tp1}, feeds_of(app))
    feed = feeds_of(app)[CLICKS]
    taken = await feed.take(10, 0)
    consumer._acked_index[tp1].add(1)  # acknowledged before (e.g. by Faust's own ack)
    consumer._acked[tp1].append(1)
    consumer.acknowledge(taken)
    assert consumer._acked[tp0] == [5, 6] and consumer._acked[tp1] == [1, 0]
    assert consumer._n_acked == 3
    app.topics._acking_topics.discard(CLICKS)
    await consumer._deliver({tp0: [record(CLICKS, 0, 7)]}, {tp0}, feeds_of(app))
    consumer.acknowledge(await feed.take(10, 0))
    assert consumer._acked[tp0] == [5, 6] and consumer._n_acked == 3


async def test_a_batch_taken_in_parts_is_waited_for_until_its_last_part_is_acknowledged(
    app: Any,
) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    await consumer._deliver({tp: [record(CLICKS, 0, o) for o in (0, 1, 2)]}, {tp}, feeds_of(app))
    feed = feeds_of(app)[CLICKS]
    head = await feed.take(2, 0)
    consumer.acknowledge(head)
    assert consumer._unacked_messages  # offset 2 is still with the feed
    assert consumer._new_offset(tp) == 2
    consumer.acknowledge(await feed.take(2, 0))
    assert not consumer._unacked_messages and consumer._new_offset(tp) == 3


async def test_the_monitor_counts_a_batch_at_once(app: Any) -> None:
    consumer = started(app)
    monitor = app.monitor
    assert isinstance(monitor, input_batches.BatchMonitor)
    app.sensors.add(monitor)  # as the worker's start-up does
    tp = TP(CLICKS, 1)
    await consumer._deliver({tp: [record(CLICKS, 1, o) for o in (7, 8, 9)]}, {tp}, feeds_of(app))
    await consumer._deliver({tp: [record(CLICKS, 1, 10)]}, {tp}, feeds_of(app))
    assert monitor.messages_received_total == 4
    assert monitor.messages_received_by_topic[CLICKS] == 4
    assert monitor.tp_read_offsets[tp] == 10


async def test_records_read_already_are_skipped_and_offset_gaps_noted(app: Any) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    consumer._read_offset[tp] = 4
    records = [record(CLICKS, 0, o) for o in (2, 3, 4, 9)]  # 5-8: e.g. transaction markers
    await consumer._deliver({tp: records}, {tp}, feeds_of(app))
    batch = feeds_of(app)[CLICKS].queue.get_nowait()
    assert [r.offset for r in batch.records] == [4, 9]  # Faust's rule: skip below the read one
    # committable without acknowledgements (Faust notes 5-9, the end is exclusive)
    assert [(i.begin, i.end) for i in consumer._gap[tp]] == [(5, 10)]
    assert consumer._read_offset[tp] == 9
    # every gap inside a batch too (and, as Faust, none looked for after offset 0)
    tp1 = TP(CLICKS, 1)
    records = [record(CLICKS, 1, o) for o in (0, 2, 3, 7, 8, 10)]
    await consumer._deliver({tp1: records}, {tp1}, feeds_of(app))
    assert sorted((i.begin, i.end) for i in consumer._gap[tp1]) == [(4, 8), (9, 11)]
    # a batch without gaps notes none
    tp2 = TP(CLICKS, 2)
    await consumer._deliver({tp2: [record(CLICKS, 2, o) for o in (1, 2, 3)]}, {tp2}, feeds_of(app))
    assert not consumer._gap[tp2]


async def test_an_empty_share_of_a_fetch_delivers_nothing(app: Any) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    await consumer._deliver({tp: []}, {tp}, feeds_of(app))
    assert feeds_of(app)[CLICKS].queue.empty() and not consumer._unacked_messages


async def test_nothing_is_delivered_once_a_rebalance_stops_the_flow(app: Any) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    consumer.stop_flow()
    await consumer._deliver({tp: [record(CLICKS, 0, 0)]}, {tp}, feeds_of(app))
    assert feeds_of(app)[CLICKS].queue.empty()


async def test_a_partition_no_longer_assigned_is_not_delivered(app: Any) -> None:
    consumer = started(app)
    tp0, tp1 = TP(CLICKS, 0), TP(CLICKS, 1)
    records = {tp0: [record(CLICKS, 0, 0)], tp1: [record(CLICKS, 1, 0)]}
    await consumer._deliver(records, {tp1}, feeds_of(app))
    assert [r.partition for r in feeds_of(app)[CLICKS].queue.get_nowait().records] == [1]
    assert feeds_of(app)[CLICKS].queue.empty()


async def test_records_not_delivered_are_fetched_again_from_their_first_offset(
    app: Any,
) -> None:
    """Faust drops what it fetched for a partition it no longer reads, or after the flow
    stopped, and seeks back only partitions with committed offsets: a changelog's
    records would be lost to a recovery that sought it just before."""
    consumer = started(app)
    thread = consumer._thread
    assert isinstance(thread, _Thread)
    tp0, tp1, log0 = TP(CLICKS, 0), TP(CLICKS, 1), TP(CHANGELOG, 0)
    records = {tp0: [record(CLICKS, 0, 5), record(CLICKS, 0, 6)], tp1: [record(CLICKS, 1, 3)]}
    await consumer._deliver(records, {tp1}, feeds_of(app))
    assert thread.again == [{tp0: 5}]
    await consumer._deliver({tp1: [record(CLICKS, 1, 4)]}, {tp1}, feeds_of(app))
    assert thread.again == [{tp0: 5}]  # all delivered: nothing to fetch again
    consumer.stop_flow()
    records = {log0: [record(CHANGELOG, 0, 0)], tp1: [], tp0: [record(CLICKS, 0, 7)]}
    await consumer._deliver(records, {tp0, tp1, log0}, feeds_of(app))
    assert thread.again[1:] == [{log0: 0, tp0: 7}]
    assert feeds_of(app)[CLICKS].queue.qsize() == 2  # the batches of offsets 3 and 4 only


async def test_records_fetched_as_the_generation_changes_are_fetched_again(app: Any) -> None:
    consumer = started(app)
    thread = consumer._thread
    assert isinstance(thread, _Thread)
    tp0, tp1 = TP(CLICKS, 0), TP(CLICKS, 1)

    def highwater(tp: TP) -> int:
        app.consumer_generation_id += 1  # a rebalance as tp0's records are handed over
        return 100

    consumer.highwater = highwater  # type: ignore[method-assign]
    records = {tp0: [record(CLICKS, 0, 2)], tp1: [record(CLICKS, 1, 8), record(CLICKS, 1, 9)]}
    await consumer._deliver(records, {tp0, tp1}, feeds_of(app))
    assert thread.again == [{tp1: 8}]


async def test_a_full_feed_holds_the_consumer_until_the_agent_takes(app: Any) -> None:
    consumer = started(app)
    tp = TP(CLICKS, 0)
    feed = feeds_of(app)[CLICKS]
    for offset in range(feed.queue.maxsize):
        await consumer._deliver({tp: [record(CLICKS, 0, offset)]}, {tp}, feeds_of(app))
    blocked = asyncio.create_task(
        consumer._deliver({tp: [record(CLICKS, 0, 99)]}, {tp}, feeds_of(app))
    )
    await asyncio.sleep(0.01)
    assert not blocked.done()
    taken = await feed.take(1, 0.0)
    await asyncio.wait_for(blocked, 1.0)
    assert [r.offset for r in taken.records] == [0]


async def test_delivery_waits_for_the_apps_flow_and_lands_after_its_clear(app: Any) -> None:
    """During recovery the consumer fetches before the app's flow resumes, and resuming
    clears the feeds: a batch delivered before that would be lost (its offsets read)."""
    consumer = started(app)
    app.flow_control.suspend()
    tp = TP(CLICKS, 0)
    delivering = asyncio.create_task(
        consumer._deliver({tp: [record(CLICKS, 0, 0)]}, {tp}, feeds_of(app))
    )
    await asyncio.sleep(0.01)
    assert not delivering.done() and feeds_of(app)[CLICKS].queue.empty()
    app.flow_control.resume()
    await asyncio.wait_for(delivering, 1.0)
    assert [r.offset for r in feeds_of(app)[CLICKS].queue.get_nowait().records] == [0]


# -- InputFeed.take ------------------------------------------------------------------


def fed(*offsets: int, generation_id: int = 0, partition: int = 0) -> FedBatch:
    """A batch as the consumer delivers it (clicks of one partition)."""
    records = [RawRecord(CLICKS, CLICKS, partition, o, b"{}") for o in offsets]
    return FedBatch(records, TP(CLICKS, partition), generation_id)


def feed_of(app: Any) -> InputFeed:
    app.flow_control.resume()
    return InputFeed(app, CLICKS, maxsize=4)


def offsets(taken: Taken) -> list[int]:
    return [r.offset for r in taken.records]


async def test_take_returns_what_is_buffered_up_to_the_limit_in_order(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0, 1, 2))
    feed.queue.put_nowait(fed(3))
    assert offsets(await feed.take(2, 0.0)) == [0, 1]
    assert offsets(await feed.take(10, 0.0)) == [2, 3]  # the rest first, then the queue


async def test_take_tells_each_partitions_span_and_the_batches_it_completes(app: Any) -> None:
    feed = feed_of(app)
    first, second = fed(0, 1, 2), fed(5, 6, partition=1)
    feed.queue.put_nowait(first)
    feed.queue.put_nowait(second)
    taken = await feed.take(4, 0.0)
    assert offsets(taken) == [0, 1, 2, 5]
    assert taken.spans == [(TP(CLICKS, 0), 0, 3), (TP(CLICKS, 1), 3, 4)]
    assert taken.completes == [first]  # the second's last record is still with the feed
    rest = await feed.take(10, 0.0)
    assert offsets(rest) == [6]
    assert rest.spans == [(TP(CLICKS, 1), 0, 1)] and rest.completes == [second]


async def test_take_waits_within_seconds_after_the_first_record_for_more(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0))

    async def later() -> None:
        await asyncio.sleep(0.02)
        feed.queue.put_nowait(fed(1))

    arriving = asyncio.create_task(later())
    assert offsets(await feed.take(10, 1.0)) == [0, 1]  # the second came within the wait
    await arriving
    feed.queue.put_nowait(fed(2))
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    assert offsets(await feed.take(10, 0.05)) == [2]  # nothing more came: after `within`
    assert loop.time() - started_at >= 0.04


async def test_take_waits_for_more_only_while_busy_says_so(app: Any) -> None:
    """The worker's batch waits for more records only while an earlier batch is being
    scored: an idle worker processes an event as soon as it arrives."""
    feed = feed_of(app)
    loop = asyncio.get_running_loop()
    feed.queue.put_nowait(fed(0, 1))
    started_at = loop.time()
    assert offsets(await feed.take(10, 1.0, lambda: False)) == [0, 1]  # what is there
    assert loop.time() - started_at < 0.5  # not the 1 s wait
    busy = [True]

    async def later() -> None:
        await asyncio.sleep(0.02)
        busy[0] = False  # the earlier batch is scored ...
        feed.queue.put_nowait(fed(3))  # ... and one more record came meanwhile

    feed.queue.put_nowait(fed(2))
    arriving = asyncio.create_task(later())
    started_at = loop.time()
    assert offsets(await feed.take(10, 1.0, lambda: busy[0])) == [2, 3]
    assert loop.time() - started_at < 0.5  # went once not busy, not after `within`
    await arriving


async def test_take_waits_for_the_first_record_without_a_limit(app: Any) -> None:
    feed = feed_of(app)
    taking = asyncio.create_task(feed.take(10, 0.0))
    await asyncio.sleep(0.02)
    assert not taking.done()
    feed.queue.put_nowait(fed(7))
    assert offsets(await asyncio.wait_for(taking, 1.0)) == [7]


async def test_records_fetched_before_a_rebalance_are_dropped(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0, 1, generation_id=0))
    feed.queue.put_nowait(fed(2, generation_id=1))
    app.consumer_generation_id = 1
    assert offsets(await feed.take(10, 0.0)) == [2]


async def test_a_rebalance_clears_the_feed(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0))
    app.flow_control.suspend()
    app.flow_control.clear()  # what Faust does when partitions are revoked
    assert feed.queue.empty()


async def test_a_rebalance_also_drops_what_the_last_take_left(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0, 1))
    assert offsets(await feed.take(1, 0.0)) == [0]
    app.flow_control.suspend()
    app.flow_control.clear()
    app.flow_control.resume()
    feed.queue.put_nowait(fed(5))
    assert offsets(await feed.take(10, 0.0)) == [5]


async def test_nothing_is_taken_while_the_flow_is_suspended(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0))
    app.flow_control.suspend()
    assert await feed.take(10, 0.0) == Taken()


async def test_resuming_the_flow_keeps_what_was_fetched_for_the_new_assignment(app: Any) -> None:
    feed = feed_of(app)
    feed.queue.put_nowait(fed(0))
    app.flow_control.resume()  # Faust's resume() also calls clear()
    assert offsets(await feed.take(10, 0.0)) == [0]


async def test_the_consumer_fetches_with_the_settings_wait() -> None:
    """Faust fixes the fetch wait at 1.5 s; the worker's consumer uses its setting."""
    settings = Settings(bootstrap_servers="127.0.0.1:1", fetch_max_wait=0.2)
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_consumer(asyncio.get_running_loop())
    assert consumer._fetch_max_wait_ms == 200
    await consumer.stop()  # never started: closes its client


class _Fetcher:
    """Stands in for aiokafka's fetcher: each fetch returns the next of ``results``."""

    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.calls = 0
        self._records: OrderedDict[TP, Any] = OrderedDict()

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        self.calls += 1
        return self.results.pop(0)


async def test_an_empty_fetch_waits_out_the_pause_and_one_with_records_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    fetcher = _Fetcher([False, True])
    pace_empty_fetches(SimpleNamespace(_fetcher=fetcher), 0.25)
    monkeypatch.setattr(input_batches.asyncio, "sleep", sleep)
    assert await fetcher._proc_fetch_request(None, 1, None) is False
    assert len(slept) == 1 and 0.2 < slept[0] <= 0.25  # the rest of the pause
    assert await fetcher._proc_fetch_request(None, 1, None) is True
    assert len(slept) == 1 and fetcher.calls == 2


async def test_a_fetch_cancelled_during_the_pause_ends_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka cancels pending fetch tasks when it closes and awaits them: they must
    not raise."""

    async def sleep(seconds: float) -> None:
        raise asyncio.CancelledError

    fetcher = _Fetcher([False])
    pace_empty_fetches(SimpleNamespace(_fetcher=fetcher), 0.25)
    monkeypatch.setattr(input_batches.asyncio, "sleep", sleep)
    assert await fetcher._proc_fetch_request(None, 1, None) is False


async def test_the_worker_consumer_paces_empty_fetches_by_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1", empty_fetch_pause=0.02)
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    thread = app.consumer._thread  # type: ignore[attr-defined]
    fetcher = _Fetcher([False])
    original = fetcher._proc_fetch_request

    async def started(self: Any) -> None:
        self._consumer = SimpleNamespace(
            _fetcher=fetcher, _key_deserializer=None, _value_deserializer=None
        )

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", started)
    await thread.on_start()
    assert fetcher._proc_fetch_request != original  # wrapped
    assert isinstance(fetcher._records, input_batches._ParsedForFeeds)
    assert fetcher._records.fed is feeds_of(app)  # the fed topics' records as parsed
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(input_batches.asyncio, "sleep", sleep)
    await fetcher._proc_fetch_request(None, 1, None)
    assert len(slept) == 1 and 0.0 < slept[0] <= 0.02


def _kafka_with(tp: TopicPartition, state: Any, unread: Any, in_flight: set[int]) -> Any:
    """Stands in for an aiokafka consumer with ``tp`` assigned (leader: node 0)."""
    assignment = SimpleNamespace(tps={tp}, state_value=lambda _: state)
    fetch_task = asyncio.get_running_loop().create_future()
    return SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)),
        _fetcher=SimpleNamespace(
            _records={} if unread is None else {tp: unread},
            _in_flight=in_flight,
            _fetch_task=fetch_task,
        ),
        _client=SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda _: 0)),
    )


async def test_the_fetch_state_tells_fausts_and_aiokafkas_view_of_a_partition(app: Any) -> None:
    consumer = started(app)
    tp = TP(CHANGELOG, 0)
    ktp = TopicPartition(CHANGELOG, 0)
    consumer.resume_partitions([tp])
    consumer._read_offset[tp] = 41
    state = TopicPartitionState(SimpleNamespace())
    state.seek(42)
    state.pause()
    told = fetch_state(consumer, _kafka_with(ktp, state, object(), {0}), tp)
    assert "Faust: active=True paused=False buffered=False read_offset=41 flow_active=True" in told
    assert "position=42" in told and "paused=True" in told
    assert "unread=object fetch_in_flight=True fetch_routine_done=False" in told
    consumer.pause_partitions([tp])
    state.resume()
    told = fetch_state(consumer, _kafka_with(ktp, state, None, set()), tp)
    assert "Faust: active=False paused=True" in told
    assert "paused=False unread=None fetch_in_flight=False" in told
    assert fetch_state(consumer, _kafka_with(ktp, state, None, set()), TP(CHANGELOG, 1)).endswith(
        "aiokafka: not assigned"
    )


async def test_a_stalled_recovery_says_once_per_partition_where_fetching_stands(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After Faust's event timeout without a record of a partition that is not read to
    its end, one warning per recovery and partition, with :func:`fetch_state`."""
    thread = app.consumer._thread
    monkeypatch.setattr(
        faust_aiokafka.AIOKafkaConsumerThread, "verify_recovery_event_path", lambda *_: None
    )
    monkeypatch.setattr(input_batches, "fetch_state", lambda consumer, kafka, tp: f"state {tp}")
    monkeypatch.setattr(thread, "_ensure_consumer", lambda: None)
    recovery = app.tables.recovery
    quiet, heard, past_end = TP(CHANGELOG, 0), TP(CHANGELOG, 1), TP(CHANGELOG, 2)
    recovery.active_highwaters.update({quiet: 9, heard: 9, past_end: 9})  # last offsets
    recovery.active_offsets.update({quiet: -1, heard: 4, past_end: 12})  # last ones read
    timeout = recovery.event_timeout_secs

    def warnings_at(now: float) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger=input_batches.__name__):
            for tp in (quiet, heard, past_end):
                thread.verify_recovery_event_path(now, tp)
        return [record.getMessage() for record in caplog.records]

    assert warnings_at(1_000.0) == []  # no recovery started
    recovery._recovery_started_at = 100.0
    recovery._active_events_received_at[heard] = 100.0 + timeout
    assert warnings_at(100.0 + timeout - 1) == []
    told = warnings_at(100.0 + timeout + 1)
    assert len(told) == 1 and str(quiet) in told[0] and "recovery got nothing" in told[0]
    assert warnings_at(100.0 + timeout + 5) == []  # said once
    assert [str(heard) in w for w in warnings_at(100.0 + 2 * timeout + 1)] == [True]
    recovery._recovery_started_at = 500.0  # the next recovery says it again
    recovery._active_events_received_at.clear()
    assert len(warnings_at(500.0 + timeout + 1)) == 2


#: A partition's log: plain records 0-4, producer 7's aborted transaction (5-7, its
#: marker at 8), producer 9's committed one (9-10, marker at 11), plain 12-15.
_LOG = {
    0: record_batch(0, [b"a", b"b", b"c", b"d", b"e"]),
    5: record_batch(5, [b"x", b"y", b"z"], producer_id=7),
    8: record_batch(8, [], producer_id=7, control=0),
    9: record_batch(9, [b"f", b"g"], producer_id=9),
    11: record_batch(11, [], producer_id=9, control=1),
    12: record_batch(12, [b"h", b"i"]),
    14: record_batch(14, [b"j", b"k"]),
}


def log_from(offset: int) -> MemoryRecords:
    """What a broker answers a fetch from ``offset``: :data:`_LOG` from the batch
    holding it."""
    first = max(base for base in _LOG if base <= offset)
    return MemoryRecords(b"".join(data for base, data in _LOG.items() if base >= first))


_ABORTED = [(7, 5)]  # (producer, first offset), as the fetch response lists them


class _Position:
    """A partition's fetch position, as aiokafka's ``FetchResult`` reads and moves it."""

    paused = False

    def __init__(self, offset: int) -> None:
        self.position = offset

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def read_through(records: PartitionRecords, max_records: int | None) -> list[Any]:
    """What aiokafka's consumer gets of ``records``, ``max_records`` at a time: each
    take's (offset, key, value)s and the fetch position after it."""
    position = _Position(records.next_fetch_offset)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: position)
    result = FetchResult(records._tp, assignment=assignment, partition_records=records, backoff=0)
    takes = []
    while result.has_more():
        got = [(r.offset, r.key, r.value) for r in result.getall(max_records)]
        takes.append((got, position.position))
    return takes


@pytest.mark.parametrize("isolation", [0, 1])
@pytest.mark.parametrize("start", [0, 2, 6, 9, 12])
@pytest.mark.parametrize("max_records", [None, 1, 3])
def test_parsed_records_are_read_as_aiokafkas_consumer_records_are(
    isolation: int, start: int, max_records: int | None
) -> None:
    """Same records, keys, values and fetch positions, whatever the isolation level
    (aborted transactions skipped under read_committed, control batches always), the
    offset the fetch starts at (in the middle of a batch: the broker sends the whole batch) and the
    most records a take may return."""
    tp = TopicPartition(CLICKS, 0)

    def fetched() -> PartitionRecords:
        return PartitionRecords(tp, log_from(start), _ABORTED, start, None, None, True, isolation)

    theirs = read_through(fetched(), max_records)
    ours = read_through(ParsedRecords.like(fetched()), max_records)
    assert ours == theirs
    offsets = [offset for got, _ in ours for offset, _, _ in got]
    visible = [*range(5), *(range(5, 8) if isolation == 0 else []), 9, 10, *range(12, 16)]
    assert offsets == [offset for offset in visible if offset >= start]
    assert ours[-1][1] == 16  # the next fetch starts after the log


def test_fetched_records_and_their_parsed_copy_are_freed_without_the_collector() -> None:
    """Neither the replaced fetch result nor its parsed copy, once read, is left in a
    reference cycle: both go when the last reference does, the collector switched off.
    (The replaced one's unstarted generator held it: one cycle per partition per fetch,
    each holding the fetched bytes until the next collection.)"""
    tp = TopicPartition(CLICKS, 0)
    fetched = PartitionRecords(tp, log_from(0), [], 0, *_PLAIN)
    parsed = ParsedRecords.like(fetched)
    gone = [weakref.ref(fetched), weakref.ref(parsed)]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del fetched
        assert [r.offset for r in parsed]
        del parsed
        assert [ref() for ref in gone] == [None, None]
    finally:
        if was_enabled:
            gc.enable()


def test_parsed_records_are_handed_out_for_fed_topics_only() -> None:
    """Once installed, each new fetch result of a fed topic hands out parsed records;
    other topics' results, and errors, are aiokafka's."""
    fetcher = _Fetcher([])
    consumer = SimpleNamespace(_fetcher=fetcher, _key_deserializer=None, _value_deserializer=None)
    hand_out_parsed_records(consumer, {CLICKS})
    results = fetcher._records
    clicks, log0, broken = (
        TopicPartition(CLICKS, 0),
        TopicPartition(CHANGELOG, 0),
        TopicPartition(CLICKS, 1),
    )
    positions = {clicks: _Position(0), log0: _Position(0)}
    assignment = SimpleNamespace(active=True, state_value=positions.__getitem__)
    for tp in (clicks, log0):
        fetched = PartitionRecords(tp, log_from(0), [], 0, *_PLAIN)
        results[tp] = FetchResult(tp, assignment=assignment, partition_records=fetched, backoff=0)
    results[broken] = FetchError(error=RuntimeError("broken"), backoff=0)
    assert type(results[clicks]._partition_records) is ParsedRecords
    assert type(results[log0]._partition_records) is PartitionRecords
    assert isinstance(results[broken], FetchError)
    assert type(results[clicks].getall()[0]) is not ConsumerRecord
    assert type(results[log0].getall()[0]) is ConsumerRecord
    # a consumer with deserializers gets ConsumerRecords (the deserialized values)
    other = _Fetcher([])
    consumer = SimpleNamespace(
        _fetcher=other, _key_deserializer=bytes.decode, _value_deserializer=None
    )
    hand_out_parsed_records(consumer, {CLICKS})
    assert type(other._records) is OrderedDict


class _Consumer:
    """What :func:`input_batches.pause_inactive` uses of an aiokafka consumer."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.paused_tps: set[TP] = set()
        self.calls: list[tuple[str, set[TP]]] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def paused(self) -> set[TP]:
        return set(self.paused_tps)

    def pause(self, *tps: TP) -> None:
        self.calls.append(("pause", set(tps)))
        self.paused_tps |= set(tps)

    def resume(self, *tps: TP) -> None:
        self.calls.append(("resume", set(tps)))
        self.paused_tps -= set(tps)


def test_partitions_faust_does_not_read_are_paused_and_resumed_when_it_does() -> None:
    clicks, log0, log1 = TP(CLICKS, 0), TP(CHANGELOG, 0), TP(CHANGELOG, 1)
    consumer = _Consumer({clicks, log0, log1})
    pause = input_batches.pause_inactive
    pause(consumer, {clicks})
    assert consumer.paused_tps == {log0, log1}
    pause(consumer, {clicks})
    assert len(consumer.calls) == 1  # in step: nothing to do
    pause(consumer, {log0, log1})  # recovering: changelogs read
    assert consumer.paused_tps == {clicks}
    assert consumer.calls[1:] == [("pause", {clicks}), ("resume", {log0, log1})]


async def test_records_of_a_partition_faust_does_not_read_are_not_fetched(noida: str) -> None:
    """Unread fetched records of one partition hold back aiokafka's next fetch from the
    broker for 100 ms: a changelog the worker writes (and Faust does not read after
    recovery) must not be fetched at all."""
    clicks, log0 = TP("clicks", 0), TP("changelog", 0)
    await _produce_plain(noida, log0.topic, 50)
    await _produce_plain(noida, clicks.topic, 5)
    app = build_app(
        Settings(bootstrap_servers=noida, fetch_max_wait=0.05),
        FakeRecsScorer(["a"]),
        FakeSentimentScorer(),
    )
    app.consumer.resume_flow()
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = AIOKafkaConsumer(bootstrap_servers=noida, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(*clicks), TopicPartition(*log0)])  # as a group assigns
        got: dict[Any, list[Any]] = {}
        for _ in range(100):
            for tp, records in (await thread._fetch_records(consumer, {clicks}, 0.1)).items():
                got.setdefault(tp, []).extend(records)
            if len(got.get(clicks, [])) == 5:
                break
        assert [r.value for r in got[clicks]] == [b"%d" % n for n in range(5)]
        assert consumer.paused() == {log0}
        assert log0 not in consumer._fetcher._records  # written first, never fetched
        # Faust reads it again (recovery after a rebalance): resumed from its position
        records = await thread._fetch_records(consumer, {clicks, log0}, 1.0)
        for _ in range(100):
            if len(records.get(log0, [])) == 50:
                break
            for tp, more in (await thread._fetch_records(consumer, {clicks, log0}, 0.1)).items():
                records.setdefault(tp, []).extend(more)
        assert consumer.paused() == set()
        assert [r.offset for r in records[log0]] == list(range(50))
    finally:
        await consumer.stop()


async def test_records_are_fetched_again_unless_their_partition_moved_since(noida: str) -> None:
    """What the consumer thread does when Faust did not take a fetch's records: the next
    fetch returns them again, unless the partition was sought (a recovery) meanwhile."""
    log0 = TP("changelog", 0)
    await _produce_plain(noida, log0.topic, 40)
    app = build_app(Settings(bootstrap_servers=noida), FakeRecsScorer(["a"]), FakeSentimentScorer())
    app.consumer.resume_flow()
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = AIOKafkaConsumer(bootstrap_servers=noida, auto_offset_reset="earliest")
    await consumer.start()

    async def fetch_all(start: int) -> None:
        got: list[int] = []
        for _ in range(20):
            records = await thread._fetch_records(consumer, {log0}, 0.2)
            got += [r.offset for r in records.get(log0, [])]
            if got and got[-1] == 39:
                break
        assert got == list(range(start, 40))

    try:
        consumer.assign([TopicPartition(*log0)])
        await fetch_all(0)
        await thread._fetch_again(consumer, {log0: 0})
        await fetch_all(0)  # all of it again
        await thread._fetch_again(consumer, {log0: 25})
        await fetch_all(25)
        consumer.seek(TopicPartition(*log0), 10)  # a recovery's seek after the fetch
        await thread._fetch_again(consumer, {log0: 25})
        await fetch_all(10)  # the seek holds
        await thread._fetch_again(consumer, {TP("not-assigned", 0): 0})  # ignored
    finally:
        await consumer.stop()


async def test_a_consumer_reads_a_fed_topic_from_a_broker_as_parsed_records(noida: str) -> None:
    """From a real broker: plain records, an aborted transaction's (not read under
    read_committed), a committed one's; other topics as ConsumerRecords."""
    tp, other = TopicPartition("fed", 0), TopicPartition("other", 0)
    await _produce_plain(noida, tp.topic, 3)
    for end in ("abort_transaction", "commit_transaction"):
        producer = await _transaction(noida, tp.topic, 2)
        await getattr(producer, end)()
        await producer.stop()
    await _produce_plain(noida, tp.topic, 1)
    await _produce_plain(noida, other.topic, 2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=noida, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        hand_out_parsed_records(consumer, {tp.topic})
        consumer.assign([tp, other])
        got: dict[TopicPartition, list[Any]] = {tp: [], other: []}
        for _ in range(100):
            for part, records in (await consumer.getmany(timeout_ms=100)).items():
                got[part] += records
            if len(got[tp]) == 6 and len(got[other]) == 2:
                break
        # 0-2 plain, 3-4 aborted (5 its marker), 6-7 committed (8 its marker), 9 plain
        assert [(r.offset, r.value) for r in got[tp]] == [
            (0, b"0"),
            (1, b"1"),
            (2, b"2"),
            (6, b"txn 0"),
            (7, b"txn 1"),
            (9, b"0"),
        ]
        assert not any(isinstance(r, ConsumerRecord) for r in got[tp])
        assert all(isinstance(r, ConsumerRecord) for r in got[other])
        assert await consumer.position(tp) == 10
    finally:
        await consumer.stop()


async def _produce_plain(servers: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    for n in range(count):
        await producer.send_and_wait(topic, b"%d" % n, partition=0)
    await producer.stop()


async def _transaction(servers: str, topic: str, count: int) -> AIOKafkaProducer:
    """A started producer with an open transaction holding ``count`` records."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, transactional_id=topic)
    await producer.start()
    await producer.begin_transaction()
    for n in range(count):
        await producer.send_and_wait(topic, b"txn %d" % n, partition=0)
    return producer


@pytest.fixture
def noida() -> Iterator[str]:
    with EmbeddedBroker("noida") as broker:
        yield broker.bootstrap_servers


async def test_recovery_asks_the_broker_for_end_offsets_under_exactly_once(noida: str) -> None:
    """Before a partition's first fetch Faust's exactly-once answer is "none" (an empty
    changelog to recovery); the worker's is the offset after the last committed record."""
    tp = TP("changelog", 0)
    await _produce_plain(noida, tp.topic, 5)
    open_transaction = await _transaction(noida, tp.topic, 3)
    settings = Settings(bootstrap_servers=noida, processing_guarantee="exactly_once")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    app.in_worker = True  # as ``faust worker`` sets it: transactions only in a worker
    thread = app.consumer._thread  # type: ignore[attr-defined]
    assert thread.consumer.in_transaction
    consumer = AIOKafkaConsumer(bootstrap_servers=noida, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp, TP("empty", 0)])
        thread._consumer = consumer
        assert await thread._highwaters([]) == {}
        assert await thread._highwaters([TP("empty", 0)]) == {TP("empty", 0): 0}
        faust_answer = await faust_aiokafka.AIOKafkaConsumerThread._highwaters(thread, [tp])
        assert faust_answer == {tp: None}
        assert await thread._highwaters([tp]) == {tp: 5}  # not the open transaction's
        await open_transaction.commit_transaction()
        # 8 records and the commit marker at 8, which recovery would wait for in vain
        assert await thread._highwaters([tp]) == {tp: 8}
    finally:
        await consumer.stop()
        await open_transaction.stop()


async def test_a_changelogs_end_moves_back_over_markers_and_aborted_records(
    noida: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed, aborted, plain, empty = (TP(name, 0) for name in ("c", "a", "p", "e"))
    for tp in (committed, aborted):
        await _produce_plain(noida, tp.topic, 4)
        producer = await _transaction(noida, tp.topic, 3)
        await (producer.commit_transaction() if tp == committed else producer.abort_transaction())
        await producer.stop()
    await _produce_plain(noida, plain.topic, 4)
    await _produce_plain(noida, empty.topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=noida, isolation_level="read_committed")
    await reader.start()
    try:
        ends = {committed: 8, aborted: 8, plain: 4, empty: 0}
        found = await input_batches.ends_of_committed_records(reader, ends)
        assert found == {committed: 7, aborted: 4, plain: 4, empty: 0}
        assert await input_batches.ends_of_committed_records(reader, ends, timeout=0) == ends
        monkeypatch.setattr(input_batches, "TAIL_WINDOW", 2)  # only offsets 6 and 7 read
        found = await input_batches.ends_of_committed_records(reader, ends)
        assert found == {committed: 7, aborted: 8, plain: 4, empty: 0}
    finally:
        await reader.stop()
