"""A one-minute soak above capacity (benchmarks/soak.py): the worker's memory stays bounded.

Memory is not a timing figure, so a generous bound is asserted: the worker's RSS may
grow by at most ``MAX_GROWTH_MIB`` while the backlog grows, and the worker survives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recstream.streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MAX_GROWTH_MIB = 150.0


def test_memory_stays_bounded_when_scoring_falls_behind(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--seconds", "60",
         "--rate", "1500", "--interval", "2", "--bootstrap", kafka_settings.bootstrap_servers,
         "--json", str(out)],
        cwd=REPO, capture_output=True, timeout=200,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-3000:]
    result = json.loads(out.read_text())
    assert result["worker_alive_at_end"]
    # The offered load was above what the worker handled: a backlog was left.
    assert result["backlog_at_end"] > 0, result
    assert len(result["samples"]) >= 10
    assert result["rss_growth_mib"] < MAX_GROWTH_MIB, result["samples"]
    folder = os.environ.get("RELIABILITY_RESULTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "soak.json").write_text(json.dumps(result, indent=2))
