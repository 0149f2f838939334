"""The state-recovery benchmark: the states it writes, and one tiny run on noida.

Timed figures are never asserted (they depend on the machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import state_recovery

from recstream.streams.sessions import UserState


def test_a_written_state_is_a_full_history_and_an_open_session() -> None:
    now = 1_800_000_000.0
    state = UserState.from_bytes(state_recovery.user_state(7, now, 50, 64))
    start = now - state_recovery.OPEN_SESSION_AGE
    assert len(state.history) == 50 and len(state.pending) == 3
    assert len(state.seen) == 64 * 6
    assert state.pending_times[0] == start < state.last_ts
    assert {len(step) for step in state.history} == {1 + 10}  # the action code, the item id
    other = state_recovery.user_state(8, now, 50, 64)
    assert UserState.from_bytes(other).history != state.history


@pytest.mark.integration
@pytest.mark.timeout(170)
def test_a_tiny_run_recovers_the_probe_users_session(tmp_path: Path) -> None:
    out = tmp_path / "state_recovery.json"
    assert state_recovery.main(["--users", "300", "--timeout", "120", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["state_recovered"] is True
    assert result["probe_session_id"] == result["expected_session_id"]
    assert result["users"] == 300 and result["bytes_per_user"] > 900
    assert result["restart_s"] > 0 and result["cold_start_s"] > 0
