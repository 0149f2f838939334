"""The scorer benchmark: its new-event helper and one tiny run.

Timed figures are never asserted (they depend on the machine); the tests check that a
run measures what it says and writes well-formed results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scorer_speed


def test_renewed_newest_tokens_are_equal_new_and_not_encoded() -> None:
    vocab = [f"item-{n}" for n in range(30)]
    histories, _ = scorer_speed.make_histories(np.random.default_rng(0), 6, 5, vocab)
    before = [list(history) for history in histories]
    for history in before:
        object.__setattr__(history[-1], "encoded", (7, b"", b"", b""))  # as if encoded
    scorer_speed.renew_newest_tokens(histories)
    for old, new in zip(before, histories, strict=True):
        assert new == old and new[:-1] == old[:-1]
        assert all(a is b for a, b in zip(new[:-1], old[:-1], strict=True))
        assert new[-1] is not old[-1]
        assert new[-1].encoded != old[-1].encoded  # what no model has encoded yet


def test_a_tiny_overhead_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "scorer_speed.json"
    args = ["--overhead-only", "--quick", "--min-time", "0.01", "--items", "60"]
    args += ["--dim", "8", "--layers", "1", "--max-len", "12", "--out", str(out)]
    assert scorer_speed.main(args) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "quick-overhead-only" and result["model"]["items"] == 60
    cells = {(row["batch"], row["length"]) for row in result["rows"]}
    assert cells == {(b, n) for b in (1, 32, 512) for n in (10, 12)}
    for row in result["rows"]:
        assert row["engine"] == "ort-fp32-cpu" and row["median_ms"] > 0
        for key in (
            "runtime_overhead_ratio",
            "runtime_overhead_ratio_cpu_time",
            "runtime_overhead_ratio_newest_token_new",
        ):
            assert row[key] > 0, key
        assert set(row["runtime_steps_cpu_ms"]) == {"encode", "exclusions", "run", "decode"}
        assert row["padded_length"] == 12  # both lengths pad to max_len
