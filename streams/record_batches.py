"""Hand a step's records to the producer in batches: one per topic partition.

Faust's ``Producer.send`` (like aiokafka's) takes one record at a time and gives each a
future that the broker's acknowledgement resolves, with callbacks on every one: at
thousands of records per second that bookkeeping costs more than building the
records.  :class:`RecordBatches` builds aiokafka ``BatchBuilder``s instead and submits
each with ``send_batch``: one future per topic partition and step.  A batch is closed
before it is submitted, so the producer sends it at once instead of keeping it open
for its linger (5 ms more on every output).  Records are placed
where aiokafka's default partitioner would put them (murmur2 of the key); records
without a key go to one partition chosen at random per step (Kafka's "sticky"
partitioning).

Under exactly-once a step's records go the same way into its transaction
(``transactions.TransactionOutbox``): aiokafka adds a submitted batch's partition to
the producer's open transaction as it does a single record's.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol

from aiokafka.producer.message_accumulator import BatchBuilder
from faust.types import AppT

from recstream.streams.pipeline import partition_for_key


class BatchProducer(Protocol):
    """What :class:`RecordBatches` needs of ``aiokafka.AIOKafkaProducer``."""

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]: ...


@dataclass(slots=True)
class _Queued:
    """One topic's queued records, column by column; a partition None: placed by key."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    partitions: list[int | None] = field(default_factory=list)
    #: How many records came with a partition (none: all are placed by key, in C).
    given: int = 0

    def placed(self, count: int) -> list[int]:
        """Each record's partition among ``count``: as given, else by key, else sticky."""
        if not self.given and None not in self.keys:
            return list(map(partition_for_key, self.keys, repeat(count)))
        sticky = random.randrange(count)
        return [
            partition
            if partition is not None
            else sticky
            if key is None
            else partition_for_key(key, count)
            for key, partition in zip(self.keys, self.partitions, strict=True)
        ]


class RecordBatches:
    """Collects one step's records by topic partition, then sends them (:meth:`send`).

    ``partitions_of(topic)`` tells how many partitions a topic has (awaited once per
    topic and step: aiokafka's metadata, fetched when not known yet).
    """

    def __init__(
        self,
        producer: BatchProducer,
        partitions_of: Callable[[str], Awaitable[int]],
    ) -> None:
        self._producer = producer
        self._partitions_of = partitions_of
        self._records: dict[str, _Queued] = {}

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue one record; ``partition`` None: placed by its key."""
        queued = self._queued(topic)
        queued.keys.append(key)
        queued.values.append(value)
        queued.partitions.append(partition)
        if partition is not None:
            queued.given += 1

    def add_keyed(self, topic: str, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Queue many records, each placed by its key (no Python code per record)."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        queued = self._queued(topic)
        queued.keys += keys
        queued.values += values
        queued.partitions += repeat(None, len(keys))

    def __len__(self) -> int:
        return sum(len(queued.keys) for queued in self._records.values())

    async def send(self) -> list[Awaitable[Any]]:
        """Submit every queued record; the futures the acknowledgements resolve."""
        records, self._records = self._records, {}
        acks: list[Awaitable[Any]] = []
        for topic, queued in records.items():
            placed = queued.placed(await self._partitions_of(topic))
            by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {
                partition: []
                for partition in dict.fromkeys(placed)  # in first-seen order
            }
            pairs = zip(queued.keys, queued.values, strict=True)
            # each pair appended to its partition's list, in C
            deque(map(list.append, map(by_partition.__getitem__, placed), pairs), maxlen=0)
            for partition, chosen in by_partition.items():
                acks += await self._send_partition(topic, partition, chosen)
        return acks

    def _queued(self, topic: str) -> _Queued:
        queued = self._records.get(topic)
        if queued is None:
            queued = self._records[topic] = _Queued()
        return queued

    async def _send_partition(
        self, topic: str, partition: int, pairs: list[tuple[bytes | None, bytes | None]]
    ) -> list[Awaitable[Any]]:
        producer = self._producer
        acks: list[Awaitable[Any]] = []
        while pairs:
            # full at the producer's max batch size (a batch takes any first record
            # whatever its size): submitted, and the rest goes into the next one
            batch = producer.create_batch()
            taken = fill(batch, pairs)
            if not taken:  # (aiokafka's take any first record: this would loop forever)
                raise ValueError(f"a new batch for {topic} took no record")
            batch.close()
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            pairs = pairs[taken:]
        return acks


def fill(batch: Any, pairs: Sequence[tuple[bytes | None, bytes | None]]) -> int:
    """Append ``pairs`` to an open batch (aiokafka's ``BatchBuilder`` or one like it) until
    it is full; returns how many it took.  Straight into a ``BatchBuilder``'s record
    builder when it has no serializers (the producers here): its ``append`` adds
    ~0.15-0.25 µs a record of Python around that (a headers list, serializing, a
    count), measured with timeit."""
    if (
        not isinstance(batch, BatchBuilder)
        or batch.closed()  # (takes nothing)
        # (aiokafka 0.10's BatchBuilder has no serializers: it takes bytes)
        or getattr(batch, "_key_serializer", None)
        or getattr(batch, "_value_serializer", None)
    ):
        taken = 0
        for key, value in pairs:
            if batch.append(key=key, value=value, timestamp=None) is None:
                break
            taken += 1
        return taken
    append = batch._builder.append
    taken = batch._relative_offset
    for key, value in pairs:
        if append(taken, None, key=key, value=value, headers=[]) is None:
            break
        taken += 1
    added = taken - batch._relative_offset
    batch._relative_offset = taken  # BatchBuilder's count of its records
    return added


class Outbox(Protocol):
    """Where a step puts its records (:class:`RecordBatches`, or one transaction's)."""

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None: ...

    def add_keyed(self, topic: str, keys: Sequence[bytes], values: Sequence[bytes]) -> None: ...

    async def send(self) -> list[Awaitable[Any]]: ...


def partition_counts(producer: Any) -> Callable[[str], Awaitable[int]]:
    """How many partitions a topic has, from an aiokafka ``producer``'s metadata."""

    async def partitions_of(topic: str) -> int:
        return len(await producer.partitions_for(topic))

    return partitions_of


def faust_record_batches(app: AppT) -> RecordBatches:
    """:class:`RecordBatches` on the aiokafka producer under ``app``'s Faust producer."""
    producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return RecordBatches(producer, partition_counts(producer))
