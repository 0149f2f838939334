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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from faust.types import AppT

from recstream.streams.pipeline import partition_for_key


class BatchProducer(Protocol):
    """What :class:`RecordBatches` needs of ``aiokafka.AIOKafkaProducer``."""

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]: ...


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
        self._records: dict[str, list[tuple[bytes | None, bytes | None, int | None]]] = {}

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue one record; ``partition`` None: placed by its key."""
        self._records.setdefault(topic, []).append((key, value, partition))

    def __len__(self) -> int:
        return sum(map(len, self._records.values()))

    async def send(self) -> list[Awaitable[Any]]:
        """Submit every queued record; the futures the acknowledgements resolve."""
        records, self._records = self._records, {}
        acks: list[Awaitable[Any]] = []
        for topic, queued in records.items():
            count = await self._partitions_of(topic)
            sticky = random.randrange(count)
            by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
            for key, value, partition in queued:
                if partition is None:
                    partition = sticky if key is None else partition_for_key(key, count)
                by_partition.setdefault(partition, []).append((key, value))
            for partition, pairs in by_partition.items():
                acks += await self._send_partition(topic, partition, pairs)
        return acks

    async def _send_partition(
        self, topic: str, partition: int, pairs: list[tuple[bytes | None, bytes | None]]
    ) -> list[Awaitable[Any]]:
        producer = self._producer
        acks: list[Awaitable[Any]] = []
        batch = producer.create_batch()
        for key, value in pairs:
            if batch.append(key=key, value=value, timestamp=None) is None:
                # full (the producer's max batch size): submit it and start another,
                # which takes any first record whatever its size
                batch.close()
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        batch.close()
        acks.append(await producer.send_batch(batch, topic, partition=partition))
        return acks


class Outbox(Protocol):
    """Where a step puts its records (:class:`RecordBatches`, or one transaction's)."""

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None: ...

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
