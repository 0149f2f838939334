"""int8 / fp16 variants: made as documented, written only when they meet their bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest

from recstream.export import onnx_export, parity
from recstream.export.metadata import PREFIX
from recstream.export.variants import make_int8, open_session
from recstream.streams.scoring import OnnxRecsScorer, RuntimeOptions, Token

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Exported


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize(
    ("kind", "variant"), [("recs", "int8"), ("recs", "fp16"), ("sentiment", "int8")]
)
def test_variant_written_iff_bar_met_and_agreement_stored(
    exported: Exported, kind: str, variant: str
) -> None:
    result = (exported.recs if kind == "recs" else exported.sentiment)[variant]
    assert result.path.exists() == result.written == result.agreement.passed
    assert result.agreement.rows >= 128
    if not result.written:
        return
    for name, minimum in parity.BARS[kind].items():
        assert result.agreement.measures[name] >= minimum
    props = _props(result.path)
    assert props[PREFIX + "variant"] == variant
    assert props[PREFIX + "version"].endswith(f"-{variant}")
    stored = json.loads(props[PREFIX + "agreement"])
    assert stored["rows"] == result.agreement.rows
    for name, value in result.agreement.measures.items():
        assert stored[name] == pytest.approx(value, abs=1e-6)


def test_int8_is_preprocessed_and_quantized(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "recs.int8.onnx"
    make_int8(exported.folder / "recs.onnx", out)
    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert any(p.key == "onnx.quant.pre_process" for p in model.metadata_props)
    fp32_size = (exported.folder / "recs.onnx").stat().st_size
    assert out.stat().st_size < fp32_size


@pytest.mark.usefixtures("reuse_exported_graph")
def test_variant_below_bar_is_not_written(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a bar no quantized model can meet, int8 is measured, reported, not written."""
    monkeypatch.setitem(parity.BARS, "recs", {"top1_match": 1.0, "topk_overlap": 1.0})
    results = onnx_export.export_recs(
        exported.recs_model, exported.recs_meta, tmp_path, ("fp32", "int8")
    )
    by_variant = {r.variant: r for r in results}
    assert by_variant["fp32"].written and (tmp_path / "recs.onnx").exists()
    int8 = by_variant["int8"]
    assert not int8.written and not (tmp_path / "recs.int8.onnx").exists()
    assert int8.agreement.measures["topk_overlap"] < 1.0
    assert "REFUSED" in int8.describe()


@pytest.mark.usefixtures("reuse_exported_graph")
def test_a_variant_of_other_weights_is_removed_when_not_replaced(
    exported: Exported,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    as_of_other_weights: Callable[[Path], None],
) -> None:
    """An int8 file left from earlier weights goes when the new int8 misses its bar; one
    of the same weights stays when an export does not ask for int8."""
    int8 = tmp_path / "recs.int8.onnx"
    int8.write_bytes((exported.folder / "recs.int8.onnx").read_bytes())
    onnx_export.export_recs(exported.recs_model, exported.recs_meta, tmp_path, ("fp32",))
    assert int8.exists()  # same weights as the new recs.onnx: kept
    as_of_other_weights(int8)
    monkeypatch.setitem(parity.BARS, "recs", {"top1_match": 1.0, "topk_overlap": 1.0})
    results = onnx_export.export_recs(
        exported.recs_model, exported.recs_meta, tmp_path, ("fp32", "int8")
    )
    assert not {r.variant: r for r in results}["int8"].written
    assert not int8.exists() and (tmp_path / "recs.onnx").exists()


def test_fp16_runs_in_the_runtime_on_cpu(exported: Exported) -> None:
    """fp16 is meant for CUDA but must load and agree on the CPU too (basic optimizations)."""
    if not exported.recs["fp16"].written:
        pytest.fail(f"fp16 variant was refused: {exported.recs['fp16'].agreement.describe()}")
    options = RuntimeOptions(providers=("CPUExecutionProvider",))
    half = OnnxRecsScorer(exported.folder / "recs.fp16.onnx", options)
    full = OnnxRecsScorer(exported.folder / "recs.onnx", options)
    histories = [
        [Token(f"item-{i}", "view"), Token(f"item-{i + 3}", "add_to_cart")] for i in range(20)
    ]
    exclude: list[set[str]] = [set() for _ in histories]
    a = half.recommend(histories, exclude, 5)
    b = full.recommend(histories, exclude, 5)
    top1 = np.mean([x.items[0].item_id == y.items[0].item_id for x, y in zip(a, b, strict=True)])
    assert top1 >= 0.95
    assert half.model_version.endswith("-fp16") and half.model_version != full.model_version


def test_open_session_uses_basic_optimizations_for_fp16_on_cpu(exported: Exported) -> None:
    session = open_session(exported.folder / "recs.fp16.onnx", "fp16")
    batch = parity.recs_batch(np.random.default_rng(0), 3, 4, num_items=42)
    ids, scores = session.run(None, batch)
    assert ids.shape == (3, 20) and scores.dtype == np.float32
