"""The worker's per-user state: a changelog-backed Faust table written with explicit partitions.

The pipeline decides which partition owns each user (the partition Kafka's default
partitioner gives the user id), so writes go straight to the table's store and its
changelog partition.  This avoids Faust's ``Table.__setitem__``, which needs a current
Faust event (the agents, fed whole batches, have none) and would place the changelog
record by the pseudonymised key instead.

At-least-once, the changelog is written per commit, not per change: the records a
batch releases wait in the store, the latest per key, and the consumer sends them
(and waits for the broker's acknowledgements) right before it commits offsets
(:func:`flush_changelog_before_commits`).  A user touched by every batch between two
commits costs one changelog record instead of one per batch, and a committed offset
never runs ahead of the state changes of the events before it.  The storefront's table
of each user's latest answers (derived from the outputs) holds its records the same way
and is flushed with the user state (``hold_changelog``, :meth:`TableStateStore.also_flush`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TableT

from recstream.streams.input_batches import BatchDeliveringConsumer
from recstream.streams.record_batches import faust_record_batches
from recstream.streams.settings import Settings

if TYPE_CHECKING:
    from recstream.streams.transactions import Transactions

TABLE_NAME = "user-state"


def declare_table(app: faust.App, settings: Settings) -> TableT:
    """The user-state table: bytes keys (user ids) to bytes values (``UserState``).

    ``bytes`` key and value types give the table ``raw`` serializers.
    """
    return app.Table(
        TABLE_NAME,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,
        help="Per-user sessions, history and recent event ids (recstream.streams.sessions).",
    )


#: One changelog record: (partition, key, value or ``None`` for a tombstone).
ChangelogRecord = tuple[int, bytes, bytes | None]


def exact_size(value: bytes) -> bytes:
    """A copy of ``value`` in a buffer of its own length, for bytes kept long-term.

    ``orjson.dumps`` returns bytes whose buffer is over-allocated (4 KiB for a 10-byte
    document, 8 KiB for a 1 KB one, with orjson 3.13): held as they are, they would
    multiply the memory of what is kept.
    """
    return bytes(memoryview(value))


class ChangelogBatch:
    """The changelog records of one step of state changes, held until it may be sent."""

    def __init__(self, records: list[ChangelogRecord], route: str | None = None) -> None:
        self.records = records
        #: The transactional id the records go out in (exactly-once), else None.
        self.route = route
        #: Set when the batch's outputs are acknowledged (or the batch gave up).
        self.released = False
        self.sent = asyncio.Event()


class TableStateStore:
    """A :class:`~recstream.streams.pipeline.StateStore` over a Faust table.

    With ``defer_changelog`` the local table changes at once but the changelog
    records wait: the worker seals each step's records into a :class:`ChangelogBatch`
    (:meth:`seal`) and releases it only after that batch's outputs are acknowledged
    (:meth:`publish`).  Otherwise a crash after the changelog write but before the
    outputs would recover a state that already holds the batch's event ids, and the
    replayed events would be dropped as duplicates: outputs lost.

    Several agents change the table concurrently (one per input topic, interleaved at
    every ``await``), so sealed batches are sent strictly in the order they were sealed:
    a batch released early waits for the ones before it.  The changelog then always
    ends with the latest local value of a key, and no agent's changes are sent while
    that agent still waits for its acknowledgements.

    Released records are not sent at once: they wait, the latest per key, until
    :meth:`flush` (called before every offset commit, after idle sweeps and when
    partitions are revoked).  With ``transactions`` (exactly-once) each sealed batch
    instead goes out at once in the transaction named by its ``route``, and
    :meth:`publish` also waits for the records' acknowledgements.
    """

    def __init__(
        self,
        table: TableT,
        *,
        defer_changelog: bool = False,
        transactions: Transactions | None = None,
        hold_changelog: bool = False,
    ) -> None:
        self.table = table
        self.defer_changelog = defer_changelog or transactions is not None
        self.transactions = transactions
        #: Records of a store that is not deferred wait for :meth:`flush` at once (the
        #: latest per key) instead of going out one Faust send each: for tables derived
        #: from the outputs, whose records must only reach the changelog before the
        #: offsets of the events behind them are committed (a crash replays those).
        self.hold_changelog = hold_changelog and not self.defer_changelog
        self._followers: list[TableStateStore] = []
        self._open: list[ChangelogRecord] = []
        self._sealed: deque[ChangelogBatch] = deque()
        self._sending = asyncio.Lock()
        #: Released records not sent yet: key -> (partition, latest value or None).
        self._held: dict[bytes, tuple[int, bytes | None]] = {}
        self._flushing = asyncio.Lock()
        self._failed = False

    def get(self, key: str) -> bytes | None:
        """The state bytes of ``key`` on this worker, if any."""
        value: bytes | None = self.table.data.get(key.encode("utf-8"))
        return value

    def put(self, key: str, value: bytes, partition: int) -> bytes:
        """Store ``value`` locally and append it to changelog ``partition``; returns the
        bytes object the table now holds, an :func:`exact_size` copy.
        """
        raw_key = key.encode("utf-8")
        value = exact_size(value)
        self.table.data[raw_key] = value
        self._remember_partition(raw_key, partition)
        self._changelog(partition, raw_key, value)
        return value

    def delete(self, key: str, partition: int) -> None:
        """Remove ``key`` locally and write a tombstone to changelog ``partition``."""
        raw_key = key.encode("utf-8")
        self.table.data.pop(raw_key, None)
        self._partitions().pop(raw_key, None)
        self._changelog(partition, raw_key, None)

    def seal(self, route: str | None = None) -> ChangelogBatch:
        """Close the records written since the last seal into a batch queued for sending.

        Call it right after a synchronous step of changes (no ``await`` in between), so
        the batch holds exactly that step's records.  ``route``: the transactional id
        to send them in (required with ``transactions``).
        """
        if self.transactions is not None and route is None:
            raise ValueError("a transactional state store needs the route of every batch")
        batch = ChangelogBatch(self._open, route)
        self._open = []
        if batch.records:
            self._sealed.append(batch)
        else:  # nothing to order: already "sent"
            batch.released = True
            batch.sent.set()
        return batch

    async def publish(self, *batches: ChangelogBatch) -> None:
        """Release ``batches`` and return once their records are held for the next
        :meth:`flush` (with ``transactions``: once the broker acknowledged them).

        Records are sent in seal order; a released batch behind an unreleased one waits.
        """
        for batch in batches:
            batch.released = True
        acks: list[Awaitable[Any]] = []
        async with self._sending:  # sending may yield: keep concurrent publishers in order
            while self._sealed and self._sealed[0].released:
                head = self._sealed.popleft()
                acks += await self._send(head)
                head.sent.set()
        for batch in batches:
            await batch.sent.wait()
        if acks:
            await asyncio.gather(*acks)

    def fail(self) -> None:
        """A batch failed after changing the local state: from now on nothing reaches the
        changelog (its records could remember events whose outputs were never sent), and
        :meth:`flush` raises, so no offset commit follows either; the worker stops."""
        self._failed = True
        self._held.clear()

    async def flush(self) -> None:
        """Send the held records and wait until the broker acknowledged them.

        One flush at a time: records released meanwhile wait for the next one, so a
        key's records still reach the changelog in order.
        """
        if self._failed:
            raise RuntimeError("a batch failed: its state must not reach the changelog")
        async with self._flushing:
            held, self._held = self._held, {}
            if held:
                batches = faust_record_batches(self.table.app)
                topic = self.table.changelog_topic.get_topic_name()
                for raw_key, (partition, value) in held.items():
                    batches.add(topic, raw_key, value, partition)
                await asyncio.gather(*await batches.send())
        for follower in self._followers:
            await follower.flush()

    def also_flush(self, follower: TableStateStore) -> None:
        """Flush ``follower`` (a store holding its changelog) whenever this one flushes:
        before every offset commit, when partitions are revoked, after idle sweeps."""
        self._followers.append(follower)

    @property
    def held(self) -> int:
        """How many keys' changelog records wait for the next :meth:`flush`."""
        return len(self._held)

    async def _send(self, batch: ChangelogBatch) -> list[Awaitable[Any]]:
        if self._failed:
            return []
        if self.transactions is None:
            held = self._held
            for partition, raw_key, value in batch.records:
                held[raw_key] = (partition, value)
            return []
        assert batch.route is not None  # seal() checks it
        topic = self.table.changelog_topic.get_topic_name()
        outbox = self.transactions.outbox(batch.route)
        for partition, raw_key, value in batch.records:
            outbox.add(topic, raw_key, value, partition)
        return await outbox.send()

    def _changelog(self, partition: int, raw_key: bytes, value: bytes | None) -> None:
        if self.defer_changelog:
            self._open.append((partition, raw_key, value))
        elif self.hold_changelog:
            self._held[raw_key] = (partition, value)
        else:
            self.table.send_changelog(partition, raw_key, value, "raw", "raw")

    def items_by_partition(self) -> list[tuple[int, str, bytes]]:
        """Every (partition, user, state) held locally whose partition is known."""
        partitions = self._partitions()
        out = []
        for raw_key, value in list(self.table.data.items()):
            partition = partitions.get(raw_key)
            if partition is not None and value is not None:
                out.append((partition, raw_key.decode("utf-8"), value))
        return out

    def __len__(self) -> int:
        return len(self.table.data)

    def _partitions(self) -> dict[Any, int]:
        # Faust's memory store records each key's partition when it recovers from the
        # changelog and drops keys of revoked partitions with it; local writes are
        # recorded here too so revocation and sweeping see them.
        mapping = getattr(self.table.data, "_key_partition", None)
        return mapping if isinstance(mapping, dict) else {}

    def _remember_partition(self, raw_key: bytes, partition: int) -> None:
        mapping = getattr(self.table.data, "_key_partition", None)
        if isinstance(mapping, dict):
            mapping[raw_key] = partition


class _FlushingConsumer(BatchDeliveringConsumer):
    """Faust's consumer that flushes the worker's held changelog records before it
    commits offsets (the offsets are already chosen: only acknowledged events count,
    and an event is acknowledged after its batch released its records)."""

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        store: TableStateStore = self.app.recstream_store  # type: ignore[attr-defined]
        await store.flush()
        committed: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        return committed


class _FlushingTransport(faust_aiokafka.Transport):
    Consumer = _FlushingConsumer


def flush_changelog_before_commits(app: faust.App) -> None:
    """Make ``app``'s consumer flush ``app.recstream_store`` before each offset commit
    (at-least-once; call before declaring topics, then set ``app.recstream_store``)."""
    app.transport = _FlushingTransport(app.conf.broker_consumer, app)
