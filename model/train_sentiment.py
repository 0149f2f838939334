"""Training the review sentiment model on one or more labelled review files.

Every source is split by the fixed rule of :mod:`recstream.model.review_adapters`
(80 % train / 20 % test, and 10 % of train for validation).  One model learns all
sources together:

* the tokenizer's character list is learnt from the training texts only;
* small sources are repeated within an epoch (``round(sqrt(largest / size))``
  times, at most 8) so that a 1,000-sentence English set is not drowned by 60,000
  Chinese reviews;
* binary sources train only the two labels they have: the ``neutral`` logit is
  masked out of their loss, so the softmax still spans all three labels;
* within each source, classes are weighted by ``(n / (k * n_class)) ** class_weight_power``
  (1: balanced, 0: unweighted; the default 0.5 lies between: it helps macro-F1 on
  unbalanced sets such as the Alexa reviews, and keeps their positives from biasing
  all English product text towards positive, without trading too much precision
  of the rare labels for their recall);
* with ``lexicon=True`` (the CLI default) the tokenizer carries the word valences
  shipped inside the ``vaderSentiment`` package, and the model sees their
  rule-adjusted sums (:mod:`recstream.model.sentiment_lexicon`);
* the linear paths (the TF-IDF-weighted bag of n-grams and the lexicon scores,
  see :mod:`recstream.model.sentiment`) are fitted alone for the first
  ``linear_epochs`` epochs, like a logistic regression, with their own, higher
  learning rate (``word_lr``); then the Transformer joins and everything trains
  together.  The inverse document frequencies come from the training texts;
* early stopping keeps the epoch with the best mean validation macro-F1 over the
  sources.

Outputs in the output folder: ``sentiment.pt`` + ``sentiment.json`` (see
:mod:`recstream.model.sentiment`) and TensorBoard logs under ``tensorboard/``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from recstream.model.checkpoint import file_sha256
from recstream.model.evaluate_sentiment import evaluate_items, torch_proba
from recstream.model.review_adapters import (
    SPLIT_SEED,
    TEST_FRACTION,
    VALIDATION_FRACTION,
    VALIDATION_SEED,
    LabelledReview,
    ReviewSet,
    load_reviews,
    train_test_split,
    train_validation_split,
)
from recstream.model.sentiment import SentimentEncoder, save_sentiment
from recstream.model.sentiment_lexicon import SentimentLexicon
from recstream.model.text_tokens import TextTokenizer, pad_rows, word_char_mask
from recstream.model.weight_average import WeightAverage
from recstream.streams.records import LABELS

MAX_REPEAT = 8


@dataclass
class TrainConfig:
    """Hyper-parameters and run options of one training run."""

    epochs: int = 6
    max_len: int = 256
    char_dim: int = 32
    dim: int = 64
    layers: int = 1
    heads: int = 4
    stride: int = 4
    ngram_buckets: int = 1 << 14
    ngram_max: int = 3
    dropout: float = 0.2
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 13
    patience: int = 2
    threads: int = 1
    progress: bool = True
    limit_per_source: int | None = None
    lexicon: bool = True
    word_buckets: int = 1 << 21
    word_max: int = 16
    word_decay: float = 0.0
    linear_ngrams: int = 3
    word_lr: float = 0.01
    linear_epochs: int = 2
    ema_half_life: float = 0.0
    class_weight_power: float = 0.5
    polarity_power: float = 1.0


@dataclass
class SourceData:
    """One source's split and its encoded training rows."""

    data: ReviewSet
    fit: list[LabelledReview]
    validation: list[LabelledReview]
    test: list[LabelledReview]
    repeat: int = 1


def prepare_sources(
    sources: Sequence[tuple[Path, str]], limit: int | None = None
) -> list[SourceData]:
    """Load and split every ``(path, format)``; ``limit`` caps each split (for quick runs)."""
    prepared = []
    for path, fmt in sources:
        data = load_reviews(path, fmt)
        if not data.items:
            raise ValueError(f"{path} holds no labelled reviews")
        train, test = train_test_split(data)
        fit, validation = train_validation_split(train)
        if limit is not None:
            rng = random.Random(SPLIT_SEED)
            fit, validation, test = (
                rng.sample(part, min(limit, len(part))) for part in (fit, validation, test)
            )
        prepared.append(SourceData(data, fit, validation, test))
    largest = max(len(s.fit) for s in prepared)
    for source in prepared:
        source.repeat = min(MAX_REPEAT, max(1, round(math.sqrt(largest / len(source.fit)))))
    return prepared


def data_fingerprint(sources: Sequence[SourceData]) -> str:
    """SHA-256 over each file's bytes and format, and the split rule."""
    digest = hashlib.sha256()
    digest.update(
        f"split:{SPLIT_SEED}:{TEST_FRACTION}:{VALIDATION_SEED}:{VALIDATION_FRACTION}".encode()
    )
    for source in sources:
        digest.update(f"{source.data.format}:{file_sha256(source.data.path)}".encode())
    return digest.hexdigest()


def _class_weights(source: SourceData, power: float) -> dict[str, float]:
    counts = Counter(item.label for item in source.fit)
    total = sum(counts.values())
    return {label: (total / (len(counts) * n)) ** power for label, n in counts.items()}


@dataclass
class TrainingRows:
    """Encoded training examples: ids, lexicon scores, label, allowed-label mask, weight."""

    ids: list[npt.NDArray[np.int64]]
    lexicon: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    allowed: npt.NDArray[np.bool_]
    weights: npt.NDArray[np.float32]


def encode_training_rows(
    sources: Sequence[SourceData],
    tokenizer: TextTokenizer,
    max_len: int,
    class_weight_power: float,
) -> TrainingRows:
    """Every fit example of every source, repeated ``source.repeat`` times."""
    ids: list[npt.NDArray[np.int64]] = []
    lexicon: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    allowed: list[list[bool]] = []
    weights: list[float] = []
    for source in sources:
        mask = [label in source.data.labels for label in LABELS]
        class_weight = _class_weights(source, class_weight_power)
        scores = tokenizer.lexicon_features([item.review.text for item in source.fit])
        for item, score in zip(source.fit, scores, strict=True):
            encoded = tokenizer.encode(item.review.text, max_len)
            if encoded.shape[0] == 0:
                continue
            for _ in range(source.repeat):
                ids.append(encoded)
                lexicon.append(score)
                labels.append(LABELS.index(item.label))
                allowed.append(mask)
                weights.append(class_weight[item.label])
    return TrainingRows(
        ids,
        np.array(lexicon, dtype=np.float32).reshape(len(ids), -1),
        np.array(labels),
        np.array(allowed, dtype=bool),
        np.array(weights, dtype=np.float32),
    )


def bucket_document_counts(
    model: SentimentEncoder, texts: Sequence[npt.NDArray[np.int64]], batch_size: int = 512
) -> torch.Tensor:
    """``float64 [word_buckets]``: how many encoded ``texts`` hash a feature into each bucket."""
    counts = torch.zeros(model.word_buckets + 1, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens, lengths = pad_rows(list(texts[start : start + batch_size]))
            tokens_t, lengths_t = torch.from_numpy(tokens), torch.from_numpy(lengths)
            valid = torch.arange(tokens_t.shape[1]).unsqueeze(0) < lengths_t.unsqueeze(1)
            ids = model.word_ids(tokens_t, valid)
            rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
            pairs = torch.unique(rows * (model.word_buckets + 1) + ids)
            counts += torch.bincount(
                pairs % (model.word_buckets + 1), minlength=model.word_buckets + 1
            ).to(torch.float64)
    return counts[: model.word_buckets]


def inverse_document_frequency(document_counts: torch.Tensor, n_texts: int) -> torch.Tensor:
    """``float [word_buckets]``: ``ln((1 + n) / (1 + df)) + 1`` per bucket, 0 if unseen.

    Unseen buckets weigh nothing, so n-grams new at serving time leave the norm alone.
    """
    df = document_counts
    idf = torch.log((1.0 + n_texts) / (1.0 + df)) + 1.0
    return torch.where(df > 0, idf, torch.zeros_like(idf)).to(torch.float32)


def label_document_counts(
    model: SentimentEncoder, texts_by_label: Sequence[Sequence[npt.NDArray[np.int64]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One source's ``(counts [labels, word_buckets], texts [labels])`` (float64), as
    :func:`polarity_ratio` reads them: ``bucket_document_counts`` per label, and how many
    texts each label has."""
    counts = torch.stack([bucket_document_counts(model, texts) for texts in texts_by_label])
    return counts, torch.tensor([len(texts) for texts in texts_by_label], dtype=torch.float64)


def polarity_ratio(sources: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``float [word_buckets]``: how strongly each bucket tells a source's labels apart.

    ``sources`` holds, per source, ``(counts [labels, word_buckets], texts [labels])``:
    how many of its training texts of each label hash a feature into each bucket, and
    how many texts each label has.  Within a source each label ``c`` gives the smoothed
    rate ``(1 + counts_c) / (1 + texts_c)``; the bucket's ratio is the largest minus the
    smallest log rate (for two labels the naive-Bayes log-count ratio ``|ln(p / q)|``).
    The sources' ratios are averaged, each weighted by how many of its texts hold the
    bucket.  Ratios are taken within a source so that one source's class balance (most
    Alexa reviews are positive) does not make its common words look polar.  Labels
    without texts are left out; a source with fewer than two others adds nothing.
    """
    word_buckets = sources[0][0].shape[1]
    weighted = torch.zeros(word_buckets, dtype=torch.float64)
    support = torch.zeros(word_buckets, dtype=torch.float64)
    for counts, texts in sources:
        present = texts > 0
        if int(present.sum()) < 2:
            continue
        counts, texts = counts[present], texts[present]
        log_rates = torch.log((1.0 + counts) / (1.0 + texts.unsqueeze(1)))
        held = counts.sum(0)
        weighted += held * (log_rates.max(0).values - log_rates.min(0).values)
        support += held
    return torch.where(support > 0, weighted / support.clamp(min=1.0), 0.0).to(torch.float32)


def length_bucketed_batches(
    lengths: npt.NDArray[np.int64], batch_size: int, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """Shuffled batches of similar lengths (sorted within windows of 50 batches)."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches: list[npt.NDArray[np.int64]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def masked_loss(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted cross-entropy over each example's allowed labels only."""
    masked = logits.masked_fill(~allowed, -1e4)
    losses = F.cross_entropy(masked, labels, reduction="none")
    return (losses * weights).sum() / weights.sum()


def validate(
    model: SentimentEncoder,
    tokenizer: TextTokenizer,
    sources: Sequence[SourceData],
    max_len: int,
    part: str = "validation",
) -> dict[str, Any]:
    """Per-source reports on ``part`` (``validation`` or ``test``) and their mean macro-F1."""
    proba = torch_proba(model, tokenizer, max_len)
    reports = {
        s.data.name: evaluate_items(proba, getattr(s, part), s.data.labels)
        for s in sources
        if getattr(s, part)
    }
    mean_f1 = float(np.mean([r["macro_f1"] for r in reports.values()]))
    return {"mean_macro_f1": round(mean_f1, 4), "sources": reports}


def term_weights(
    model: SentimentEncoder,
    tokenizer: TextTokenizer,
    sources: Sequence[SourceData],
    config: TrainConfig,
) -> torch.Tensor:
    """The linear path's per-bucket weights: idf times the polarity ratio to the power
    ``config.polarity_power`` (0: idf alone).  Both come from one count of each source's
    training texts by label (empty texts left out)."""
    counted = []
    for source in sources:
        encoded = [(tokenizer.encode(i.review.text, config.max_len), i.label) for i in source.fit]
        by_label = [
            [t for t, label in encoded if t.shape[0] and label == wanted]
            for wanted in source.data.labels
        ]
        counted.append(label_document_counts(model, by_label))
    document_counts = torch.stack([counts.sum(0) for counts, _ in counted]).sum(0)
    n_texts = int(sum(float(sizes.sum()) for _, sizes in counted))
    idf = inverse_document_frequency(document_counts, n_texts)
    if config.polarity_power == 0:
        return idf
    return idf * polarity_ratio(counted) ** config.polarity_power


def train_sentiment(
    sources: Sequence[tuple[Path, str]], out_dir: Path, config: TrainConfig
) -> dict[str, Any]:
    """Train, early-stop, write the checkpoint; returns the checkpoint metadata."""
    started = time.time()
    torch.manual_seed(config.seed)
    np_rng = np.random.default_rng(config.seed)
    torch.set_num_threads(config.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prepared = prepare_sources(sources, config.limit_per_source)
    lexicon = SentimentLexicon.from_vader_package() if config.lexicon else None
    tokenizer = TextTokenizer.fit(
        (item.review.text for s in prepared for item in s.fit), lexicon=lexicon
    )
    rows = encode_training_rows(prepared, tokenizer, config.max_len, config.class_weight_power)
    row_lengths = np.array([r.shape[0] for r in rows.ids], dtype=np.int64)
    hparams: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "ngram_buckets": config.ngram_buckets,
        "ngram_max": config.ngram_max,
        "char_dim": config.char_dim,
        "dim": config.dim,
        "layers": config.layers,
        "heads": config.heads,
        "stride": config.stride,
        "max_len": config.max_len,
        "dropout": config.dropout,
        "word_buckets": config.word_buckets,
        "word_max": config.word_max,
        "linear_ngrams": config.linear_ngrams,
    }
    model = SentimentEncoder(**hparams)
    model.set_word_chars(torch.from_numpy(word_char_mask(tokenizer)))
    model.set_word_idf(term_weights(model, tokenizer, prepared, config))
    sparse = [model.chars.weight, model.ngrams.weight]
    words = [model.words.weight, model.lexicon.weight]
    dense = [p for p in model.parameters() if all(p is not s for s in sparse + words)]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SparseAdam(sparse, lr=config.lr),
        torch.optim.AdamW(
            [
                {"params": dense, "weight_decay": 0.01},
                {"params": words, "weight_decay": config.word_decay, "lr": config.word_lr},
            ],
            lr=config.lr,
        ),
    ]
    steps_per_epoch = math.ceil(len(rows.ids) / config.batch_size)
    total_steps = max(1, steps_per_epoch * config.epochs)
    warmup = min(300, total_steps // 10 + 1)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.05, 1.0 - (step - warmup) / max(1, total_steps - warmup))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]
    average = WeightAverage(model, config.ema_half_life) if config.ema_half_life else None
    # What is validated and kept: the moving average of the weights, or the weights.
    kept = model if average is None else average.model
    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None, "validation": None}
    history = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = length_bucketed_batches(row_lengths, config.batch_size, np_rng)
        running = 0.0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            unit="batch",
            leave=False,
        )
        linear_only = epoch <= config.linear_epochs
        for batch in bar:
            tokens_np, lengths_np = pad_rows([rows.ids[i] for i in batch])
            tokens, lengths = torch.from_numpy(tokens_np), torch.from_numpy(lengths_np)
            lexicon_scores = torch.from_numpy(rows.lexicon[batch])
            targets = (
                torch.from_numpy(rows.labels[batch]),
                torch.from_numpy(rows.allowed[batch]),
                torch.from_numpy(rows.weights[batch]),
            )
            if linear_only:  # only the linear paths (and the bias) learn
                valid = torch.arange(tokens.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
                loss = masked_loss(model.linear_logits(tokens, valid, lexicon_scores), *targets)
            else:
                loss = masked_loss(model(tokens, lengths, lexicon_scores), *targets)
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense, 1.0)
            for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
                optimizer.step()
                scheduler.step()
            if average is not None:
                average.update(model, len(batches))
            step += 1
            value = float(loss.detach())
            running = 0.98 * running + 0.02 * value if step > 1 else value
            if step % 50 == 0:
                writer.add_scalar("train/loss", running, step)
                writer.add_scalar("train/lr", schedulers[1].get_last_lr()[0], step)
                bar.set_postfix(loss=f"{running:.3f}")
        validation = validate(kept, tokenizer, prepared, config.max_len)
        writer.add_scalar("validation/mean_macro_f1", validation["mean_macro_f1"], epoch)
        for name, report in validation["sources"].items():
            writer.add_scalar(f"validation/{name}/macro_f1", report["macro_f1"], epoch)
            writer.add_scalar(f"validation/{name}/accuracy", report["accuracy"], epoch)
        summary = {
            "epoch": epoch,
            "loss": round(running, 4),
            "mean_macro_f1": validation["mean_macro_f1"],
            **{n: r["macro_f1"] for n, r in validation["sources"].items()},
        }
        history.append(summary)
        if config.progress:
            tqdm.write(f"epoch {epoch}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
        if validation["mean_macro_f1"] > best["score"]:
            best = {
                "score": validation["mean_macro_f1"],
                "epoch": epoch,
                "state": copy.deepcopy(kept.state_dict()),
                "validation": validation,
            }
        elif epoch - best["epoch"] >= config.patience:
            break
    writer.close()

    model.load_state_dict(best["state"])
    model.eval()
    test = validate(model, tokenizer, prepared, config.max_len, part="test")
    meta = {
        "hparams": hparams,
        "tokenizer": tokenizer.to_dict(),
        "labels": list(LABELS),
        "max_len": config.max_len,
        "data_fingerprint": data_fingerprint(prepared),
        "metrics": {
            "selection": "mean validation macro-F1 over sources",
            "best_epoch": best["epoch"],
            "validation": best["validation"],
            "test": test,
            "history": history,
        },
        "data": [
            {
                "name": s.data.name,
                "path": str(s.data.path),
                "format": s.data.format,
                "labels": list(s.data.labels),
                "fit": len(s.fit),
                "validation": len(s.validation),
                "test": len(s.test),
                "repeat": s.repeat,
                "skipped": s.data.skipped,
            }
            for s in prepared
        ],
        "lexicon_words": 0 if lexicon is None else len(lexicon.valence),
        "training": {**asdict(config), "train_seconds": round(time.time() - started, 1)},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_sentiment(out_dir, model, meta)
    return meta
