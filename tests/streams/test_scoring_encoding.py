"""The recommender's input encoding against a plain reference, and its query-word cache."""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from fake_sessions import BindingSession

from recstream.export.metadata import ModelMetadata
from recstream.model.features import (
    ACTION_IDS,
    FIRST_ITEM,
    OOV,
    PAD,
    WORDS_PER_SEARCH,
    query_hashes,
)
from recstream.streams import scoring
from recstream.streams.scoring import (
    SMALL_BATCH,
    EncodedBatch,
    OnnxRecsScorer,
    QueryWords,
    RecsModel,
    RecsResult,
    Token,
    bucket_length,
)

VOCAB = ["v0", "v1", "v2", "v3", "None", "", "手机"]  # "None" and "" are real item ids here
MAX_LEN = 12


class _TopScores(BindingSession):
    """Stands in for the recs graph: item n scores n, exclusions masked, top-k."""

    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(feeds["lengths"])
        scores = np.tile(np.arange(len(VOCAB) + FIRST_ITEM, dtype=np.float32), (rows, 1))
        scores[:, :FIRST_ITEM] = -np.inf
        scores[np.arange(rows)[:, None], feeds["exclude"]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.items_asked(feeds, self.top_k)]
        return [top, np.take_along_axis(scores, top, axis=1)]


def _model(top_k: int = 4, vocab: Sequence[str] = VOCAB) -> RecsModel:
    meta = ModelMetadata(
        "recs", "recs-enc", "fp32", MAX_LEN, {"vocab": vocab, "popular": ["v3"], "top_k": top_k}
    )
    return RecsModel(cast(Any, _TopScores(top_k)), meta)


def _reference(histories: Sequence[Sequence[Token]], vocab: Sequence[str] = VOCAB) -> EncodedBatch:
    """The documented encoding, token by token, with no shortcut."""
    index = {item: n + FIRST_ITEM for n, item in enumerate(vocab)}
    rows, encoded = [], []
    for row, history in enumerate(histories):
        tokens = []
        for token in list(history)[-MAX_LEN:]:
            action = ACTION_IDS.get(token.action, 0)
            if action == ACTION_IDS["search"]:
                tokens.append((PAD, action, query_hashes(token.query or "")))
            elif action and token.item_id is not None:
                tokens.append((index.get(token.item_id, OOV), action, [PAD] * WORDS_PER_SEARCH))
        if any(item >= FIRST_ITEM or words[0] != PAD for item, _, words in tokens):
            rows.append(row)
            encoded.append(tokens)
    lengths = [len(tokens) for tokens in encoded]
    width = bucket_length(max(lengths, default=1), MAX_LEN)
    items = np.zeros((len(rows), width), np.int64)
    actions = np.zeros((len(rows), width), np.int64)
    words = np.zeros((len(rows), width, WORDS_PER_SEARCH), np.int64)
    for r, tokens in enumerate(encoded):
        for position, (item, action, hashes) in enumerate(tokens):
            items[r, position], actions[r, position] = item, action
            words[r, position] = hashes
    return EncodedBatch(rows, items, actions, words, np.array(lengths, np.int64))


def _history(rng: np.random.Generator) -> Sequence[Token]:
    """Clicks on known, unknown, "None" and "" items, searches with and without words,
    clicks without items, unknown actions and repeats; up to twice ``MAX_LEN`` long."""
    queries = ["red shoes", "手机 case", " ", "", "?!", "a b c d e f", None, f"q{rng.integers(9)}"]
    kinds: list[Callable[[], Token]] = [
        lambda: Token(str(rng.choice(VOCAB)), str(rng.choice(["view", "purchase"]))),
        lambda: Token(f"unknown-{rng.integers(3)}", "add_to_cart"),
        lambda: Token(None, "search", queries[int(rng.integers(len(queries)))]),
        lambda: Token("v1", "search", "an item id on a search"),
        lambda: Token(None, "view"),  # a click without an item: dropped
        lambda: Token("v2", "wink"),  # an unknown action: dropped
    ]
    picks = rng.integers(len(kinds), size=int(rng.integers(0, 2 * MAX_LEN + 1)))
    history = [kinds[int(p)]() for p in picks]
    if history and rng.random() < 0.3:
        history += history[-3:]  # duplicates
    shape = rng.random()
    return deque(history) if shape < 0.2 else tuple(history) if shape < 0.4 else history


def _assert_same(ours: EncodedBatch, expected: EncodedBatch) -> None:
    assert ours.rows == expected.rows
    for name in ("items", "actions", "words", "lengths"):
        mine, theirs = getattr(ours, name), getattr(expected, name)
        assert mine.dtype == np.int64 and mine.flags.c_contiguous, name
        np.testing.assert_array_equal(mine, theirs, err_msg=name)


@pytest.mark.parametrize("seed", range(8))
def test_the_encoder_matches_the_reference(seed: int) -> None:
    model = _model()
    rng = np.random.default_rng(seed)
    for size in (1, 3, SMALL_BATCH, SMALL_BATCH + 1, 40, 100):  # ~10 to ~1,300 tokens
        histories = [_history(rng) for _ in range(size)]
        for _ in range(2):  # the second time tokens and queries come from the caches
            _assert_same(model.encode(histories), _reference(histories))


@pytest.mark.parametrize("seed", range(4))
def test_tokens_encoded_by_another_model_are_encoded_again(seed: int) -> None:
    """Tokens keep the encoding of the model that last encoded them (``Token.encoded``);
    a model with another vocabulary (a hot reload) must not read it, and the two models
    may take turns on the same tokens."""
    rng = np.random.default_rng(seed)
    other_vocab = [*VOCAB[::-1], "v9"]
    first, second = _model(), _model(vocab=other_vocab)
    assert first.serial != second.serial
    histories = [_history(rng) for _ in range(40)]
    few = histories[:2]
    for model, vocab in ((first, VOCAB), (second, other_vocab), (first, VOCAB)):
        _assert_same(model.encode(histories), _reference(histories, vocab))
        _assert_same(model.encode(few), _reference(few, vocab))


def test_the_encoding_cache_is_not_part_of_a_tokens_value() -> None:
    model = _model()
    fresh, encoded = Token("v1", "view"), Token("v1", "view")
    model.encode([[encoded]])
    assert encoded.encoded == model.encoding(Token("v1", "view")) != fresh.encoded
    assert fresh == encoded and hash(fresh) == hash(encoded) and repr(fresh) == repr(encoded)
    with pytest.raises(TypeError):
        Token("v1", "view", None, 5)  # type: ignore[call-arg]


def test_unknown_items_never_become_vocab_items() -> None:
    model = _model()
    histories = [
        [Token("None", "view"), Token("", "purchase")],  # real item ids
        [Token(None, "view"), Token("v0 ", "view"), Token("V0", "view")],  # none, unknown
        [Token("v", "view"), Token("v00", "view"), Token("手", "view")],  # unknown
        [Token("v3", "view")] * (3 * MAX_LEN),  # longer than max_len
    ]
    batch = model.encode(histories)
    none, empty, v3 = (model.index[item] for item in ("None", "", "v3"))
    assert batch.rows == [0, 3]  # rows 1 and 2 hold no known item: fallback
    assert batch.items[0, :2].tolist() == [none, empty]
    assert batch.items[1].tolist() == [v3] * MAX_LEN and batch.lengths.tolist() == [2, MAX_LEN]
    only_unknown = model.encode([*histories[1:3], [Token(None, "search", "x")]])
    assert only_unknown.rows == [2] and only_unknown.items[0].tolist()[:1] == [PAD]


def test_search_without_words_does_not_make_a_history_usable() -> None:
    model = _model()
    batch = model.encode(
        [[Token(None, "search", " ?! ")], [Token(None, "search")], [Token("x", "view")]]
    )
    assert batch.rows == [] and batch.items.shape == (0, 8) and batch.words.shape == (0, 8, 4)


def test_query_words_match_query_hashes_cached_or_not() -> None:
    words = QueryWords(capacity=3)
    queries = ["red shoes", None, "", "手机 case", "red shoes", "a b c d e f", "red shoes"]
    for _ in range(3):
        for query in queries:
            hashes = np.frombuffer(words.packed(query), np.int64)
            assert hashes.tolist() == query_hashes(query or "")
        assert len(words._packed) <= 3  # bounded: cleared when full


def test_query_words_from_threads() -> None:
    words = QueryWords(capacity=16)
    queries = [f"word{n % 40} other{n % 7}" for n in range(400)]
    expected = [query_hashes(q) for q in queries]
    failures: list[int] = []

    def work(offset: int) -> None:
        for n in range(offset, len(queries)):
            if np.frombuffer(words.packed(queries[n]), np.int64).tolist() != expected[n]:
                failures.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize("batch", [3, SMALL_BATCH + 4])
def test_recommend_results_are_ordinary_records(
    batch: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = _model(top_k=4)
    monkeypatch.setattr(scoring, "load_recs_model", lambda path, options: model)
    scorer = OnnxRecsScorer(tmp_path / "recs.onnx")
    histories = [[Token("v0", "view")] for _ in range(batch)]
    exclude = [{"手机"} if n % 2 else set() for n in range(batch)]
    results = scorer.recommend(histories, exclude, 3)
    for n, result in enumerate(results):
        ids = [item.item_id for item in result.items]
        assert ids == (["", "None", "v3"] if n % 2 else ["手机", "", "None"])
        expected = RecsResult(result.items, False, "recs-enc")
        assert result == expected and hash(result) == hash(expected)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.fallback = True  # type: ignore[misc]
