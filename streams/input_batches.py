"""The input topics' records reach the worker a fetched batch at a time.

Faust delivers every record on its own: a ``Message``, a ``Conductor.on_message``
call raced against the rebalance signal in new tasks, an ``Event``, a queue put and a
``Stream`` step, several hundred microseconds of CPU per record on a small machine.
For the topics the worker batches anyway (its inputs and the repartition topic),
:class:`BatchDeliveringConsumer` hands each partition's share of a fetch to that
topic's :class:`InputFeed` as one :class:`FedBatch` of the pipeline's ``RawRecord``s,
made column by column from the records as aiokafka parsed them (no aiokafka
``ConsumerRecord`` and no Faust message per record: :class:`ParsedRecords`), with the
bookkeeping Faust does per record (read offsets, offset gaps, unacknowledged messages
for the rebalance wait, the sensors' counts) once per batch, and the agents acknowledge
what they processed a take at a time (:meth:`BatchDeliveringConsumer.acknowledge`).
Records of every other topic (table changelogs) keep Faust's path.

Revoking partitions clears the feeds (Faust's flow control, like its agents' buffers),
and a batch taken after the consumer's generation changed is dropped unacknowledged:
after every rebalance the consumer seeks to the committed offsets and reads it again.
Unlike Faust's buffers the feeds are not cleared when the flow resumes: what they hold
then was fetched for the new assignment, past the seek.

Records fetched but not handed on (the flow stopped for a rebalance, the generation
changed, or Faust no longer reads the partition) are fetched again: the partition is
sought back to the first of them, unless something moved it since the fetch
(:meth:`_ConsumerThread.fetch_again`).  Faust drops them and seeks back only the
partitions with committed offsets, so a table changelog lost them for good: a recovery
that had just sought the changelog to its start then waited for records its consumer
had already passed, and the worker read no input until the next rebalance.

The same consumer tells Faust's table recovery where each changelog ends: asked of the
broker, and under exactly-once moved back over the transaction markers at the tail
(:meth:`_ConsumerThread._highwaters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol, cast, runtime_checkable

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.structs import ConsumerRecord
from faust.sensors.monitor import Monitor
from faust.tables.manager import TableManager
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, SensorT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from mode.utils.queues import FlowControlQueue

from recstream.streams.pipeline import RawRecord, raw_records

log = logging.getLogger(__name__)

#: Fetched batches (one partition's share of a fetch each) an :class:`InputFeed` buffers.
FEED_BATCHES = 8
#: Offsets before a transactional changelog's end searched for its last committed record.
TAIL_WINDOW = 256
#: Seconds that search may take before recovery falls back to Faust's own wait.
TAIL_TIMEOUT = 5.0
_OFFSET, _VALUE, _KEY = attrgetter("offset"), attrgetter("value"), attrgetter("key")


@dataclass(slots=True, weakref_slot=True, eq=False)
class FedBatch:
    """One partition's share of a fetch, as its feed holds it: the records and the
    consumer generation they were fetched in.

    It also stands for its records in Faust's set of unacknowledged messages (a weak
    set: the batch is tracked while a feed or an agent holds it), which a rebalance
    waits to see empty; :meth:`BatchDeliveringConsumer.acknowledge` marks it acked
    once its last record is.
    """

    records: list[RawRecord]
    tp: TP
    generation_id: int
    acked: bool = False
    #: What Faust's rebalance wait logs of each message it waits for.
    refcount = 1


@dataclass(slots=True)
class Taken:
    """What one :meth:`InputFeed.take` returned: ``records`` in the order taken, and for
    acknowledging them, each partition's span of them and the batches they complete."""

    records: list[RawRecord] = field(default_factory=list)
    #: ``(tp, start, end)``: ``records[start:end]`` came from ``tp``, in offset order.
    spans: list[tuple[TP, int, int]] = field(default_factory=list)
    #: The batches whose last record is in ``records``.
    completes: list[FedBatch] = field(default_factory=list)
    #: Set by the first acknowledgement (a second one does nothing).
    acknowledged: bool = False


class InputFeed:
    """One input topic's fetched batches, waiting for the worker to take them.

    ``kind`` names what the topic carries (``clicks`` ...) in the records made of them.
    """

    def __init__(self, app: faust.App, kind: str, maxsize: int = FEED_BATCHES) -> None:
        self.app = app
        self.kind = kind
        self.queue: FlowControlQueue[FedBatch] = FlowControlQueue(
            maxsize, flow_control=app.flow_control
        )
        #: What the last :meth:`take` left of a batch: the batch, and where the rest starts.
        self._left: tuple[FedBatch, int] | None = None
        # a rebalance calls clear(), the only method mode uses on what it manages
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Drop everything buffered when partitions are being revoked (the flow is
        suspended then).  Faust also calls this when the flow resumes after a rebalance:
        what is buffered then was fetched for the new assignment, and dropping it would
        lose it (its offsets count as read, and the seek to the committed offsets may
        have run already)."""
        if self.app.flow_control.is_active():
            return
        self.queue.clear()
        self._left = None

    async def take(
        self, max_records: int, within: float, busy: Callable[[], bool] | None = None
    ) -> Taken:
        """Up to ``max_records`` records: what is buffered, else the next batch, waiting
        at most ``within`` seconds after the first record for more to arrive; with
        ``busy``, only while it says so (asked whenever nothing more is buffered: the
        worker waits while an earlier batch is being scored, when waiting costs nothing).
        Batches fetched before the latest rebalance are dropped (re-read from the
        commit); while a rebalance suspends the flow the result is empty."""
        queue = self.queue
        taken = Taken()
        records = taken.records
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(records) < max_records:
            start = 0
            if self._left is not None:
                (batch, start), self._left = self._left, None
            elif not queue.empty():
                batch = queue.get_nowait()
            elif not records:
                batch = await queue.get()
            elif busy is not None and not busy():
                break
            else:
                deadline = loop.time() + within if deadline is None else deadline
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if batch.generation_id != self.app.consumer_generation_id:
                continue  # fetched before the latest rebalance: read again from the commit
            end = min(len(batch.records), start + max_records - len(records))
            taken.spans.append((batch.tp, len(records), len(records) + end - start))
            records += batch.records[start:end]
            if end < len(batch.records):
                self._left = (batch, end)
            else:
                taken.completes.append(batch)
        if not self.app.flow_control.is_active():
            return Taken()
        return taken


def feeds_of(app: AppT) -> dict[str, InputFeed]:
    """``app``'s feeds by topic name (empty until :func:`feed_topic` adds one)."""
    feeds: dict[str, InputFeed] | None = getattr(app, "recstream_feeds", None)
    if feeds is None:
        feeds = {}
        app.recstream_feeds = feeds  # type: ignore[attr-defined]
    return feeds


def feed_topic(app: faust.App, topic: faust.TopicT, kind: str) -> InputFeed:
    """Subscribe ``app`` to ``topic`` and deliver its records, of ``kind``, in batches to
    the returned feed (``app``'s consumer must be a :class:`BatchDeliveringConsumer`)."""
    feed = InputFeed(app, kind)
    for name in topic.topics:
        feeds_of(app)[name] = feed
    app.topics.add(topic)
    return feed


def pace_empty_fetches(consumer: AIOKafkaConsumer, pause: float) -> None:
    """Make a started ``consumer`` wait until ``pause`` seconds have passed since it sent a
    fetch that came back without records, before it fetches from that broker again.

    A Kafka broker holds a fetch until records arrive or the fetch wait ends, so an idle
    consumer polls a few times a second and this never waits.  A broker that answers
    every fetch at once (noida) is otherwise polled in a tight loop that takes most of a
    core, and the GIL, from the worker; records arriving meanwhile wait at most
    ``pause`` longer.  (aiokafka has no setting for this: its fetch routine starts a
    broker's next fetch when the previous one's task ends, so the task waits.)
    """
    fetcher = consumer._fetcher
    fetch = fetcher._proc_fetch_request

    async def fetch_paced(assignment: Any, node_id: int, request: Any) -> bool:
        sent = time.monotonic()
        got_records: bool = await fetch(assignment, node_id, request)
        rest = pause - (time.monotonic() - sent)
        if not got_records and rest > 0:
            # Closed or unassigned meanwhile: end quietly, as aiokafka's own fetch does.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(rest)
        return got_records

    fetcher._proc_fetch_request = fetch_paced


class ParsedRecords(PartitionRecords):
    """One fetched partition's records, handed out as aiokafka parsed them.

    aiokafka copies every record it parses into a ``ConsumerRecord`` (a dataclass of
    eleven fields, with the key's and value's sizes and a tuple of the headers), and its
    consumer loops over them through a Python ``__next__``: 0.7-1.1 µs a record here
    (``benchmarks/fetch_unpack_speed.py``).  The parsed record already has what the
    feeds read (offset, key, value; also timestamp, headers, checksum), so it is handed
    out as it is, and a loop over these records runs on aiokafka's generator itself.
    Control batches, aborted transactions and the next fetch offset are aiokafka's own.
    """

    @classmethod
    def like(cls, records: PartitionRecords) -> ParsedRecords:
        """The same fetched ``records``, not yet read, handed out as parsed.

        ``records`` is then dropped unread: its generator, never started, is cleared
        first.  Its frame holds ``records`` itself, a reference cycle that only the
        garbage collector would free (one per partition per fetch, with the fetched
        bytes: under live traffic thousands of them in each young collection).
        """
        parsed = cls(
            records._tp,
            records._records,
            records._aborted_transactions,
            records.next_fetch_offset,
            None,
            None,
            records._check_crcs,
            records._isolation_level,
        )
        records._records_iterator = None
        return parsed

    def __iter__(self) -> Iterator[Any]:
        return self._records_iterator or iter(())

    @staticmethod
    def _consumer_record(tp: TopicPartition, record: Any) -> Any:
        return record


class _ParsedForFeeds(OrderedDict[TopicPartition, Any]):
    """A fetcher's buffered fetch results, in which each new result for a fed topic
    hands out its records as parsed (:class:`ParsedRecords`)."""

    def __init__(self, results: Mapping[TopicPartition, Any], fed: Container[str]) -> None:
        super().__init__(results)
        self.fed = fed

    def __setitem__(self, tp: TopicPartition, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if type(records) is PartitionRecords and tp.topic in self.fed:
            result._partition_records = ParsedRecords.like(records)
        super().__setitem__(tp, result)


def hand_out_parsed_records(consumer: AIOKafkaConsumer, fed: Container[str]) -> None:
    """Make a started ``consumer`` return the records of the ``fed`` topics as aiokafka
    parsed them (:class:`ParsedRecords`), not as ``ConsumerRecord``s.  Not for a consumer
    with deserializers (it would skip them): it is left as it is."""
    if consumer._key_deserializer is not None or consumer._value_deserializer is not None:
        return
    fetcher = consumer._fetcher
    fetcher._records = _ParsedForFeeds(fetcher._records, fed)


def consumer_record(tp: TP, record: Any) -> ConsumerRecord[bytes, bytes]:
    """The ``ConsumerRecord`` aiokafka would have made of a parsed ``record`` of ``tp``
    (for Faust's per-message sensors)."""
    key, value = record.key, record.value
    return ConsumerRecord(
        tp.topic,
        tp.partition,
        record.offset,
        record.timestamp,
        record.timestamp_type,
        key,
        value,
        record.checksum,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        tuple(record.headers),
    )


def pause_inactive(consumer: AIOKafkaConsumer, active: set[TP]) -> None:
    """Pause in ``consumer`` the assigned partitions Faust does not read now, resume the rest.

    Faust pauses a partition only in its own bookkeeping (it stops asking for its
    records), so aiokafka keeps fetching it: a table's changelog after recovery, which
    the worker itself writes.  The fetched records then wait in aiokafka's buffer,
    where a partition's unread records hold back every fetch from the same broker for
    ``prefetch_backoff`` (100 ms): each changelog flush stopped the input for 100-200 ms.
    """
    inactive = consumer.assignment() - active
    paused = consumer.paused()
    if inactive != paused:
        if inactive - paused:
            consumer.pause(*(inactive - paused))
        if paused - inactive:
            consumer.resume(*(paused - inactive))


async def ends_of_committed_records(
    reader: AIOKafkaConsumer, ends: Mapping[TP, int], timeout: float = TAIL_TIMEOUT
) -> dict[TP, int]:
    """Each partition's end offset moved back to just after its last committed record.

    A transactional changelog ends with a commit marker, which no consumer hands over,
    so Faust's recovery never reads the offset before the end and finishes only through
    its check for aborted transactions, after two 5 s polls without records.  ``reader``
    (a ``read_committed`` consumer of no group) reads the last ``TAIL_WINDOW`` offsets
    before each end; a partition keeps its end when none of them is a committed record
    or the reading takes longer than ``timeout`` seconds.
    """
    found = dict(ends)
    tails = {TopicPartition(tp.topic, tp.partition): end for tp, end in ends.items() if end > 0}
    if not tails:
        return found
    reader.assign(list(tails))
    for tp, end in tails.items():
        reader.seek(tp, max(end - TAIL_WINDOW, 0))
    last: dict[TopicPartition, int] = {}
    pending = set(tails)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for tp, records in (await reader.getmany(*pending, timeout_ms=100)).items():
            offsets = [r.offset for r in records if r.offset < tails[tp]]
            if offsets:  # records come in offset order
                last[tp] = offsets[-1]
        for tp in list(pending):
            if await reader.position(tp) >= tails[tp]:
                pending.discard(tp)
    for tp in tails.keys() - pending:
        if tp in last:
            found[TP(tp.topic, tp.partition)] = last[tp] + 1
    return found


def _assignment(kafka: AIOKafkaConsumer) -> Any:
    """aiokafka's current assignment (each partition's fetch state), None before one."""
    subscription = kafka._subscription.subscription
    return subscription.assignment if subscription is not None else None


def fetch_state(consumer: FaustConsumer, kafka: AIOKafkaConsumer, tp: TP) -> str:
    """Where fetching ``tp`` stands, for a log line: in Faust's bookkeeping (``consumer``:
    active, paused, held back while its buffer is full, the read offset, the flow) and in
    aiokafka's (``kafka``: the partition's fetch status, position and pause, a fetched
    result not yet read, a fetch in flight to its leader, the fetch routine alive)."""
    faust_side = (
        f"Faust: active={tp in (consumer._active_partitions or ())} "
        f"paused={tp in consumer._paused_partitions} "
        f"buffered={tp in consumer._buffered_partitions} "
        f"read_offset={consumer._read_offset.get(tp)} flow_active={consumer.flow_active}"
    )
    ktp = TopicPartition(tp.topic, tp.partition)
    assignment = _assignment(kafka)
    if assignment is None or ktp not in assignment.tps:
        return f"{faust_side}; aiokafka: not assigned"
    state = assignment.state_value(ktp)
    fetcher = kafka._fetcher
    unread = fetcher._records.get(ktp)
    leader = kafka._client.cluster.leader_for_partition(ktp)
    return (
        f"{faust_side}; aiokafka: {state!r} paused={state.paused} "
        f"unread={None if unread is None else type(unread).__name__} "
        f"fetch_in_flight={leader in fetcher._in_flight} "
        f"fetch_routine_done={fetcher._fetch_task.done()}"
    )


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch wait of the app's
    ``recstream_fetch_max_wait`` (seconds; Faust fixes it at 1.5 s), after an empty
    fetch the pause of its ``recstream_empty_fetch_pause`` (:func:`pace_empty_fetches`),
    the fed topics' records as aiokafka parsed them (:func:`hand_out_parsed_records`),
    and the changelogs' end offsets asked of the broker (:meth:`_highwaters`); a
    recovery that waits on a partition says where its fetching stands
    (:meth:`verify_recovery_event_path`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The recovery (its start) whose stalled partitions :attr:`_stalled` holds.
        self._stalls_of: float | None = None
        self._stalled: set[TP] = set()
        #: Each partition's position right after the last fetch that returned records of it.
        self._fetched_to: dict[TP, int] = {}

    async def fetch_again(self, first_offsets: Mapping[TP, int]) -> None:
        """Seek each partition back to the given offset, the first of its records that the
        last fetch returned and Faust did not take, so the next fetches return them again.

        A partition sought, reset or unassigned since that fetch is left alone: whoever
        moved it chose where it reads next.
        """
        await self.call_thread(self._fetch_again, self._ensure_consumer(), first_offsets)

    async def _fetch_again(
        self, consumer: AIOKafkaConsumer, first_offsets: Mapping[TP, int]
    ) -> None:
        assignment = _assignment(consumer)
        if assignment is None:
            return
        for tp, offset in first_offsets.items():
            ktp = TopicPartition(tp.topic, tp.partition)
            if ktp not in assignment.tps:
                continue
            state = assignment.state_value(ktp)
            if state.has_valid_position and state.position == self._fetched_to.get(tp):
                log.debug("fetching %s[%d] again from offset %d", tp.topic, tp.partition, offset)
                consumer.seek(ktp, offset)

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        """Faust's check that a recovering changelog partition is fetched (every 5 s
        while the recovery has read fewer than 1,000 records), then, once per recovery
        and partition that got no record for Faust's event timeout (30 s) and is not read
        to its end, a warning with :func:`fetch_state`: the worker reads no input until
        its recovery ends, and Faust's own warnings do not say why nothing arrives."""
        super().verify_recovery_event_path(now, tp)
        recovery = cast(TableManager, self.app.tables).recovery
        started = recovery._recovery_started_at
        if started is None:
            return
        last = recovery._active_events_received_at.get(tp, started)
        if now - last < recovery.event_timeout_secs:
            return
        if recovery.active_remaining().get(tp, 0) <= 0:
            return  # read to its end (Faust still lists a partition read past it)
        if started != self._stalls_of:
            self._stalls_of, self._stalled = started, set()
        if tp in self._stalled:
            return
        self._stalled.add(tp)
        log.warning(
            "recovery got nothing from %s[%d] for %.0f s: %s",
            tp.topic,
            tp.partition,
            now - last,
            fetch_state(self.consumer, self._ensure_consumer(), tp),
        )

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets for table recovery, from a ListOffsets request.

        Under exactly-once Faust takes them from the last fetch response's stable
        offset, which aiokafka forgets at every assignment: until a partition's first
        fetch the answer is "none", which recovery reads as an empty changelog.  It then
        skips the changelog, or, after a rejoin, when the offsets read by the previous
        recovery are kept, stops the worker with a ``ConsistencyError``.  The request
        carries the consumer's isolation level, so a ``read_committed`` consumer gets
        the broker's last stable offset, which :func:`ends_of_committed_records` then
        moves back over the transaction markers at the changelog's tail.
        """
        answer = await self._ensure_consumer().end_offsets(partitions)
        ends = {TP(tp.topic, tp.partition): offset for tp, offset in answer.items()}
        kafka: dict[str, Any] | None = getattr(self.app, "recstream_kafka", None)
        if not self.consumer.in_transaction or kafka is None or not any(ends.values()):
            # nothing to look at (and an aiokafka consumer that never read fails to stop)
            return ends
        reader = AIOKafkaConsumer(
            **kafka, group_id=None, enable_auto_commit=False, isolation_level="read_committed"
        )
        await reader.start()
        try:
            return await ends_of_committed_records(reader, ends)
        finally:
            await reader.stop()

    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        if active_partitions:
            pause_inactive(consumer, active_partitions)
        records = await super()._fetch_records(consumer, active_partitions, timeout, max_records)
        assignment = _assignment(consumer) if records else None
        if assignment is not None:
            for tp in records:
                self._fetched_to[TP(tp.topic, tp.partition)] = assignment.state_value(tp).position
        return records

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait: float | None = getattr(self.app, "recstream_fetch_max_wait", None)
        if wait is not None:  # read when the consumer starts (aiokafka has no setter)
            consumer._fetch_max_wait_ms = round(wait * 1000)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        if self._consumer is None:
            return
        hand_out_parsed_records(self._consumer, feeds_of(self.app))
        pause: float = getattr(self.app, "recstream_empty_fetch_pause", 0.0)
        if pause > 0:
            pace_empty_fetches(self._consumer, pause)


@runtime_checkable
class BatchSensor(Protocol):
    """A Faust sensor told once per delivered batch instead of once per message."""

    def on_messages_in(self, tp: TP, messages: Sequence[RawRecord]) -> None:
        """``messages`` (of ``tp``, in offset order) were received."""


class BatchMonitor(Monitor):
    """Faust's monitor (the counts its web pages show), told of a delivered batch once."""

    def on_messages_in(self, tp: TP, messages: Sequence[RawRecord]) -> None:
        """:meth:`on_message_in` for a batch (in offset order), counted as received but
        not as active and without arrival times: Faust settles both when its streams
        acknowledge a message, which the agents do through the consumer instead
        (recstream's own histogram measures the worker's latency)."""
        count = len(messages)
        self.messages_received_total += count
        self.messages_received_by_topic[tp.topic] += count
        self.tp_read_offsets[tp] = messages[-1].offset


class BatchDeliveringConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering the records of fed topics in batches."""

    #: The sensors :meth:`_split_sensors` last split, and how.
    _sensors_split_for: tuple[SensorT, ...] = ()
    _sensors_split: tuple[list[BatchSensor], list[SensorT]] = ([], [])
    #: The commit :meth:`_commit_in_background` started last.
    _background_commit: asyncio.Future[Any] | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (transport/consumer.py), one fetch at a time instead of one
        # record at a time.
        feeds: Mapping[str, InputFeed] = feeds_of(self.app)
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                try:
                    await self.sleep(0)
                    records, active = await self._wait_next_records(1.0)
                    if records is None or self.should_stop:
                        continue
                    if not self.flow_active:
                        await self._fetch_again(records)
                        await self._seek_back()
                        continue
                    await self._deliver(records, active, feeds)
                finally:
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise

    async def _seek_back(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:  # as Faust: logged, the next fetch tries again
            log.warning("exception performing seek when flow not active %s", exc)

    async def _deliver(
        self,
        records: Mapping[TP, list[Any]],
        active: set[TP] | None,
        feeds: Mapping[str, InputFeed],
    ) -> None:
        generation = self.app.consumer_generation_id
        dropped: dict[TP, list[Any]] = {}
        for tp, batch in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                dropped[tp] = batch
                continue
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                dropped[tp] = batch
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            feed = feeds.get(tp.topic)
            if feed is None:
                await self._deliver_each(tp, batch)
            else:
                await self._deliver_batch(tp, batch, feed)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                self._commit_in_background()
        if dropped:
            await self._fetch_again(dropped)

    async def _fetch_again(self, records: Mapping[TP, list[Any]]) -> None:
        """Have the consumer thread fetch again the fetched ``records`` Faust did not take."""
        first_offsets = {tp: batch[0].offset for tp, batch in records.items() if batch}
        if not first_offsets:
            return
        thread = cast(_ConsumerThread, self._thread)
        try:  # a consumer thread that stopped never answers
            await asyncio.wait_for(
                thread.fetch_again(first_offsets), self.app.conf.broker_request_timeout
            )
        except Exception as exc:  # as Faust's seek back: logged, a rebalance seeks anew
            log.warning("could not seek back to records not delivered: %r", exc)

    def _commit_in_background(self) -> None:
        """Commit (Faust's every-``broker_commit_every``-acks commit) without holding up
        delivery, unless such a commit still runs.  Faust awaits it here, but a commit
        first flushes the held changelog records (tens of milliseconds at a few thousand
        events/s), and no record reached the agents meanwhile: every commit showed as a
        latency spike.  A failed commit crashes the consumer, as it would here."""
        if self._background_commit is None or self._background_commit.done():
            self._background_commit = self.add_future(self.commit())

    def _split_sensors(self) -> tuple[list[BatchSensor], list[SensorT]]:
        """The app's sensors told once per batch, and those told of each message; worked
        out again only when the sensors change (a protocol check per batch is slow)."""
        sensors = tuple(self.app.sensors)
        if self._sensors_split_for != sensors:
            self._sensors_split_for = sensors
            self._sensors_split = (
                [sensor for sensor in sensors if isinstance(sensor, BatchSensor)],
                [sensor for sensor in sensors if not isinstance(sensor, BatchSensor)],
            )
        return self._sensors_split

    async def _accept(self, tp: TP, offset: int, acks: bool) -> bool:
        """Faust's read-offset rule: skip what was read, note gaps (committed past)."""
        read = self._read_offset[tp]
        if read is not None and offset < read:
            return False
        if acks and read and offset - read > 1:
            await self._add_gap(tp, read + 1, offset)
        return True

    async def _deliver_each(self, tp: TP, batch: list[Any]) -> None:
        acks = self.app.topics.acks_enabled_for(tp.topic)
        for record in batch:
            if await self._accept(tp, record.offset, acks):
                message = self._to_message(tp, record)
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                self._read_offset[tp] = record.offset

    async def _deliver_batch(self, tp: TP, batch: list[Any], feed: InputFeed) -> None:
        # Faust's per-record steps (its read-offset rule, the tracking for the rebalance
        # wait, the sensors) once per batch, and the records made column by column.
        if not batch:
            return
        offsets = list(map(_OFFSET, batch))
        read = self._read_offset[tp]
        if read is not None and offsets[0] < read:  # read already (Faust skips only < read)
            start = bisect_left(offsets, read)
            batch, offsets = batch[start:], offsets[start:]
            if not offsets:
                return
        acks = self.app.topics.acks_enabled_for(tp.topic)
        first, last = offsets[0], offsets[-1]
        self._read_offset[tp] = last
        if acks and (last - first >= len(offsets) or (read and first - read > 1)):
            # compacted away, or transaction markers: committable past them.  Faust's
            # rule, offset by offset (it looks for no gap after a read offset of 0).
            for before, offset in zip([read, *offsets[:-1]], offsets, strict=True):
                if before and offset - before > 1:
                    await self._add_gap(tp, before + 1, offset)
        records = raw_records(
            feed.kind, tp.topic, tp.partition, offsets, map(_VALUE, batch), map(_KEY, batch)
        )
        fed = FedBatch(records, tp, self.app.consumer_generation_id)
        if acks:  # pending acknowledgement: a rebalance waits for it
            self._unacked_messages.add(fed)  # type: ignore[arg-type]  # see FedBatch
            by_batch, each = self._split_sensors()
            if each:  # Faust's sensors are told of each message
                for record in batch:
                    message = self._to_message(tp, consumer_record(tp, record))
                    for sensor in each:
                        sensor.on_message_in(tp, record.offset, message)
            for batch_sensor in by_batch:
                batch_sensor.on_messages_in(tp, records)
        if feed.queue.full() or not self.app.flow_control.is_active():
            # As Faust's own delivery: wait for room and for the app's flow (resuming
            # it clears the feeds), unless a rebalance starts (a seek re-reads them).
            await self.wait_first(feed.queue.put(fed), self.suspend_flow.wait())
        else:
            feed.queue.put_nowait(fed)

    def acknowledge(self, taken: Taken) -> None:
        """Faust's :meth:`ack` for the records of one take, once processed, in one step:
        their offsets become committable, and the batches they complete are no longer
        waited for.  A feed's takes must be acknowledged in the order they were taken;
        a second acknowledgement of the same take does nothing.  (Faust's ack takes a
        lock, a weak-set removal and a wake-up per message: ``batch_speed.py``'s
        "deliver" step, see the README.)"""
        if taken.acknowledged:
            return
        taken.acknowledged = True
        acks_enabled = self.app.topics.acks_enabled_for
        records = taken.records
        acknowledged = 0
        with ack_lock:
            for tp, start, end in taken.spans:
                if not acks_enabled(tp.topic):
                    continue
                committed, index = self._committed_offset[tp], self._acked_index[tp]
                offsets = map(_OFFSET, records[start:end])
                if committed is None:
                    new = [offset for offset in offsets if offset not in index]
                else:
                    new = [
                        offset for offset in offsets if offset >= committed and offset not in index
                    ]
                index.update(new)  # before the next span: a partition's offsets count once
                self._acked[tp] += new
                acknowledged += len(new)
            self._n_acked += acknowledged
            for batch in taken.completes:
                batch.acked = True
            if self._unacked_messages:
                self._clean_unacked_messages()
            notify(self._waiting_for_ack)
