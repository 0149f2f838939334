"""The worker's process set-up (``recstream.streams.worker``)."""

from __future__ import annotations

import subprocess
import sys


def test_startup_objects_are_frozen_out_of_the_collectors_reach() -> None:
    """After start-up a full collection walks only what came later (a fresh process, so
    that this one's objects stay collectable)."""
    script = (
        "import gc\n"
        "from recstream.streams.worker import freeze_startup_objects\n"
        "import recstream.streams.app\n"  # Faust and the rest of the worker's imports
        "frozen = freeze_startup_objects()\n"
        "later = [[n] for n in range(1000)]\n"
        "print(frozen, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    frozen, count, tracked = map(int, out.stdout.split())
    assert frozen == count > 50_000  # Faust, aiokafka, numpy, ...
    assert 1000 <= tracked < frozen // 10  # the collector sees the later objects only
