"""Scoring a sentiment model on labelled reviews, and the metrics it reports.

The metrics are computed here with numpy (no scikit-learn at run time).  A data set
is scored over the labels it has: on a binary set (negative/positive) the
prediction is the more probable of those two, so a model is never marked wrong for
a ``neutral`` answer the data cannot contain.  Peers are scored the same way.

Models can be a checkpoint folder (scored with torch) or an exported
``sentiment.onnx`` (scored with onnxruntime; the tokenizer comes from the file's
metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recstream.model.review_adapters import LabelledReview, ReviewSet, train_test_split
from recstream.model.text_tokens import TextTokenizer, pad_rows
from recstream.streams.records import LABELS

#: ``texts -> probabilities [N, 3]`` in :data:`LABELS` order.
ProbaFn = Callable[[Sequence[str]], npt.NDArray[np.float32]]


def restricted_argmax(probs: npt.NDArray[np.floating[Any]], labels: Sequence[str]) -> list[str]:
    """The most probable label among ``labels`` for each row of ``probs``."""
    columns = [LABELS.index(label) for label in labels]
    best = np.asarray(probs)[:, columns].argmax(axis=1)
    return [labels[i] for i in best]


def classification_report(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label precision/recall/F1/support, confusion matrix.

    ``confusion[i][j]`` counts reviews of true label ``labels[i]`` predicted as
    ``labels[j]``.  Macro-F1 averages over ``labels`` (labels absent from both truth
    and prediction count as F1 0 only if present in ``labels``).
    """
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        confusion[index[t], index[p]] += 1
    per_label: dict[str, dict[str, float]] = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = float(confusion[i, i])
        predicted_n = float(confusion[:, i].sum())
        actual_n = float(confusion[i, :].sum())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / actual_n if actual_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_label[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(actual_n),
        }
    total = int(confusion.sum())
    return {
        "n": total,
        "accuracy": round(float(np.trace(confusion)) / total, 4) if total else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "per_label": per_label,
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
    }


def evaluate_items(
    proba: ProbaFn, items: Sequence[LabelledReview], labels: Sequence[str]
) -> dict[str, Any]:
    """Report of ``proba`` on ``items``, with a per-group breakdown when items have groups."""
    texts = [item.review.text for item in items]
    predicted = restricted_argmax(proba(texts), labels)
    truth = [item.label for item in items]
    report = classification_report(truth, predicted, labels)
    groups = sorted({item.group for item in items if item.group is not None})
    if groups:
        report["by_group"] = {}
        for group in groups:
            chosen = [i for i, item in enumerate(items) if item.group == group]
            sub = classification_report(
                [truth[i] for i in chosen], [predicted[i] for i in chosen], labels
            )
            report["by_group"][group] = {k: sub[k] for k in ("n", "accuracy", "macro_f1")}
    return report


def evaluate_held_out(proba: ProbaFn, data: ReviewSet) -> dict[str, Any]:
    """Report on the fixed held-out 20 % of a review set."""
    _, test = train_test_split(data)
    report = evaluate_items(proba, test, data.labels)
    return {"data": data.name, "format": data.format, "split": "test", **report}


def torch_proba(
    model: Any, tokenizer: TextTokenizer, max_len: int, batch_size: int = 256
) -> ProbaFn:
    """Probabilities from a :class:`SentimentEncoder` (batches sorted by length)."""
    import torch

    def proba(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        encoded = [tokenizer.encode(text, max_len) for text in texts]
        order = np.argsort([len(e) for e in encoded], kind="stable")
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                tokens, lengths = pad_rows([encoded[i] for i in rows])
                lexicon = tokenizer.lexicon_features([texts[i] for i in rows])
                logits = model(
                    torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(lexicon)
                )
                out[rows] = torch.softmax(logits, dim=-1).numpy()
        model.train(was_training)
        return out

    return proba


def onnx_proba(
    path: Path, batch_size: int = 32, threads: int = 1
) -> tuple[ProbaFn, dict[str, Any]]:
    """Probabilities from an exported ``sentiment.onnx`` (tokenizer from its metadata).

    The graph outputs probabilities (softmax inside); the metadata is read and
    checked by :mod:`recstream.export.metadata`.
    """
    import onnxruntime as ort

    from recstream.export.metadata import parse_metadata

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map, "sentiment", str(path))
    if list(meta.labels) != list(LABELS):
        raise ValueError(f"{path} has labels {meta.labels}, expected {list(LABELS)}")
    tokenizer = TextTokenizer.from_dict(meta.tokenizer)
    max_len = meta.max_len

    def proba(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            tokens, lengths, lexicon = tokenizer.inputs(texts[start : start + batch_size], max_len)
            feeds = {"tokens": tokens, "lengths": lengths, "lexicon": lexicon}
            result = session.run(["probs"], feeds)[0]
            out[start : start + len(tokens)] = result
        return out

    return proba, dict(meta.values)


def load_proba(model_path: Path, batch_size: int = 256) -> tuple[ProbaFn, dict[str, Any]]:
    """A checkpoint folder or a ``.onnx`` file → ``(proba, metadata)``."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return onnx_proba(model_path)
    from recstream.model.sentiment import load_sentiment

    model, meta = load_sentiment(model_path)
    tokenizer = TextTokenizer.from_dict(meta["tokenizer"])
    return torch_proba(model, tokenizer, int(meta["max_len"]), batch_size), meta
