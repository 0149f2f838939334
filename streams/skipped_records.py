"""Finding input records that Faust skipped, and reading them again.

Right after a partition is (re)assigned, Faust can skip a few records: records
fetched before its seek to the committed offsets move its read offset past
them, it drops them as already read, and its commit later steps over them
(faust-streaming issues #596 and #606).  Nothing else tells: no error, no dead
letter, the records are simply never processed.

The worker therefore checks that the offsets it processes on each input
partition are contiguous, starting from the consumer group's committed offset
when the partition is first seen.  A hole is read again with a plain consumer
(no group, nothing committed) and processed before the batch that revealed it,
so it is acknowledged before any commit can step over it.  A hole can also be
a transaction marker (an offset without a record), which reads back as nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.pipeline import RawRecord
from recstream.streams.settings import Settings

log = logging.getLogger(__name__)

#: Seconds to read one hole before giving up on it (logged as an error).
READ_TIMEOUT: Final = 10.0

#: (topic, partition)
Partition = tuple[str, int]
#: Committed offsets of the group for some partitions (None: nothing committed).
CommittedReader = Callable[[Sequence[Partition]], Awaitable[dict[Partition, int | None]]]


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``start`` (included) to ``end`` (excluded) of one partition, never processed."""

    topic: str
    partition: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Checked:
    """What :meth:`OffsetTracker.check` found in a batch's positions."""

    #: Offsets never delivered, oldest first.
    gaps: list[Gap]
    #: Indices of the positions that were processed before (to be dropped).
    repeated: list[int]


class OffsetTracker:
    """The next offset expected on each input partition; finds the holes in what arrives."""

    def __init__(self, committed: CommittedReader) -> None:
        self._committed = committed
        self._next: dict[Partition, int] = {}

    async def check(self, positions: Sequence[tuple[str, int, int]]) -> Checked:
        """The holes before these (topic, partition, offset) positions, in arrival order,
        and the positions already processed.

        A partition not seen since its assignment starts at the group's committed
        offset (no check when nothing is committed yet, or the lookup fails).
        Offsets below the expected one were processed before: Faust delivered them
        again (or they precede the committed offset); they are no hole.
        """
        unseen = sorted({(t, p) for t, p, _ in positions} - self._next.keys())
        if unseen:
            try:
                committed = await self._committed(unseen)
            except Exception:
                log.warning("could not read committed offsets of %s", unseen, exc_info=True)
                committed = {}
            for key in unseen:
                start = committed.get(key)
                if start is not None and start >= 0:
                    self._next[key] = start
        found = Checked([], [])
        for index, (topic, partition, offset) in enumerate(positions):
            expected = self._next.get((topic, partition))
            if expected is not None and offset > expected:
                found.gaps.append(Gap(topic, partition, expected, offset))
            if expected is None or offset >= expected:
                self._next[(topic, partition)] = offset + 1
            else:
                found.repeated.append(index)
        return found

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions revoked: when they come back, they start again from the committed offset."""
        for partition in partitions:
            self._next.pop(partition, None)

    def positions(self) -> dict[Partition, int]:
        """The next offset expected on each partition seen since its assignment."""
        return dict(self._next)


class SkippedRecords:
    """Re-reads the holes :class:`OffsetTracker` finds, with clients of its own."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self.settings = settings
        self.group_id = group_id
        self.tracker = OffsetTracker(self._read_committed)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def recover(
        self, kind: str, positions: Sequence[tuple[str, int, int]]
    ) -> tuple[list[RawRecord], list[int]]:
        """The records of every hole before ``positions``, oldest first, as ``kind``
        records, and the indices of the positions processed before (see ``check``)."""
        found = await self.tracker.check(positions)
        records: list[RawRecord] = []
        for gap in found.gaps:
            read = await self._read(gap)
            # Nothing to read: transaction markers (or records removed by retention).
            log.log(
                logging.WARNING if read else logging.DEBUG,
                "%s[%d]: offsets %d-%d were skipped by the consumer; re-read %d record(s)",
                gap.topic,
                gap.partition,
                gap.start,
                gap.end - 1,
                len(read),
            )
            records += [RawRecord(kind, gap.topic, gap.partition, o, v, k) for o, v, k in read]
        if found.repeated:
            log.info("%d record(s) delivered again were dropped", len(found.repeated))
        return records, found.repeated

    def forget(self, partitions: Iterable[Partition]) -> None:
        """See :meth:`OffsetTracker.forget`."""
        self.tracker.forget(partitions)

    async def close(self) -> None:
        """Stop the clients (if they were ever started)."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _read_committed(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        async with self._lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**aiokafka_kwargs(self.settings))
                await admin.start()
                self._admin = admin
            tps = [TopicPartition(t, p) for t, p in partitions]
            offsets = await self._admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        found: dict[Partition, int | None] = {}
        for tp in tps:
            meta = offsets.get(tp)
            found[(tp.topic, tp.partition)] = meta.offset if meta is not None else None
        return found

    async def _read(self, gap: Gap) -> list[tuple[int, bytes | None, bytes | None]]:
        """(offset, value, key) of the records in the hole; [] for markers or on timeout."""
        async with self._lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    **aiokafka_kwargs(self.settings),
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    # as the worker's consumer reads: aborted transactions' records skipped
                    isolation_level=(
                        "read_committed"
                        if self.settings.processing_guarantee == "exactly_once"
                        else "read_uncommitted"
                    ),
                )
                await consumer.start()
                self._consumer = consumer
            consumer = self._consumer
            tp = TopicPartition(gap.topic, gap.partition)
            consumer.assign([tp])
            consumer.seek(tp, gap.start)
            read: list[tuple[int, bytes | None, bytes | None]] = []
            deadline = time.monotonic() + READ_TIMEOUT
            while await consumer.position(tp) < gap.end:
                if time.monotonic() > deadline:
                    log.error(
                        "%s[%d]: gave up re-reading offsets %d-%d",
                        gap.topic,
                        gap.partition,
                        gap.start,
                        gap.end - 1,
                    )
                    break
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    if gap.start <= record.offset < gap.end:
                        read.append((record.offset, record.value, record.key))
            return read
