"""Exported models carry their metadata; bad or inconsistent models are refused at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import pytest

from recstream.export import metadata as md
from recstream.streams.scoring import (
    ModelLoadError,
    OnnxRecsScorer,
    OnnxSentimentScorer,
    RuntimeOptions,
)

if TYPE_CHECKING:
    from conftest import Exported

CPU = RuntimeOptions(providers=("CPUExecutionProvider",))


def _rewrite(src: Path, dest: Path, change: dict[str, str | None]) -> Path:
    """Copy an ONNX file with metadata keys replaced (value) or removed (None)."""
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in change.items():
        if value is None:
            props.pop(md.PREFIX + key, None)
        else:
            props[md.PREFIX + key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dest))
    return dest


def test_metadata_holds_everything_serving_needs(exported: Exported) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported.folder / "recs.onnx")).metadata_props}
    meta = md.parse_metadata(props, "recs", "recs.onnx")
    assert meta.kind == "recs" and meta.variant == "fp32"
    assert meta.vocab == exported.recs_meta["vocab"]
    assert meta.popular == exported.recs_meta["popular"]
    assert meta.max_len == 16 and meta.top_k == 20
    assert meta.values["trained_at"] == exported.recs_meta["trained_at"]
    assert meta.values["data_fingerprint"] == "tiny-random-seed-0"
    assert meta.values["agreement"]["exact_ids"] == 1.0
    assert meta.version.startswith("recs-20260101T000000Z-")
    sentiment_props = {
        p.key: p.value for p in onnx.load(str(exported.folder / "sentiment.onnx")).metadata_props
    }
    sentiment = md.parse_metadata(sentiment_props, "sentiment", "sentiment.onnx")
    assert sentiment.labels == ["negative", "neutral", "positive"]
    assert sentiment.tokenizer == exported.sentiment_meta["tokenizer"]


def test_version_changes_with_weights_and_variant() -> None:
    a = md.model_version("recs", "2026-01-01T00:00:00+00:00", "ab" * 32, "fp32")
    b = md.model_version("recs", "2026-01-01T00:00:00+00:00", "cd" * 32, "fp32")
    c = md.model_version("recs", "2026-01-01T00:00:00+00:00", "ab" * 32, "int8")
    assert len({a, b, c}) == 3 and c == a + "-int8"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no recs model at .*recstream export"):
        OnnxRecsScorer(tmp_path / "recs.onnx", CPU)


def test_corrupt_file_is_refused(exported: Exported, tmp_path: Path) -> None:
    truncated = tmp_path / "recs.onnx"
    data = (exported.folder / "recs.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxRecsScorer(truncated, CPU)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not onnx at all")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxRecsScorer(garbage, CPU)


def test_wrong_kind_is_refused(exported: Exported) -> None:
    with pytest.raises(ModelLoadError, match="holds a 'sentiment' model, expected 'recs'"):
        OnnxRecsScorer(exported.folder / "sentiment.onnx", CPU)
    with pytest.raises(ModelLoadError, match="holds a 'recs' model, expected 'sentiment'"):
        OnnxSentimentScorer(exported.folder / "recs.onnx", CPU)


def test_missing_vocabulary_is_refused(exported: Exported, tmp_path: Path) -> None:
    path = _rewrite(exported.folder / "recs.onnx", tmp_path / "recs.onnx", {"vocab": None})
    with pytest.raises(ModelLoadError, match=r"lacks metadata recstream\.vocab"):
        OnnxRecsScorer(path, CPU)


def test_tampered_vocabulary_is_refused(exported: Exported, tmp_path: Path) -> None:
    vocab = list(exported.recs_meta["vocab"])
    vocab[0], vocab[1] = vocab[1], vocab[0]
    path = _rewrite(
        exported.folder / "recs.onnx", tmp_path / "recs.onnx", {"vocab": json.dumps(vocab)}
    )
    with pytest.raises(ModelLoadError, match="does not match its recorded hash"):
        OnnxRecsScorer(path, CPU)


def test_vocabulary_size_must_match_graph(exported: Exported, tmp_path: Path) -> None:
    path = _rewrite(exported.folder / "recs.onnx", tmp_path / "recs.onnx", {"num_items": "7"})
    with pytest.raises(ModelLoadError, match="vocabulary has 40 items but the graph scores 7"):
        OnnxRecsScorer(path, CPU)


def test_foreign_onnx_without_metadata_is_refused(exported: Exported, tmp_path: Path) -> None:
    model = onnx.load(str(exported.folder / "recs.onnx"))
    del model.metadata_props[:]
    path = tmp_path / "recs.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="no recstream metadata"):
        OnnxRecsScorer(path, CPU)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "99"}, "metadata format '99'"),
        ({"variant": "int4"}, "unknown variant 'int4'"),
        ({"popular": "{not json"}, "not valid JSON"),
        ({"word_buckets": "17"}, "this code encodes"),
        ({"max_len": "0"}, "invalid max_len"),
    ],
)
def test_inconsistent_metadata_is_refused(
    exported: Exported, tmp_path: Path, change: dict[str, str | None], message: str
) -> None:
    path = _rewrite(exported.folder / "recs.onnx", tmp_path / "recs.onnx", change)
    with pytest.raises(ModelLoadError, match=message):
        OnnxRecsScorer(path, CPU)


def test_sentiment_without_tokenizer_or_neutral_is_refused(
    exported: Exported, tmp_path: Path
) -> None:
    src = exported.folder / "sentiment.onnx"
    path = _rewrite(src, tmp_path / "a.onnx", {"tokenizer": None})
    with pytest.raises(ModelLoadError, match=r"lacks metadata recstream\.tokenizer"):
        OnnxSentimentScorer(path, CPU)
    path = _rewrite(src, tmp_path / "b.onnx", {"labels": '["bad", "good"]'})
    with pytest.raises(ModelLoadError, match="lack 'neutral'"):
        OnnxSentimentScorer(path, CPU)
    path = _rewrite(src, tmp_path / "c.onnx", {"tokenizer": '{"kind": "bpe"}'})
    with pytest.raises(ModelLoadError, match="bad tokenizer"):
        OnnxSentimentScorer(path, CPU)
    # a tokenizer from before the lexicon input (v1), and one with an unreadable lexicon
    tokenizer = dict(exported.sentiment_meta["tokenizer"])
    for name, broken, message in (
        ("d.onnx", {**tokenizer, "version": 1}, "unsupported tokenizer 'char-hash' v1"),
        ("e.onnx", {**tokenizer, "lexicon": {"kind": "afinn"}}, "unsupported lexicon"),
    ):
        path = _rewrite(src, tmp_path / name, {"tokenizer": json.dumps(broken)})
        with pytest.raises(ModelLoadError, match=message):
            OnnxSentimentScorer(path, CPU)
