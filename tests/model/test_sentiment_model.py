"""The sentiment encoder: shapes, padding invariance, empty rows, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recstream.model.sentiment import SentimentEncoder, load_sentiment, save_sentiment
from recstream.model.text_tokens import TextTokenizer, word_char_mask

HPARAMS: dict[str, Any] = {
    "vocab_size": 50,
    "ngram_buckets": 1024,
    "char_dim": 8,
    "dim": 16,
    "layers": 2,
    "heads": 2,
    "stride": 4,
    "max_len": 32,
    "dropout": 0.1,
}


def _model() -> SentimentEncoder:
    torch.manual_seed(0)
    return SentimentEncoder(**HPARAMS).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([7, 1, 13, 4])
    tokens = torch.randint(1, 50, (4, 13))
    tokens[torch.arange(13)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


def test_output_shape_and_probabilities() -> None:
    tokens, lengths = _batch()
    logits = _model()(tokens, lengths)
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    probs = torch.softmax(logits, -1)
    assert torch.allclose(probs.sum(-1), torch.ones(4))


def test_padding_does_not_change_output() -> None:
    model = _model()
    tokens, lengths = _batch()
    base = model(tokens, lengths)
    for extra in (1, 3, 19):
        padded = F.pad(tokens, (0, extra))
        assert torch.allclose(model(padded, lengths), base, atol=1e-5)
    # a row alone (no padding at all) equals the row in a padded batch
    alone = model(tokens[1:2, :1], lengths[1:2])
    assert torch.allclose(alone, base[1:2], atol=1e-5)


def test_padding_token_values_are_ignored() -> None:
    model = _model()
    tokens, lengths = _batch()
    noisy = tokens.clone()
    noisy[torch.arange(13)[None, :] >= lengths[:, None]] = 7
    assert torch.allclose(model(noisy, lengths), model(tokens, lengths), atol=1e-5)


def test_empty_row_is_finite_and_full_length_works() -> None:
    model = _model()
    out = model(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0, 0]))
    assert torch.isfinite(out).all()
    full = torch.randint(1, 50, (2, 32))
    assert model(full, torch.tensor([32, 5])).shape == (2, 3)


def test_training_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = SentimentEncoder(**HPARAMS)
    tokens, lengths = _batch()
    target = torch.tensor([0, 2, 1, 2])
    optim = torch.optim.Adam(
        [p for n, p in model.named_parameters() if n not in ("chars.weight", "ngrams.weight")],
        lr=1e-2,
    )
    first: float | None = None
    for _ in range(30):
        loss = F.cross_entropy(model(tokens, lengths), target)
        first = first if first is not None else float(loss.detach())
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert first is not None and float(loss.detach()) < first


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _model()
    tokenizer = TextTokenizer.fit(["good", "差"], min_count=1)
    meta = {
        "hparams": HPARAMS,
        "tokenizer": tokenizer.to_dict(),
        "labels": ["negative", "neutral", "positive"],
        "max_len": 32,
    }
    save_sentiment(tmp_path, model, meta)
    loaded, loaded_meta = load_sentiment(tmp_path)
    assert not loaded.training and loaded_meta["kind"] == "sentiment"
    assert TextTokenizer.from_dict(loaded_meta["tokenizer"]).chars == tokenizer.chars
    tokens, lengths = _batch()
    assert torch.equal(loaded(tokens, lengths), model(tokens, lengths))


def test_load_rejects_other_kind(tmp_path: Path) -> None:
    from recstream.model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path, "sentiment", _model(), {"kind": "recs", "hparams": HPARAMS})
    with pytest.raises(ValueError, match="not 'sentiment'"):
        load_sentiment(tmp_path)


WORD_HPARAMS: dict[str, Any] = {**HPARAMS, "word_buckets": 997, "word_max": 6, "linear_ngrams": 2}


def _word_model() -> tuple[SentimentEncoder, TextTokenizer]:
    torch.manual_seed(0)
    tokenizer = TextTokenizer.fit(["not good at all, great phone! 很好 🙂"], min_count=1)
    model = SentimentEncoder(**{**WORD_HPARAMS, "vocab_size": tokenizer.vocab_size}).eval()
    model.set_word_chars(torch.from_numpy(word_char_mask(tokenizer)))
    with torch.no_grad():  # the word table starts at zero; give it values to compare
        model.words.weight[:-1].normal_()
    return model, tokenizer


def _encode(tokenizer: TextTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, lengths = tokenizer.encode_batch(texts, 32)
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


def _word_rows(model: SentimentEncoder, tokenizer: TextTokenizer, text: str) -> list[list[int]]:
    """Used rows of one text: [words, pairs, character n-grams]."""
    tokens, lengths = _encode(tokenizer, [text])
    width = tokens.shape[1]
    valid = torch.arange(width)[None, :] < lengths[:, None]
    ids = model.word_ids(tokens, valid)[0]
    parts = (ids[:width], ids[width : 2 * width], ids[2 * width :])
    return [[int(i) for i in part if i != model.word_buckets] for part in parts]


def test_word_path_hashes_words_and_space_separated_pairs() -> None:
    model, tokenizer = _word_model()
    words, pairs, grams = _word_rows(model, tokenizer, "not good")
    assert len(words) == 2 and len(pairs) == 1 and len(grams) == 2 * len("not good")
    # the same word hashes to the same row wherever it appears
    assert _word_rows(model, tokenizer, "good")[0] == [words[1]]
    assert _word_rows(model, tokenizer, "not good at all")[1][0] == pairs[0]
    # punctuation separates words without making a pair; order matters for pairs
    assert _word_rows(model, tokenizer, "not, good")[1] == []
    assert _word_rows(model, tokenizer, "good not")[1] != pairs
    # Chinese and emoji have no word characters: only character n-grams
    zh_words, zh_pairs, zh_grams = _word_rows(model, tokenizer, "很好🙂")
    assert zh_words == [] and zh_pairs == [] and len(zh_grams) == 6


def test_word_path_changes_logits_and_ignores_padding() -> None:
    model, tokenizer = _word_model()
    tokens, lengths = _encode(tokenizer, ["not good at all", "great phone!", "很好 🙂", "ok"])
    base = model(tokens, lengths)
    for extra in (1, 7):
        assert torch.allclose(model(F.pad(tokens, (0, extra)), lengths), base, atol=1e-5)
    noisy = F.pad(tokens, (0, 3), value=5)
    assert torch.allclose(model(noisy, lengths), base, atol=1e-5)
    with torch.no_grad():
        model.words.weight.zero_()
    assert not torch.allclose(model(tokens, lengths), base, atol=1e-3)


def test_set_word_chars_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="word mask"):
        _model().set_word_chars(torch.zeros(3, dtype=torch.bool))
