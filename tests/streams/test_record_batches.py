"""RecordBatches: records placed like aiokafka's default partitioner, one batch per partition."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from recstream.streams.pipeline import partition_for_key
from recstream.streams.record_batches import RecordBatches, fill


def built_pairs(batch: BatchBuilder) -> list[tuple[bytes | None, bytes | None]]:
    """The (key, value) of each record in a closed batch, read back from its bytes, and
    checked to count as many records as the batch says it holds."""
    records = MemoryRecords(bytes(batch._build()))
    pairs = []
    while records.has_next():
        pairs += [(record.key, record.value) for record in records.next_batch()]
    assert len(pairs) == batch.record_count()
    return pairs


class BatchProducer:
    """Real ``BatchBuilder``s of ``batch_size`` bytes; records what was submitted."""

    def __init__(self, batch_size: int = 16_384) -> None:
        self.batch_size = batch_size
        self.submitted: list[tuple[str, int, int]] = []  # topic, partition, records
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0, key_serializer=None, value_serializer=None)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        # complete when submitted: aiokafka sends a closed batch at once, an open one
        # waits out the producer's linger (5 ms) for records that never come
        assert batch.closed()
        self.submitted.append((topic, partition, batch.record_count()))
        self.records.setdefault((topic, partition), []).extend(built_pairs(batch))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def batches(producer: BatchProducer, partitions: dict[str, int]) -> RecordBatches:
    async def partitions_of(topic: str) -> int:
        return partitions[topic]

    return RecordBatches(producer, partitions_of)


def test_keyed_records_go_where_aiokafkas_default_partitioner_puts_them() -> None:
    keys = [f"user-{n}".encode() for n in range(200)]
    partitioner = DefaultPartitioner()
    for count in (1, 3, 4, 12):
        expected = [partitioner(key, list(range(count)), list(range(count))) for key in keys]
        assert [partition_for_key(key, count) for key in keys] == expected


def test_one_batch_and_one_future_per_topic_partition() -> None:
    producer = BatchProducer()
    out = batches(producer, {"recs": 4, "changelog": 4})
    keys = [f"u{n}".encode() for n in range(40)]
    for key in keys:
        out.add("recs", key, b"{}")
    out.add("changelog", b"u1", b"state", 2)  # an explicit partition wins over the key
    out.add("changelog", b"u1", None, 2)
    assert len(out) == 42
    acks = asyncio.run(out.send())
    assert len(out) == 0
    per_partition: dict[int, int] = {}
    for key in keys:
        partition = partition_for_key(key, 4)
        per_partition[partition] = per_partition.get(partition, 0) + 1
    recs = sorted((p, n) for topic, p, n in producer.submitted if topic == "recs")
    assert recs == sorted(per_partition.items())
    assert [s for s in producer.submitted if s[0] == "changelog"] == [("changelog", 2, 2)]
    assert len(acks) == len(producer.submitted)


def test_records_without_a_key_stick_to_one_partition_per_send() -> None:
    producer = BatchProducer()
    out = batches(producer, {"deadletter": 8})
    for n in range(20):
        out.add("deadletter", None, f"bad {n}".encode())
    asyncio.run(out.send())
    assert len(producer.submitted) == 1
    topic, partition, records = producer.submitted[0]
    assert topic == "deadletter" and 0 <= partition < 8 and records == 20


def test_a_full_batch_is_submitted_and_another_started() -> None:
    """With a 1-byte batch size (the Tansu test setting) every record is its own batch."""
    producer = BatchProducer(batch_size=1)
    out = batches(producer, {"recs": 1})
    for n in range(5):
        out.add("recs", f"u{n}".encode(), b"x" * 100)
    acks = asyncio.run(out.send())
    assert producer.submitted == [("recs", 0, 1)] * 5 and len(acks) == 5


def test_records_added_one_by_one_and_by_column_keep_their_order_in_their_partition() -> None:
    producer = BatchProducer()
    out = batches(producer, {"recs": 4})
    out.add("recs", b"u7", b"one")
    keys = [f"u{n % 9}".encode() for n in range(30)]
    values = [f"col {n}".encode() for n in range(30)]
    out.add_keyed("recs", keys, values)
    out.add("recs", b"u7", b"to partition 3", 3)  # a given partition wins over the key
    out.add("recs", None, b"no key")
    assert len(out) == 33
    asyncio.run(out.send())
    expected: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for key, value in [(b"u7", b"one"), *zip(keys, values, strict=True)]:
        expected.setdefault(partition_for_key(key, 4), []).append((key, value))
    expected.setdefault(3, []).append((b"u7", b"to partition 3"))
    sticky = [p for (_, p), got in producer.records.items() if (None, b"no key") in got]
    assert len(sticky) == 1  # the keyless record went to one partition, after the others
    expected.setdefault(sticky[0], []).append((None, b"no key"))
    assert {p: got for (_, p), got in producer.records.items()} == expected


def test_only_as_many_keys_as_values_are_taken() -> None:
    out = batches(BatchProducer(), {"recs": 4})
    with pytest.raises(ValueError, match="2 keys for 1 values"):
        out.add_keyed("recs", [b"a", b"b"], [b"x"])
    assert len(out) == 0


@pytest.mark.parametrize("serializer", [None, bytes])
def test_fill_takes_what_append_takes_at_the_same_offsets(serializer: Any) -> None:
    """Without serializers straight into the record builder, with them through
    ``append``: the same records at the same offsets as ``append`` one by one, up to
    the batch size, also into a batch that holds records already."""
    pairs = [(b"user%d" % n, b"v" * (40 + n)) for n in range(60)]

    def new_batch() -> BatchBuilder:
        return BatchBuilder(2_000, 0, key_serializer=serializer, value_serializer=serializer)

    ours, theirs = new_batch(), new_batch()
    for batch in (ours, theirs):
        batch.append(key=b"first", value=b"already there", timestamp=1_700_000_000_000)
    taken = fill(ours, pairs)
    appended = 0
    for key, value in pairs:
        if theirs.append(key=key, value=value, timestamp=None) is None:
            break
        appended += 1
    assert 0 < taken == appended < len(pairs)  # full before the end
    assert ours.record_count() == theirs.record_count() == taken + 1
    assert (
        built_pairs(ours) == built_pairs(theirs) == [(b"first", b"already there"), *pairs[:taken]]
    )
    offsets = [r.offset for r in MemoryRecords(bytes(ours._build())).next_batch()]
    assert offsets == list(range(taken + 1))


def test_a_new_batch_that_takes_no_record_is_an_error_not_a_loop() -> None:
    class Refusing(BatchProducer):
        def create_batch(self) -> BatchBuilder:
            batch = super().create_batch()
            batch.close()  # a closed batch takes nothing
            return batch

    out = batches(Refusing(), {"recs": 1})
    out.add("recs", b"u1", b"x")
    with pytest.raises(ValueError, match="took no record"):
        asyncio.run(out.send())
