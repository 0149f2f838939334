"""The young-generation census: one small run, its JSON, the collector left as found."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import gc_census


def test_kinds_name_tuples_and_lists_by_their_items() -> None:
    assert gc_census.kind_of((1.0, "a")) == "tuple(float, str)"
    assert gc_census.kind_of((1, b"", b"", b"", b"")) == "tuple(int, bytes, bytes, bytes)"
    assert gc_census.kind_of(["a", 1]) == "list of str"
    assert gc_census.kind_of([]) == "list (empty)"
    assert gc_census.kind_of({}) == "dict"


def test_a_small_run_counts_what_the_sessions_leave_and_restores_the_collector(
    tmp_path: Path,
) -> None:
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    out = tmp_path / "census.json"
    assert gc_census.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["model"] == "null" and result["meta"]["events"] == 1_000
    kinds = result["kinds_per_event"]
    assert result["tracked_left"] == round(sum(kinds.values()) * 1_000)
    assert result["per_event"] == result["tracked_left"] / 1_000
    # Each new user's state is among what is left (the counted clicks' users are new)...
    assert kinds["UserState"] > 0
    # ...but no pending step is a container: they are strings, their times floats.
    assert "tuple(float, int, str)" not in kinds
    assert (gc.isenabled(), gc.get_freeze_count()) == (enabled, frozen)
