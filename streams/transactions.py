"""Exactly-once processing: each batch's outputs, state changes and offsets in one transaction.

With ``RECSTREAM_PROCESSING_GUARANTEE=exactly_once`` Faust gives every assigned input
partition a transactional producer (transactional id ``{app id}-{topic group}-{partition}``)
and commits each partition's offsets inside that producer's transaction.  Faust's own
routing puts a record in the transaction of its *destination* partition, which would
separate a user's outputs from the offsets that caused them, so the worker routes every
record itself:

* the outputs, forwards and state changes of the records read from input partition
  ``p`` go into the transaction of ``p`` (the worker splits each batch by partition);
* what the idle-partition sweep emits for partition ``p`` goes into the transaction of
  ``p`` too, committed at the next commit even when no offset moved;
* the offsets committed with ``p``'s transaction are the worker's own count of what it
  processed (``skipped_records.OffsetTracker``), not Faust's acknowledgements, which
  can stop short of, or step over, records Faust skipped after an assignment.

A commit must never run while a batch has sent some of its records but not yet
acknowledged its input: the transaction would then hold outputs whose offsets it does
not commit, and a crash would replay them.  :class:`BatchGate` keeps the two apart:
batches (and sweeps) hold it shared, the consumer's commit holds it exclusively.
Readers of the output topics see a batch's records only once its transaction commits
(``isolation.level=read_committed``), and each of them exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from recstream.streams.input_batches import BatchDeliveringConsumer
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.record_batches import RecordBatches, partition_counts
from recstream.streams.settings import Settings

#: (topic, partition)
Partition = tuple[str, int]

#: Seconds the start-up check waits for the broker to open a transactional producer.
PROBE_TIMEOUT: Final = 30.0


class BatchGate:
    """A shared/exclusive lock for asyncio tasks that lets a waiting exclusive holder in first.

    Any number of batches hold it shared at once; the commit holds it alone.  Once the
    commit waits, new batches wait behind it, so a busy worker still commits on time.
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold the gate together with other shared holders."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: not self._exclusive and not self._waiting_exclusive
            )
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the gate alone (waits for the shared holders to leave)."""
        async with self._changed:
            self._waiting_exclusive += 1
            try:
                await self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class Transactions:
    """Routes the worker's records into the transactions of their input partitions and
    commits each transaction with the input offsets processed into it."""

    def __init__(self, app: faust.App, processed: Callable[[], Mapping[Partition, int]]) -> None:
        self.app = app
        self.gate = BatchGate()
        #: The next offset to process on each input partition (everything before it is done).
        self.processed = processed
        self._committed: dict[Partition, int] = {}
        #: Transactions of revoked partitions: never committed (their new owner aborts them).
        self._revoked: set[str] = set()
        #: Why a batch stopped half-way, if one did: nothing may commit after that.
        self._failed: BaseException | None = None

    def transactional_id(self, topic: str, partition: int) -> str:
        """The id of the transaction that holds the work of ``topic``'s ``partition``
        (Faust's own naming: one producer per partition of a co-partitioned group)."""
        group = self.app.assignor.group_for_topic(topic)
        return f"{self.app.conf.id}-{group}-{partition}"

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Hold the gate shared for one batch or sweep; should it fail inside, no commit
        may follow (see :meth:`fail`)."""
        async with self.gate.shared():
            try:
                yield
            except BaseException as exc:
                self.fail(exc)
                raise

    def fail(self, exc: BaseException) -> None:
        """A batch or sweep stopped after sending part of its records: from now on every
        commit raises, which stops the worker; its open transactions are aborted when
        the restarted worker's producers take over their ids, and the events are
        processed again from the last committed offsets."""
        if self._failed is None:
            self._failed = exc

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """These partitions go to another worker: their open transactions must not commit.

        The worker forgets their processed offsets at the same time, so a commit now
        would publish their outputs without their offsets; left open, the transaction
        is aborted when the new owner's producer takes over its id, and the new owner
        processes those events again from the committed offsets.
        """
        self._revoked.update(self._ids(partitions))

    def assign(self, partitions: Iterable[Partition]) -> None:
        """These partitions are this worker's (again): commit their transactions."""
        self._revoked.difference_update(self._ids(partitions))

    def _ids(self, partitions: Iterable[Partition]) -> set[str]:
        ids = set()
        for topic, partition in partitions:
            try:
                ids.add(self.transactional_id(topic, partition))
            except KeyError:  # a topic outside the assignment's groups has no transaction
                continue
        return ids

    def outbox(self, transactional_id: str) -> TransactionOutbox:
        """An :class:`~recstream.streams.record_batches.Outbox` for one transaction."""
        return TransactionOutbox(self, transactional_id)

    async def commit(self, start_new_transaction: bool = True) -> None:
        """Commit every open transaction of this worker with its partitions' processed offsets.

        Call it with no batch in flight (the gate held exclusively).  Raises
        ``RuntimeError`` once a batch failed half-way (see :meth:`fail`).  The offsets are
        the worker's own count of what it processed (holes Faust skipped included, see
        ``skipped_records``), not Faust's acknowledgements.  A transaction with no
        records and no offsets ends without a request to the broker.  Errors (a fenced
        producer: another worker owns the partition now) propagate and stop the worker.
        """
        if self._failed is not None:
            raise RuntimeError(
                "exactly_once: a batch failed after sending part of its records; "
                "stopping without committing it"
            ) from self._failed
        moved = {
            key: offset
            for key, offset in self.processed().items()
            if self._committed.get(key) != offset
        }
        offsets: dict[str, dict[TopicPartition, int]] = {}
        for (topic, partition), offset in moved.items():
            transactional_id = self.transactional_id(topic, partition)
            offsets.setdefault(transactional_id, {})[TopicPartition(topic, partition)] = offset
        # Faust's own commit_transaction logs and swallows every error: use the
        # producers it keeps per transactional id directly, under its locks.
        driver = cast(faust_aiokafka.Producer, self.app.producer)
        producers: dict[str, AIOKafkaProducer] = driver._transaction_producers
        locks: dict[str, asyncio.Lock] = driver._trn_locks
        group_id = self.app.conf.id
        for transactional_id, producer in sorted(producers.items()):
            if transactional_id in self._revoked:
                continue
            if not producer._txn_manager.is_in_transaction():  # ended at shutdown
                continue
            async with locks[transactional_id]:
                done = offsets.get(transactional_id)
                if done:
                    await producer.send_offsets_to_transaction(done, group_id)
                await producer.commit_transaction()
                if start_new_transaction:
                    await producer.begin_transaction()
            for tp, offset in (done or {}).items():
                self._committed[(tp.topic, tp.partition)] = offset


class TransactionOutbox(RecordBatches):
    """One step's records, in a batch per topic partition, into one transaction: on the
    producer Faust keeps for the transactional id, under Faust's lock for it (as its
    own send).  aiokafka adds a batch's partition to the open transaction as it does a
    single record's."""

    def __init__(self, transactions: Transactions, transactional_id: str) -> None:
        driver = cast(faust_aiokafka.Producer, transactions.app.producer)
        producer = driver._transaction_producers.get(transactional_id)
        if producer is None:
            raise RuntimeError(
                f"no transactional producer {transactional_id!r}: its partition is not "
                "assigned to this worker"
            )
        super().__init__(producer, partition_counts(producer))
        self._lock = driver._trn_locks[transactional_id]

    async def send(self) -> list[Awaitable[Any]]:
        async with self._lock:
            return await super().send()


class _Commits(TransactionManager):
    """Faust's transaction manager, minus its offset commits (see ``_GatedConsumer``)."""

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        return True


class _GatedConsumer(BatchDeliveringConsumer):
    """Faust's consumer whose commits wait for the batches in flight and then commit
    :class:`Transactions` (see the module docstring).

    Faust still runs its own commit bookkeeping (acknowledged offsets are cleared),
    but its offsets are not sent: after a hole Faust skipped they can lag behind,
    or step over, what the worker really processed.
    """

    async def force_commit(
        self, topics: Iterable[TP] | None = None, start_new_transaction: bool = True
    ) -> bool:
        transactions: Transactions = self.app.recstream_transactions  # type: ignore[attr-defined]
        async with transactions.gate.exclusive():
            committed: bool = await super().force_commit(
                topics, start_new_transaction=start_new_transaction
            )
            await transactions.commit(start_new_transaction)
        return committed


class _GatedTransport(faust_aiokafka.Transport):
    Consumer = _GatedConsumer
    TransactionManager = _Commits


def use_transactions(
    app: faust.App, processed: Callable[[], Mapping[Partition, int]]
) -> Transactions:
    """Make ``app`` commit through :class:`Transactions` (call before declaring topics)."""
    transactions = Transactions(app, processed)
    app.recstream_transactions = transactions  # type: ignore[attr-defined]
    app.transport = _GatedTransport(app.conf.broker_consumer, app)
    return transactions


async def probe_transactions(settings: Settings) -> str | None:
    """Why the brokers cannot run Kafka transactions, or ``None`` when they can.

    Opens (and closes) a transactional producer: its ``InitProducerId`` request is
    the first thing a broker without transactions refuses.
    """
    producer = AIOKafkaProducer(
        transactional_id=f"{settings.app_id}-probe-{uuid.uuid4().hex[:8]}",
        **aiokafka_kwargs(settings),
    )
    try:
        await asyncio.wait_for(producer.start(), timeout=PROBE_TIMEOUT)
        await producer.begin_transaction()
        await producer.abort_transaction()
    except Exception as exc:  # refused, unsupported, timed out
        return f"{type(exc).__name__}: {exc}"
    finally:
        await producer.stop()
    return None
