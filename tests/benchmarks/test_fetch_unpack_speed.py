"""The fetch unpacking benchmark: a tiny run, its JSON, and the fetches it reads.

Timed figures are never asserted (they depend on the machine).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import fetch_unpack_speed
from aiokafka.record.memory_records import MemoryRecords


def test_a_tiny_run_writes_both_ways_and_their_ratio(tmp_path: Path) -> None:
    """...and leaves the garbage collector as it found it (the run uses the worker's)."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    out = tmp_path / "fetch_unpack_speed.json"
    args = ["--events", "600", "--users", "50", "--repeats", "2", "--out", str(out)]
    assert fetch_unpack_speed.main(args) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["events"] == 600 and result["meta"]["repeats"] == 2
    runs = result["cpu_ns_per_record"]["runs"]
    assert set(runs) == set(fetch_unpack_speed.WAYS)
    assert all(len(times) == 2 and min(times) > 0 for times in runs.values())
    assert result["consumer_records_over_parsed"] > 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)


def test_the_backlog_is_cut_into_full_record_batches_and_fetches_of_whole_batches() -> None:
    pairs = [(b"user%d" % (n % 7), b"x" * 300 + b"%d" % n) for n in range(500)]
    batches = fetch_unpack_speed.record_batches(pairs, 40)
    assert len(batches) > 5  # 16 KiB each: about 50 records
    assert all(len(batch) <= fetch_unpack_speed.BATCH_BYTES for batch in batches)
    records = MemoryRecords(b"".join(batches))
    read = []
    while records.has_next():
        read += [(r.offset, r.key, r.value) for r in records.next_batch()]
    assert read == [(40 + n, key, value) for n, (key, value) in enumerate(pairs)]
    answers = fetch_unpack_speed.fetches(pairs * 20, 3)
    assert {partition for partition, _ in answers} == {0, 1, 2}
    assert all(len(data) <= fetch_unpack_speed.FETCH_BYTES for _, data in answers)
    assert len(answers) > 3  # 3.4 MB over three partitions: more than one fetch each
