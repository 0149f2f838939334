"""The sentiment encoder: shapes, padding invariance, empty rows, checkpoint round trip,
the linear paths (hashed n-grams with IDF weights, lexicon scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recstream.model.sentiment import SentimentEncoder, load_sentiment, save_sentiment
from recstream.model.sentiment_lexicon import LEXICON_FEATURES
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
    model = SentimentEncoder(**HPARAMS).eval()
    with torch.no_grad():  # the classifier starts at zero; give the encoder a say
        model.classify.weight.normal_()
    return model


def _lexicon(rows: int) -> torch.Tensor:
    return torch.rand(rows, LEXICON_FEATURES) * torch.tensor([2.0, 1.0, 1.0]) - torch.tensor(
        [1.0, 0.0, 0.0]
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([7, 1, 13, 4])
    tokens = torch.randint(1, 50, (4, 13))
    tokens[torch.arange(13)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


def test_output_shape_and_probabilities() -> None:
    tokens, lengths = _batch()
    logits = _model()(tokens, lengths, _lexicon(4))
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    probs = torch.softmax(logits, -1)
    assert torch.allclose(probs.sum(-1), torch.ones(4))


def test_padding_does_not_change_output() -> None:
    model = _model()
    tokens, lengths = _batch()
    lexicon = _lexicon(4)
    base = model(tokens, lengths, lexicon)
    for extra in (1, 3, 19):
        padded = F.pad(tokens, (0, extra))
        assert torch.allclose(model(padded, lengths, lexicon), base, atol=1e-5)
    # a row alone (no padding at all) equals the row in a padded batch
    alone = model(tokens[1:2, :1], lengths[1:2], lexicon[1:2])
    assert torch.allclose(alone, base[1:2], atol=1e-5)


def test_padding_token_values_are_ignored() -> None:
    model = _model()
    tokens, lengths = _batch()
    noisy = tokens.clone()
    noisy[torch.arange(13)[None, :] >= lengths[:, None]] = 7
    lexicon = _lexicon(4)
    assert torch.allclose(
        model(noisy, lengths, lexicon), model(tokens, lengths, lexicon), atol=1e-5
    )


def test_empty_row_is_finite_and_full_length_works() -> None:
    model = _model()
    out = model(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0, 0]), _lexicon(2))
    assert torch.isfinite(out).all()
    full = torch.randint(1, 50, (2, 32))
    assert model(full, torch.tensor([32, 5]), _lexicon(2)).shape == (2, 3)


def test_training_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = SentimentEncoder(**HPARAMS)
    tokens, lengths = _batch()
    target = torch.tensor([0, 2, 1, 2])
    lexicon = _lexicon(4)
    optim = torch.optim.Adam(
        [p for n, p in model.named_parameters() if n not in ("chars.weight", "ngrams.weight")],
        lr=1e-2,
    )
    first: float | None = None
    for _ in range(30):
        loss = F.cross_entropy(model(tokens, lengths, lexicon), target)
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
    lexicon = _lexicon(4)
    assert torch.equal(loaded(tokens, lengths, lexicon), model(tokens, lengths, lexicon))


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
    lexicon = torch.zeros(4, LEXICON_FEATURES)
    base = model(tokens, lengths, lexicon)
    for extra in (1, 7):
        padded = F.pad(tokens, (0, extra))
        assert torch.allclose(model(padded, lengths, lexicon), base, atol=1e-5)
    noisy = F.pad(tokens, (0, 3), value=5)
    assert torch.allclose(model(noisy, lengths, lexicon), base, atol=1e-5)
    with torch.no_grad():
        model.words.weight.zero_()
    assert not torch.allclose(model(tokens, lengths, lexicon), base, atol=1e-3)


def test_untrained_model_is_its_linear_paths() -> None:
    """The classifier starts at zero: only the bag of n-grams and the lexicon speak."""
    torch.manual_seed(0)
    tokenizer = TextTokenizer.fit(["not good at all, great phone!"], min_count=1)
    model = SentimentEncoder(**{**WORD_HPARAMS, "vocab_size": tokenizer.vocab_size}).eval()
    tokens, lengths = _encode(tokenizer, ["not good", "great phone"])
    assert torch.equal(model(tokens, lengths, torch.zeros(2, 3)), torch.zeros(2, 3))
    with torch.no_grad():
        model.lexicon.weight.copy_(torch.tensor([[-1.0, 0, 0], [0, 0, 0], [1.0, 0, 0]]))
    out = model(tokens, lengths, torch.tensor([[-0.5, 0, 0.4], [0.8, 0.6, 0]]))
    assert torch.allclose(out, torch.tensor([[0.5, 0, -0.5], [-0.8, 0, 0.8]]))


def test_idf_weights_and_group_norms() -> None:
    model, tokenizer = _word_model()
    tokens, lengths = _encode(tokenizer, ["not good at all", "很好 🙂"])
    valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    base = model.word_logits(tokens, valid)
    # each group is divided by its norm: scaling every IDF leaves the logits alone
    model.set_word_idf(torch.full((model.word_buckets,), 3.0))
    assert torch.allclose(model.word_logits(tokens, valid), base, atol=1e-5)
    # a bucket of IDF 0 (never seen in training) neither counts nor moves the norm
    ids = model.word_ids(tokens, valid)[1]
    used = sorted({int(i) for i in ids if i != model.word_buckets})
    idf = torch.ones(model.word_buckets)
    idf[used[0]] = 0.0
    model.set_word_idf(idf)
    rows = [int(i) for i in ids if i != model.word_buckets and int(i) != used[0]]
    expected = model.words.weight[rows].sum(0) / len(rows) ** 0.5  # Chinese: one group
    assert torch.allclose(model.word_logits(tokens, valid)[1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="idf"):
        model.set_word_idf(torch.ones(3))


def test_set_word_chars_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="word mask"):
        _model().set_word_chars(torch.zeros(3, dtype=torch.bool))
