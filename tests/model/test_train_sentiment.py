"""End to end: tiny English + Chinese training through the CLI, then evaluation."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from recstream.model import evaluate_sentiment_cli, train_sentiment_cli
from recstream.model.sentiment import SentimentEncoder, load_sentiment
from recstream.model.text_tokens import TextTokenizer, word_char_mask
from recstream.model.train_sentiment import TrainConfig, masked_loss, train_sentiment

POS_EN = ["good", "great", "love it", "excellent", "works well", "happy with it"]
NEG_EN = ["bad", "awful", "hate it", "broken", "does not work", "waste of money"]
POS_ZH = ["很好", "喜欢", "满意", "不错", "值得买"]
NEG_ZH = ["太差", "失望", "退货", "垃圾", "不值"]


def _sentences(words: list[str], rng: random.Random, n: int, filler: str) -> list[str]:
    return [f"{filler} {rng.choice(words)} {rng.choice(words)}" for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sentiment-data")
    rng = random.Random(0)
    en = ["sentence\tlabel"]
    en += [f"{s}\t1" for s in _sentences(POS_EN, rng, 60, "the phone is")]
    en += [f"{s}\t0" for s in _sentences(NEG_EN, rng, 60, "the phone is")]
    zh = ["cat,label,review"]
    zh += [f"书籍,1,{s}" for s in _sentences(POS_ZH, rng, 40, "这本书")]
    zh += [f"水果,1,{s}" for s in _sentences(POS_ZH, rng, 20, "水果")]
    zh += [f"书籍,0,{s}" for s in _sentences(NEG_ZH, rng, 40, "这本书")]
    zh += [f"水果,0,{s}" for s in _sentences(NEG_ZH, rng, 20, "水果")]
    en_path, zh_path = root / "en.txt", root / "zh.csv"
    en_path.write_text("\n".join(en) + "\n")
    zh_path.write_text("\n".join(zh) + "\n")
    return en_path, zh_path


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_train_then_evaluate(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    en, zh = data
    out = tmp_path / "model"
    args = _parse(
        train_sentiment_cli,
        [
            "--data",
            str(en),
            "--format",
            "uci",
            "--data",
            str(zh),
            "--format",
            "zh_shopping",
            "--out",
            str(out),
            "--epochs",
            "6",
            "--dim",
            "16",
            "--char-dim",
            "16",
            "--layers",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "5e-3",
            "--no-lexicon",
            "--quiet",
            "--patience",
            "6",
        ],
    )
    assert train_sentiment_cli.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["test"]) == {"en", "zh"}
    _, meta = load_sentiment(out)
    assert meta["kind"] == "sentiment" and meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["max_len"] == 256 and len(meta["data_fingerprint"]) == 64
    assert {d["name"] for d in meta["data"]} == {"en", "zh"}
    assert any((out / "tensorboard").iterdir())

    args = _parse(
        evaluate_sentiment_cli,
        [
            "--model",
            str(out),
            "--data",
            str(en),
            "--format",
            "uci",
            "--data",
            str(zh),
            "--format",
            "zh_shopping",
            "--json",
        ],
    )
    assert evaluate_sentiment_cli.run(args) == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    en_report, zh_report = reports
    assert en_report["n"] == 24 and zh_report["n"] == 24
    # the synthetic task is easy: a working model separates it
    assert en_report["accuracy"] >= 0.9 and zh_report["accuracy"] >= 0.9
    assert set(zh_report["by_group"]) == {"书籍", "水果"}
    assert en_report["confusion"]["labels"] == ["negative", "positive"]
    # the held-out figures equal those the training run recorded
    assert meta["metrics"]["test"]["sources"]["en"]["accuracy"] == en_report["accuracy"]

    args = _parse(
        evaluate_sentiment_cli, ["--model", str(out), "--data", str(en), "--format", "uci"]
    )
    assert evaluate_sentiment_cli.run(args) == 0
    assert "macro-F1" in capsys.readouterr().out


def test_mismatched_data_and_format(data: tuple[Path, Path], tmp_path: Path) -> None:
    en, _ = data
    args = _parse(
        train_sentiment_cli,
        ["--data", str(en), "--format", "uci", "--format", "uci", "--out", str(tmp_path)],
    )
    with pytest.raises(SystemExit, match="one --format per --data"):
        train_sentiment_cli.run(args)


def test_masked_loss_ignores_absent_label() -> None:
    import torch

    logits = torch.tensor([[0.0, 50.0, 0.0]])
    label = torch.tensor([2])
    binary = torch.tensor([[True, False, True]])
    three = torch.tensor([[True, True, True]])
    weight = torch.ones(1)
    # a huge neutral logit costs nothing when neutral is masked out
    assert float(masked_loss(logits, label, binary, weight)) == pytest.approx(0.6931, abs=1e-3)
    assert float(masked_loss(logits, label, three, weight)) > 40


def test_cli_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import recstream.model.train_sentiment_cli, recstream.model.evaluate_sentiment_cli\n"
        "import recstream.model.review_adapters, recstream.model.evaluate_sentiment\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _linear_encoder(
    tokenizer: TextTokenizer, word_buckets: int, linear_ngrams: int = 0
) -> SentimentEncoder:
    """A tiny encoder whose linear path hashes into ``word_buckets`` rows."""
    model = SentimentEncoder(
        vocab_size=tokenizer.vocab_size,
        ngram_buckets=64,
        char_dim=8,
        dim=8,
        heads=2,
        word_buckets=word_buckets,
        linear_ngrams=linear_ngrams,
    )
    model.set_word_chars(torch.from_numpy(word_char_mask(tokenizer)))
    return model


def test_inverse_document_frequency_counts_texts_not_occurrences() -> None:
    import numpy as np

    from recstream.model.train_sentiment import bucket_document_counts, inverse_document_frequency

    tokenizer = TextTokenizer.fit(["good good phone", "good"], min_count=1)
    model = _linear_encoder(tokenizer, 1 << 16)
    texts = [tokenizer.encode(t, 32) for t in ("good good phone", "good")]
    idf = inverse_document_frequency(bucket_document_counts(model, texts, batch_size=1), 2)
    tokens, lengths = (torch.from_numpy(a) for a in tokenizer.encode_batch(["good", "phone"], 8))
    valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    ids = model.word_ids(tokens, valid)
    good, phone = int(ids[0, 3]), int(ids[1, 4])  # the rows of the two words
    assert float(idf[good]) == pytest.approx(1.0)  # in both texts (twice in one)
    assert float(idf[phone]) == pytest.approx(float(np.log(3 / 2) + 1))
    assert int((idf > 0).sum()) < 30 and float(idf.min()) == 0.0  # unseen buckets weigh 0


def test_the_lexicon_is_stored_with_the_tokenizer(data: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("vaderSentiment", reason="vaderSentiment (train extra) not installed")

    en, _ = data
    config = TrainConfig(epochs=1, dim=16, char_dim=16, batch_size=16, progress=False)
    meta = train_sentiment([(en, "uci")], tmp_path, config)
    assert meta["lexicon_words"] > 7000
    tokenizer = TextTokenizer.from_dict(meta["tokenizer"])
    scores = tokenizer.lexicon_features(["great phone", "awful phone", "the phone"])
    assert scores[0, 0] > 0 > scores[1, 0] and scores[2, 0] == 0.0
    # the linear epoch fitted the lexicon input: it leans the way the lexicon does
    model, _ = load_sentiment(tmp_path)
    weight = model.lexicon.weight.detach()
    assert weight[2, 0] > weight[0, 0]


def test_a_weight_average_is_what_is_validated_and_kept(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    en, zh = data
    sources = [(en, "uci"), (zh, "zh_shopping")]

    def config(half_life: float) -> TrainConfig:
        return TrainConfig(
            epochs=2,
            dim=16,
            char_dim=16,
            batch_size=16,
            lr=5e-3,
            lexicon=False,
            progress=False,
            ema_half_life=half_life,
        )

    plain = train_sentiment(sources, tmp_path / "plain", config(0.0))
    averaged = train_sentiment(sources, tmp_path / "averaged", config(0.5))
    assert averaged["training"]["ema_half_life"] == 0.5
    a, _ = load_sentiment(tmp_path / "plain")
    b, _ = load_sentiment(tmp_path / "averaged")
    # Same seed, same steps: only the kept weights differ (the average of the steps').
    weights_a, weights_b = a.state_dict(), b.state_dict()
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert plain["metrics"]["test"]["sources"]["en"]["accuracy"] >= 0.9
    assert averaged["metrics"]["test"]["sources"]["en"]["accuracy"] >= 0.9


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_class_weights_follow_the_power_of_the_balanced_weights(
    tmp_path: Path, power: float
) -> None:
    from collections import Counter

    from recstream.model.train_sentiment import encode_training_rows, prepare_sources
    from recstream.streams.records import LABELS

    path = tmp_path / "skewed.txt"
    lines = ["sentence\tlabel"] + [f"good thing {i}\t1" for i in range(60)]
    path.write_text("\n".join(lines + [f"bad thing {i}\t0" for i in range(20)]) + "\n")
    (source,) = prepare_sources([(path, "uci")])
    tokenizer = TextTokenizer.fit([item.review.text for item in source.fit])
    rows = encode_training_rows([source], tokenizer, 32, class_weight_power=power)
    counts = Counter(item.label for item in source.fit)
    n = sum(counts.values())
    negative = rows.weights[rows.labels == LABELS.index("negative")]
    positive = rows.weights[rows.labels == LABELS.index("positive")]
    assert negative == pytest.approx((n / (2 * counts["negative"])) ** power)
    assert positive == pytest.approx((n / (2 * counts["positive"])) ** power)
    # the rarer class never weighs less than the common one
    assert negative[0] >= positive[0]


def test_polarity_ratio_is_taken_within_each_source() -> None:
    import numpy as np

    from recstream.model.train_sentiment import label_document_counts, polarity_ratio

    words = ["good", "bad", "phone", "echo", "meh"]
    tokenizer = TextTokenizer.fit(words, min_count=1)
    model = _linear_encoder(tokenizer, 1 << 18, linear_ngrams=1)

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [tokenizer.encode(t, 32) for t in texts]

    # Source A: balanced; "good" only in positive texts, "phone" in all of them.
    a = [encode(["good phone"] * 3), encode(["bad phone"] * 3)]
    # Source B: 9 positive texts to 1 negative, "echo" in all: common, not polar.
    b = [encode(["echo"] * 9), encode(["echo bad"])]
    # Source C has three labels; "meh" is only in its 2 neutral texts.
    c = [encode(["echo"] * 3), encode(["meh"] * 2), encode(["bad"] * 3)]
    # Source D has texts of one label only (the other's are missing): it adds nothing.
    d = [encode(["good"] * 5), []]
    ratio = polarity_ratio([label_document_counts(model, groups) for groups in (a, b, c, d)])
    tokens, lengths = (torch.from_numpy(x) for x in tokenizer.encode_batch(words, 8))
    valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    ids = model.word_ids(tokens, valid)
    good, bad, phone, echo, meh = (
        int(ids[i, len(w) - 1]) for i, w in enumerate(words)
    )  # word rows
    assert float(ratio[good]) == pytest.approx(np.log(4))  # (1+3)/4 vs (1+0)/4
    assert float(ratio[phone]) == pytest.approx(0.0, abs=1e-6)
    assert float(ratio[meh]) == pytest.approx(np.log(4), rel=1e-5)  # 3/3 vs 1/4 and 1/3
    # "echo": 0 in B (10/10 vs 2/2, 10 texts), ln 4 in C (3 texts: 4/4 vs 1/3 and 1/4).
    assert float(ratio[echo]) == pytest.approx(3 * np.log(4) / 13, rel=1e-5)
    # "bad": ln 4 in A (3 texts), |ln((1/10) / (2/2))| = ln 10 in B (1), ln 4 in C (3).
    expected = (3 * np.log(4) + np.log(10) + 3 * np.log(4)) / 7
    assert float(ratio[bad]) == pytest.approx(expected, rel=1e-5)
    assert int((ratio > 0).sum()) < 40  # buckets no text hashes into stay 0


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_term_weights_are_idf_times_the_polarity_ratio_to_the_power(
    data: tuple[Path, Path], power: float
) -> None:
    from recstream.model.train_sentiment import (
        bucket_document_counts,
        inverse_document_frequency,
        label_document_counts,
        polarity_ratio,
        prepare_sources,
        term_weights,
    )

    sources = prepare_sources([(data[0], "uci"), (data[1], "zh_shopping")])
    tokenizer = TextTokenizer.fit([i.review.text for s in sources for i in s.fit])
    model = _linear_encoder(tokenizer, 1 << 16, linear_ngrams=2)
    config = TrainConfig(polarity_power=power)
    weights = term_weights(model, tokenizer, sources, config)
    texts = [tokenizer.encode(i.review.text, config.max_len) for s in sources for i in s.fit]
    idf = inverse_document_frequency(bucket_document_counts(model, texts), len(texts))
    by_label = [
        [
            [tokenizer.encode(i.review.text, config.max_len) for i in s.fit if i.label == label]
            for label in s.data.labels
        ]
        for s in sources
    ]
    ratio = polarity_ratio([label_document_counts(model, groups) for groups in by_label])
    torch.testing.assert_close(weights, idf if power == 0.0 else idf * ratio**power)
    assert int((ratio > 0).sum()) > 0
