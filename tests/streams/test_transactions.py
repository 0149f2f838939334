"""Exactly-once plumbing: the batch gate, offset commits per transaction, the broker probe."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder

from recstream.streams.pipeline import partition_for_key
from recstream.streams.settings import Settings
from recstream.streams.transactions import BatchGate, Transactions, probe_transactions


def test_shared_holders_overlap_and_the_exclusive_holder_waits_for_them() -> None:
    gate = BatchGate()
    log: list[str] = []

    async def batch(name: str, hold: asyncio.Event) -> None:
        async with gate.shared():
            log.append(f"{name} in")
            await hold.wait()
            log.append(f"{name} out")

    async def commit() -> None:
        async with gate.exclusive():
            log.append("commit")

    async def scenario() -> None:
        a_hold, b_hold = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(batch("a", a_hold))
        b = asyncio.create_task(batch("b", b_hold))
        await asyncio.sleep(0.01)
        assert log == ["a in", "b in"]  # both inside at once
        c = asyncio.create_task(commit())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(batch("late", asyncio.Event()))
        await asyncio.sleep(0.01)
        assert log == ["a in", "b in"]  # the commit waits; the late batch waits behind it
        a_hold.set()
        await asyncio.sleep(0.01)
        assert log == ["a in", "b in", "a out"]
        b_hold.set()
        await asyncio.gather(a, b, c)
        await asyncio.sleep(0.01)
        assert log == ["a in", "b in", "a out", "b out", "commit", "late in"]
        late.cancel()

    asyncio.run(scenario())


class TxnState:
    def __init__(self) -> None:
        self.open = True

    def is_in_transaction(self) -> bool:
        return self.open


class TxnProducer:
    """What Transactions uses of an aiokafka transactional producer."""

    def __init__(self, lock: asyncio.Lock | None = None) -> None:
        self._txn_manager = TxnState()
        self.calls: list[Any] = []
        #: Faust's lock for this producer's transactional id
        self.lock = lock
        #: (topic, partition, records, lock held) of each submitted batch
        self.submitted: list[tuple[str, int, int, bool]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16_384, 0, is_transactional=True)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        held = self.lock is not None and self.lock.locked()
        self.submitted.append((topic, partition, batch.record_count(), held))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self.calls.append(("offsets", dict(offsets), group_id))

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        self._txn_manager.open = False

    async def begin_transaction(self) -> None:
        self.calls.append("begin")
        self._txn_manager.open = True


class Driver:
    """Faust's aiokafka producer: one transactional producer and lock per id."""

    def __init__(self, ids: list[str]) -> None:
        self._trn_locks = {tid: asyncio.Lock() for tid in ids}
        self._transaction_producers = {tid: TxnProducer(self._trn_locks[tid]) for tid in ids}


class Assignor:
    def group_for_topic(self, topic: str) -> int:
        return 0


class Conf:
    id = "shop"


class App:
    def __init__(self, driver: Driver) -> None:
        self.producer = driver
        self.assignor = Assignor()
        self.conf = Conf()


def test_commit_sends_each_partitions_processed_offsets_in_its_own_transaction() -> None:
    driver = Driver(["shop-0-0", "shop-0-1"])
    processed = {("clicks", 0): 10, ("searches", 0): 4, ("clicks", 1): 7}
    transactions = Transactions(cast(Any, App(driver)), lambda: processed)
    assert transactions.transactional_id("clicks", 1) == "shop-0-1"

    asyncio.run(transactions.commit())
    zero, one = (driver._transaction_producers[t] for t in ("shop-0-0", "shop-0-1"))
    tp = TopicPartition
    assert zero.calls == [
        ("offsets", {tp("clicks", 0): 10, tp("searches", 0): 4}, "shop"),
        "commit",
        "begin",
    ]
    assert one.calls == [("offsets", {tp("clicks", 1): 7}, "shop"), "commit", "begin"]

    # Only offsets that moved are sent again; every open transaction is committed.
    processed[("clicks", 1)] = 9
    zero.calls.clear()
    one.calls.clear()
    asyncio.run(transactions.commit())
    assert zero.calls == ["commit", "begin"]
    assert one.calls == [("offsets", {tp("clicks", 1): 9}, "shop"), "commit", "begin"]


def test_the_last_commit_ends_the_transactions_and_later_commits_skip_them() -> None:
    driver = Driver(["shop-0-0"])
    transactions = Transactions(cast(Any, App(driver)), lambda: {("clicks", 0): 3})
    asyncio.run(transactions.commit(start_new_transaction=False))
    asyncio.run(transactions.commit())
    producer = driver._transaction_producers["shop-0-0"]
    assert producer.calls == [("offsets", {TopicPartition("clicks", 0): 3}, "shop"), "commit"]


def test_records_go_to_the_producer_of_their_transaction_a_batch_per_partition() -> None:
    driver = Driver(["shop-0-1", "shop-0-2"])
    transactions = Transactions(cast(Any, App(driver)), dict)
    outbox = transactions.outbox("shop-0-2")
    keys = [f"u{n}".encode() for n in range(12)]
    for key in keys:
        outbox.add("recommendations", key, b"{}")
    outbox.add("changelog", b"u1", b"state", 2)
    acks = asyncio.run(outbox.send())
    producer = driver._transaction_producers["shop-0-2"]
    per_partition: dict[int, int] = {}
    for key in keys:
        partition = partition_for_key(key, 4)
        per_partition[partition] = per_partition.get(partition, 0) + 1
    expected = [("recommendations", p, n, True) for p, n in per_partition.items()]
    assert sorted(producer.submitted) == sorted([*expected, ("changelog", 2, 1, True)])
    assert len(acks) == len(producer.submitted)  # sent under Faust's lock for the id
    assert driver._transaction_producers["shop-0-1"].submitted == []
    with pytest.raises(RuntimeError, match="not assigned"):
        transactions.outbox("shop-0-3")


def test_probe_names_why_a_broker_cannot_run_transactions() -> None:
    why = asyncio.run(probe_transactions(Settings(bootstrap_servers="127.0.0.1:1")))
    assert why is not None and "KafkaConnectionError" in why


def test_a_revoked_partitions_transaction_is_left_to_its_new_owner() -> None:
    driver = Driver(["shop-0-0", "shop-0-1"])
    transactions = Transactions(cast(Any, App(driver)), lambda: {("clicks", 0): 3})
    transactions.revoke([("clicks", 1), ("shop-user-state-changelog", 1)])
    asyncio.run(transactions.commit())
    assert driver._transaction_producers["shop-0-1"].calls == []  # aborted by the new owner
    assert driver._transaction_producers["shop-0-0"].calls[-2:] == ["commit", "begin"]
    transactions.assign([("clicks", 1)])
    asyncio.run(transactions.commit())
    assert driver._transaction_producers["shop-0-1"].calls == ["commit", "begin"]


def test_a_batch_that_fails_inside_blocks_every_later_commit() -> None:
    driver = Driver(["shop-0-0"])
    transactions = Transactions(cast(Any, App(driver)), lambda: {("clicks", 0): 3})

    async def failing_batch() -> None:
        async with transactions.batch():
            raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        asyncio.run(failing_batch())
    with pytest.raises(RuntimeError, match="failed after sending part"):
        asyncio.run(transactions.commit())
    assert driver._transaction_producers["shop-0-0"].calls == []
