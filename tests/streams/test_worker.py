"""The worker's process set-up (``recstream.streams.worker``)."""

from __future__ import annotations

import gc
import subprocess
import sys


def _after_prepare(young_threshold: int) -> list[int]:
    """In a fresh process (so that this one's objects stay collectable): frozen objects,
    the freeze count, objects the collector still tracks, and its three thresholds."""
    script = (
        "import gc\n"
        "from recstream.streams.worker import prepare_garbage_collector\n"
        "import recstream.streams.app\n"  # Faust and the rest of the worker's imports
        f"frozen = prepare_garbage_collector({young_threshold})\n"
        "later = [[n] for n in range(1000)]\n"
        "print(frozen, gc.get_freeze_count(), len(gc.get_objects()), *gc.get_threshold())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return list(map(int, out.stdout.split()))


def test_startup_objects_are_frozen_out_of_the_collectors_reach() -> None:
    """After start-up a full collection walks only what came later."""
    frozen, count, tracked, *thresholds = _after_prepare(20_000)
    assert frozen == count > 50_000  # Faust, aiokafka, numpy, ...
    assert 1000 <= tracked < frozen // 10  # the collector sees the later objects only
    assert thresholds[0] == 20_000


def test_young_threshold_zero_keeps_pythons_default() -> None:
    default = list(gc.get_threshold())
    frozen, _, _, *thresholds = _after_prepare(0)
    assert frozen > 50_000
    assert thresholds == default
