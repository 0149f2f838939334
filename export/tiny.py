"""Tiny random-init models exported through the real export path, for tests and demos.

``build_tiny_models(out_dir)`` writes ``recs.onnx`` and ``sentiment.onnx``: a 2-layer
SASRec over a 40-item catalogue (``item-0`` .. ``item-39``) and
a 1-layer sentiment encoder with a small character tokenizer.  Nothing is trained,
so their scores are meaningless but deterministic (fixed seed); everything else
(graphs, metadata, parity checks, file layout) is exactly what ``recstream
export`` produces.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recstream.export.metadata import DEFAULT_TOP_K

TINY_ITEMS = [f"item-{i}" for i in range(40)]
TINY_MAX_LEN = 16
TINY_TEXT_LEN = 64
TINY_TRAINED_AT = "2026-01-01T00:00:00+00:00"
_TEXTS = [
    "great product, works well",
    "terrible, broke after a day",
    "it is ok I guess",
    "质量很好，非常满意",
    "太差了，不推荐",
    "love it 😍",
]


def tiny_recs(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A random-init SASRec and checkpoint-style metadata over ``TINY_ITEMS``."""
    import torch

    from recstream.model.features import FIRST_ITEM
    from recstream.model.sasrec import SASRec

    torch.manual_seed(seed)
    hparams: dict[str, Any] = {
        "n_items": len(TINY_ITEMS) + FIRST_ITEM,
        "max_len": TINY_MAX_LEN,
        "dim": 16,
        "layers": 2,
        "heads": 2,
        "dropout": 0.0,
    }
    meta = {
        "kind": "recs",
        "hparams": hparams,
        "vocab": TINY_ITEMS,
        "popular": TINY_ITEMS[:10],
        "max_len": TINY_MAX_LEN,
        "data_fingerprint": f"tiny-random-seed-{seed}",
        "metrics": {},
        "trained_at": TINY_TRAINED_AT,
    }
    return SASRec(**hparams).eval(), meta


def tiny_sentiment(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A random-init SentimentEncoder with a tokenizer fitted on a few sample texts."""
    import torch

    from recstream.model.sentiment import SentimentEncoder
    from recstream.model.sentiment_lexicon import SentimentLexicon
    from recstream.model.text_tokens import TextTokenizer, word_char_mask
    from recstream.streams.records import LABELS

    torch.manual_seed(seed)
    lexicon = SentimentLexicon({"good": 1.9, "great": 3.1, "bad": -2.5, "broken": -2.0})
    tokenizer = TextTokenizer.fit(_TEXTS, min_count=1, hash_buckets=16, lexicon=lexicon)
    hparams: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "ngram_buckets": 256,
        "dim": 16,
        "layers": 1,
        "heads": 2,
        "ff_mult": 2,
        "stride": 4,
        "max_len": TINY_TEXT_LEN,
        "dropout": 0.0,
        "word_buckets": 64,
        "linear_ngrams": 2,
    }
    meta = {
        "kind": "sentiment",
        "hparams": hparams,
        "tokenizer": tokenizer.to_dict(),
        "labels": list(LABELS),
        "max_len": TINY_TEXT_LEN,
        "data_fingerprint": f"tiny-random-seed-{seed}",
        "metrics": {},
        "trained_at": TINY_TRAINED_AT,
    }
    model = SentimentEncoder(**hparams)
    model.set_word_chars(torch.from_numpy(word_char_mask(tokenizer)))
    with torch.no_grad():  # random, not the zero start of training, so every path counts
        for weight in (model.classify.weight, model.words.weight, model.lexicon.weight):
            torch.nn.init.normal_(weight, std=0.5)
    return model.eval(), meta


def build_tiny_models(
    out_dir: Path, seed: int = 0, variants: Sequence[str] = ("fp32",), top_k: int = DEFAULT_TOP_K
) -> None:
    """Export tiny ``recs.onnx`` and ``sentiment.onnx`` into ``out_dir``.

    The export (two dynamo exports with parity checks, tens of seconds) runs once per
    process and set of arguments; later calls copy its files, so a test session that
    needs tiny models in several places pays for them once.
    """
    built = _export_once(seed, tuple(variants), top_k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in built.iterdir():
        shutil.copy2(path, out / path.name)


@functools.cache
def _export_once(seed: int, variants: tuple[str, ...], top_k: int) -> Path:
    import torch

    from recstream.export.onnx_export import export_recs, export_sentiment

    folder = Path(tempfile.mkdtemp(prefix="recstream-tiny-"))
    atexit.register(shutil.rmtree, folder, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, meta = tiny_recs(seed)
        export_recs(model, meta, folder, variants, top_k=top_k)
        encoder, sentiment_meta = tiny_sentiment(seed)
        export_sentiment(encoder, sentiment_meta, folder, variants)
    finally:
        torch.set_num_threads(threads)
    return folder
