"""``recstream demo`` end to end: its own broker, a worker, a replay, the printed report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_prints_recommendations_and_sentiment(tmp_path: Path) -> None:
    from recstream.export.tiny import build_tiny_models

    models = tmp_path / "models"
    build_tiny_models(models)  # the demo trains only when the model folder is empty
    env = {
        **os.environ,
        "RECSTREAM_MODEL_DIR": str(models),
        "RECSTREAM_APP_ID": "recstream-demo-test",
    }
    env.pop("RECSTREAM_BOOTSTRAP_SERVERS", None)  # the demo starts its own broker
    done = subprocess.run(
        [sys.executable, "-m", "recstream", "demo", "--users", "30", "--items", "40",
         "--days", "1", "--work-dir", str(tmp_path / "work"), "--replay-seconds", "5"],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "=== A few recommendations ===" in output
    assert "=== A few review sentiments ===" in output
    summary = output.split("=== Summary ===", 1)[1]
    lines = dict(line.split(":", 1) for line in summary.strip().splitlines() if ":" in line)
    events_in = int(lines["events in"].strip())
    answered, expected = (int(x) for x in lines["answered / expected"].split("/"))
    assert events_in == expected == answered > 0
