"""Tiny models exported once per test session (exports take seconds each)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from recstream.export import onnx_export
from recstream.export.metadata import PREFIX
from recstream.export.onnx_export import WrittenModel, export_recs, export_sentiment
from recstream.export.tiny import tiny_recs, tiny_sentiment


@dataclass
class Exported:
    """The exported tiny models: their folder, PyTorch originals and export reports."""

    folder: Path
    recs_model: Any
    recs_meta: dict[str, Any]
    sentiment_model: Any
    sentiment_meta: dict[str, Any]
    recs: dict[str, WrittenModel]
    sentiment: dict[str, WrittenModel]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models")
    recs_model, recs_meta = tiny_recs(seed=0)
    sentiment_model, sentiment_meta = tiny_sentiment(seed=0)
    recs = export_recs(recs_model, recs_meta, folder, ("fp32", "int8", "fp16"))
    sentiment = export_sentiment(sentiment_model, sentiment_meta, folder, ("fp32", "int8"))
    return Exported(
        folder,
        recs_model,
        recs_meta,
        sentiment_model,
        sentiment_meta,
        {r.variant: r for r in recs},
        {r.variant: r for r in sentiment},
    )


@pytest.fixture
def reuse_exported_graph(exported: Exported, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip ``torch.onnx.export`` in a test: its graph is the session's exported file.

    For tests of what happens after the export (parity, variants, writing) with
    the same tiny models, which would otherwise re-export for seconds each.
    """

    def copy(
        graph: torch.nn.Module,
        example: object,
        dynamic: object,
        outputs: Sequence[str],
        path: Path,
    ) -> None:
        kind = "recs" if "top_items" in outputs else "sentiment"
        path.write_bytes((exported.folder / f"{kind}.onnx").read_bytes())

    monkeypatch.setattr(onnx_export, "_dynamo_export", copy)


def _as_of_other_weights(path: Path) -> None:
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == PREFIX + "weights_sha256":
            prop.value = "0" * 64
    onnx.save(model, str(path))


@pytest.fixture
def as_of_other_weights() -> Callable[[Path], None]:
    """Rewrites a model file's recorded weights digest, as if exported from other weights."""
    return _as_of_other_weights
