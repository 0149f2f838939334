"""OffsetTracker: holes and repeats in the offsets a worker processes (from the committed one)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from recstream.streams.skipped_records import Checked, Gap, OffsetTracker, Partition


class FakeCommitted:
    """The group's committed offsets, counting lookups."""

    def __init__(self, offsets: dict[Partition, int | None], fail: bool = False) -> None:
        self.offsets = offsets
        self.fail = fail
        self.asked: list[list[Partition]] = []

    async def __call__(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        self.asked.append(list(partitions))
        if self.fail:
            raise ConnectionError("coordinator not available")
        return {p: self.offsets.get(p) for p in partitions}


async def gaps(tracker: OffsetTracker, positions: list[tuple[str, int, int]]) -> list[Gap]:
    return (await tracker.check(positions)).gaps


async def test_contiguous_offsets_from_the_committed_one_have_no_gap() -> None:
    tracker = OffsetTracker(FakeCommitted({("clicks", 0): 10}))
    assert await tracker.check([("clicks", 0, 10), ("clicks", 0, 11)]) == Checked([], [])
    assert await tracker.check([("clicks", 0, 12)]) == Checked([], [])
    assert tracker.positions() == {("clicks", 0): 13}


async def test_a_first_offset_above_the_committed_one_is_a_gap() -> None:
    committed = FakeCommitted({("clicks", 0): 5, ("clicks", 1): 7})
    tracker = OffsetTracker(committed)
    found = await gaps(tracker, [("clicks", 0, 8), ("clicks", 1, 7), ("clicks", 0, 9)])
    assert found == [Gap("clicks", 0, 5, 8)]
    assert committed.asked == [[("clicks", 0), ("clicks", 1)]]


async def test_a_hole_in_the_middle_is_a_gap_and_repeats_are_not() -> None:
    tracker = OffsetTracker(FakeCommitted({("clicks", 0): 0}))
    assert await gaps(tracker, [("clicks", 0, 0), ("clicks", 0, 1)]) == []
    assert await gaps(tracker, [("clicks", 0, 4), ("clicks", 0, 5)]) == [Gap("clicks", 0, 2, 4)]
    # offsets delivered again (here 3, re-read with the hole) are repeats: dropped, and
    # they neither are a gap nor move the expectation
    assert await tracker.check([("clicks", 0, 6), ("clicks", 0, 3)]) == Checked([], [1])
    assert await tracker.check([("clicks", 0, 7)]) == Checked([], [])


async def test_offsets_below_the_committed_one_are_repeats() -> None:
    tracker = OffsetTracker(FakeCommitted({("clicks", 0): 5}))
    assert await tracker.check([("clicks", 0, 4), ("clicks", 0, 5)]) == Checked([], [0])


async def test_partitions_are_looked_up_once_and_again_after_forget() -> None:
    committed = FakeCommitted({("reviews", 0): 3})
    tracker = OffsetTracker(committed)
    await tracker.check([("reviews", 0, 3)])
    await tracker.check([("reviews", 0, 4)])
    assert committed.asked == [[("reviews", 0)]]
    tracker.forget([("reviews", 0)])
    committed.offsets[("reviews", 0)] = 20
    assert await gaps(tracker, [("reviews", 0, 22)]) == [Gap("reviews", 0, 20, 22)]
    assert len(committed.asked) == 2


@pytest.mark.parametrize("fail", [False, True])
async def test_without_a_committed_offset_checking_starts_at_the_first_record(fail: bool) -> None:
    tracker = OffsetTracker(FakeCommitted({}, fail=fail))
    assert await gaps(tracker, [("clicks", 0, 40)]) == []
    assert await gaps(tracker, [("clicks", 0, 41), ("clicks", 0, 43)]) == [Gap("clicks", 0, 42, 43)]
