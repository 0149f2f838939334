"""The torch-free character tokenizer: scripts, emoji, empty, long and odd input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recstream.model.text_tokens import TextTokenizer, normalize, word_char_mask

TRAIN = ["质量很好，非常喜欢！", "Great phone, love it 👍", "太差了 terrible", "good good 好"]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.fit(TRAIN, min_count=1, hash_buckets=16)


def test_mixed_chinese_english_emoji(tokenizer: TextTokenizer) -> None:
    text = "好评 Great 👍"
    ids = tokenizer.encode(text, 64)
    assert ids.dtype == np.int64
    assert ids.shape[0] == len(normalize(text)) == len("好评 great 👍")
    assert (ids > 0).all() and (ids < tokenizer.vocab_size).all()
    # seen characters get their own ids; the emoji was seen in training too
    known = len(tokenizer.chars)
    assert all(1 <= i <= known for i in ids[[0, 3, 9]])


def test_unseen_scripts_hash_into_buckets(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("ქართული हिन्दी 🦄", 64)
    known = len(tokenizer.chars)
    letters = [i for i, c in zip(ids, normalize("ქართული हिन्दी 🦄"), strict=True) if c != " "]
    assert all(known < i < tokenizer.vocab_size for i in letters)
    # the same character always gets the same id
    assert tokenizer.encode("ქ", 4)[0] == ids[0]


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r", "\x00\x07", "\u200b\ufeff"])
def test_empty_and_whitespace_give_length_zero(tokenizer: TextTokenizer, text: str) -> None:
    assert tokenizer.encode(text, 16).shape == (0,)
    tokens, lengths = tokenizer.encode_batch([text, text], 16)
    assert tokens.shape == (2, 1) and lengths.tolist() == [0, 0]
    assert (tokens == 0).all()


def test_control_characters_dropped_and_nfkc_casefold() -> None:
    assert normalize("a\x00b\x07c\x1b") == "abc"
    assert normalize("ＡＢＣ　Ｄ") == "abc d"  # full-width letters and space
    assert normalize("  Mixed\n\nCASE\t text ") == "mixed case text"


def test_long_text_keeps_head_and_tail(tokenizer: TextTokenizer) -> None:
    text = "好" * 300 + "great" + "差" * 300 + "terrible"
    ids = tokenizer.encode(text, 100)
    assert ids.shape == (100,)
    assert (ids[:50] == tokenizer.encode("好", 1)[0]).all()
    assert (ids[-8:] == tokenizer.encode("terrible", 8)).all()


def test_encode_batch_right_pads(tokenizer: TextTokenizer) -> None:
    tokens, lengths = tokenizer.encode_batch(["good", "", "质量很好"], 8)
    assert tokens.shape == (3, 4) and tokens.dtype == np.int64
    assert lengths.tolist() == [4, 0, 4]
    assert (tokens[1] == 0).all()
    assert tokenizer.encode_batch([], 8)[0].shape == (0, 1)


def test_dict_round_trip_is_json(tokenizer: TextTokenizer) -> None:
    data = json.loads(json.dumps(tokenizer.to_dict(), ensure_ascii=False))
    again = TextTokenizer.from_dict(data)
    text = "好评 Great 👍 ქ"
    assert (again.encode(text, 32) == tokenizer.encode(text, 32)).all()
    with pytest.raises(ValueError, match="unsupported tokenizer"):
        TextTokenizer.from_dict({**data, "version": 99})


def test_fit_orders_by_frequency_and_applies_min_count() -> None:
    tok = TextTokenizer.fit(["aab", "ab", "c"], min_count=2)
    assert tok.chars == " ab"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_encodes_within_bounds(text: str) -> None:
    tok = TextTokenizer(" abc好", hash_buckets=8)
    ids = tok.encode(text, 64)
    assert ids.shape[0] <= 64
    assert ((ids >= 1) & (ids < tok.vocab_size)).all()


def test_module_does_not_import_torch() -> None:
    code = (
        "import sys, recstream.model.text_tokens\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_word_char_mask_marks_letters_of_spaced_scripts_only() -> None:
    tokenizer = TextTokenizer.fit(["don't stop, café 42 很好 🙂"], min_count=1, hash_buckets=4)
    mask = word_char_mask(tokenizer)
    assert mask.shape == (tokenizer.vocab_size,) and mask.dtype == np.bool_
    by_char = {c: bool(mask[i]) for i, c in enumerate(tokenizer.chars, start=1)}
    assert all(by_char[c] for c in "dontspcafé42'")
    assert not any(by_char[c] for c in " ,很好🙂")
    # padding and hashed (unseen) ids are never word characters
    assert not mask[0] and not mask[1 + len(tokenizer.chars) :].any()
