"""The worker's per-user state: a changelog-backed Faust table written with explicit partitions.

The pipeline decides which partition owns each user (the partition Kafka's default
partitioner gives the user id), so writes go straight to the table's store and its
changelog partition, one write per user per batch.  This avoids Faust's
``Table.__setitem__``, which needs a current event (absent inside ``take()``) and
would place the changelog record by the pseudonymised key instead.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TableT

from recstream.streams.settings import Settings

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


class TableStateStore:
    """A :class:`~recstream.streams.pipeline.StateStore` over a Faust table.

    With ``defer_changelog`` the local table changes at once but the changelog
    records wait for :meth:`flush_changelog`: the worker calls it only after a
    batch's outputs are acknowledged.  Otherwise a crash after the changelog write
    but before the outputs would recover a state that already holds the batch's
    event ids, and the replayed events would be dropped as duplicates: outputs lost.
    """

    def __init__(self, table: TableT, *, defer_changelog: bool = False) -> None:
        self.table = table
        self.defer_changelog = defer_changelog
        #: Changelog records not yet sent: (partition, key, value or None).
        self._pending: list[tuple[int, bytes, bytes | None]] = []

    def get(self, key: str) -> bytes | None:
        """The state bytes of ``key`` on this worker, if any."""
        value: bytes | None = self.table.data.get(key.encode("utf-8"))
        return value

    def put(self, key: str, value: bytes, partition: int) -> None:
        """Store ``value`` locally and append it to changelog ``partition``."""
        raw_key = key.encode("utf-8")
        self.table.data[raw_key] = value
        self._remember_partition(raw_key, partition)
        self._changelog(partition, raw_key, value)

    def delete(self, key: str, partition: int) -> None:
        """Remove ``key`` locally and write a tombstone to changelog ``partition``."""
        raw_key = key.encode("utf-8")
        self.table.data.pop(raw_key, None)
        self._partitions().pop(raw_key, None)
        self._changelog(partition, raw_key, None)

    def flush_changelog(self) -> int:
        """Send the deferred changelog records, in order; returns how many."""
        pending, self._pending = self._pending, []
        for partition, raw_key, value in pending:
            self.table.send_changelog(partition, raw_key, value, "raw", "raw")
        return len(pending)

    def _changelog(self, partition: int, raw_key: bytes, value: bytes | None) -> None:
        if self.defer_changelog:
            self._pending.append((partition, raw_key, value))
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
