"""Offline evaluation of next-item scorers: the trained model and two baselines.

A *scorer* maps a batch of encoded histories to scores ``[B, V]`` over every
vocab index (PAD and OOV at -inf).  :func:`rank_heldout` ranks each user's
held-out item (validation or test, see :mod:`recstream.model.splits`):

- ``sampled``: against the user's sampled negatives (the SASRec protocol);
- ``full``: against the whole catalogue.  Nothing is excluded but PAD and OOV;
  items already in the user's history stay candidates (the usual choice for
  leave-one-out data, where a user may return to an item).

Both are reported with HR/NDCG at 5, 10, 20 and MRR@20.  ``coverage@10`` and
``gini@10`` always describe each evaluated user's full-catalogue top 10, the
list the model would actually serve, whatever the protocol.  Ties between the
held-out item and other candidates are broken at random with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from recstream.model import metrics
from recstream.model.features import FIRST_ITEM
from recstream.model.sequences import Encoded, IntArray
from recstream.model.splits import (
    SAMPLED_MAX_USERS,
    SAMPLED_NEGATIVES,
    Part,
    Split,
    choose_users,
    sample_negatives,
)

ProtocolName = Literal["sampled", "full"]
FloatArray = npt.NDArray[np.float64]


class Scorer(Protocol):
    """Scores ``[B, V]`` of every vocab index after each history; PAD and OOV are -inf.

    ``candidates [B, C]``, when given, are the only indices the caller will read;
    a scorer that can only return its top k (an ONNX graph) uses them to rank
    among the candidates, every other scorer ignores them.
    """

    def __call__(
        self, seqs: Sequence[Encoded], candidates: IntArray | None = None
    ) -> npt.NDArray[np.floating[Any]]: ...


TOP_K = 10


@dataclass(frozen=True)
class Ranked:
    """Ranks of held-out items for a set of users, and their full-catalogue top 10."""

    users: IntArray
    full_ranks: npt.NDArray[np.float64]
    sampled_ranks: npt.NDArray[np.float64] | None
    top: IntArray  # [U, TOP_K] vocab indices

    def report(self, protocol: ProtocolName, catalogue_size: int) -> dict[str, float]:
        """The protocol's ranking metrics plus ``users``, ``coverage@10``, ``gini@10``."""
        ranks = self.full_ranks if protocol == "full" else self.sampled_ranks
        if ranks is None:
            raise ValueError("no sampled negatives were ranked")
        out: dict[str, float] = metrics.summarize(ranks)
        out["users"] = len(self.users)
        out["coverage@10"] = round(metrics.coverage(self.top, catalogue_size), 4)
        out["gini@10"] = round(metrics.gini(self.top, catalogue_size), 4)
        return out


def protocol_users(split: Split, protocol: ProtocolName, seed: int) -> IntArray:
    """Users evaluated: at most 10,000 (seeded) for ``sampled``, every one for ``full``."""
    limit = SAMPLED_MAX_USERS if protocol == "sampled" else None
    return choose_users(split.evaluable(), limit, seed)


def rank_heldout(
    scorer: Scorer,
    split: Split,
    users: IntArray,
    part: Part,
    negatives: IntArray | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Ranked:
    """Score ``users``' inputs before their ``part`` item and rank that item."""
    rng = np.random.default_rng(seed)
    full: list[npt.NDArray[np.float64]] = []
    sampled: list[npt.NDArray[np.float64]] = []
    tops: list[IntArray] = []
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        inputs, targets = zip(*(split.heldout(int(u), part) for u in chunk), strict=True)
        scores = np.asarray(scorer(inputs), dtype=np.float64)
        rows = np.arange(len(chunk))
        target = np.asarray(targets, dtype=np.int64)
        target_scores = scores[rows, target]
        tops.append(_top_k(scores, TOP_K))
        if negatives is not None:
            negs = negatives[start : start + batch_size]
            among = scores
            if getattr(scorer, "top_k_only", False):
                among = np.asarray(
                    scorer(inputs, np.column_stack([target, negs])), dtype=np.float64
                )
            sampled.append(
                metrics.ranks_from_scores(among[rows[:, None], negs], among[rows, target], rng)
            )
        others = scores.copy()
        others[rows, target] = np.nan  # the target is not its own competitor
        full.append(metrics.ranks_from_scores(others, target_scores, rng))
    empty = np.zeros(0, dtype=np.float64)
    return Ranked(
        users=users,
        full_ranks=np.concatenate(full) if full else empty,
        sampled_ranks=(np.concatenate(sampled) if sampled else empty)
        if negatives is not None
        else None,
        top=np.concatenate(tops) if tops else np.zeros((0, TOP_K), dtype=np.int64),
    )


def _top_k(scores: npt.NDArray[np.float64], k: int) -> IntArray:
    """Vocab indices of the ``k`` best scores per row (fewer when the catalogue is smaller)."""
    k = min(k, scores.shape[1] - FIRST_ITEM)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return part.astype(np.int64)


def evaluate_scorers(
    scorers: dict[str, Scorer],
    split: Split,
    protocol: ProtocolName,
    part: Part = "test",
    seed: int = 0,
    negatives: int = SAMPLED_NEGATIVES,
) -> dict[str, Any]:
    """Evaluate several scorers on the same users and candidates; returns metrics per scorer."""
    users = protocol_users(split, protocol, seed)
    negs = sample_negatives(split, users, negatives, seed) if protocol == "sampled" else None
    params: dict[str, Any] = {"name": protocol, "part": part, "seed": seed}
    if negs is not None:
        params |= {"negatives": int(negs.shape[1]), "max_users": SAMPLED_MAX_USERS}
    params["catalogue"] = split.vocab.size - FIRST_ITEM
    params["history_items_excluded"] = False
    results = {
        name: rank_heldout(scorer, split, users, part, negs, seed).report(
            protocol, split.vocab.size - FIRST_ITEM
        )
        for name, scorer in scorers.items()
    }
    return {"protocol": params, "results": results}


def torch_scorer(model: Any, max_len: int, threads: int | None = None) -> Scorer:
    """A scorer around ``SASRec.score_last`` (torch imported here, not at module level)."""
    import torch

    from recstream.model.sequences import pad_batch

    def score(
        seqs: Sequence[Encoded], candidates: IntArray | None = None
    ) -> npt.NDArray[np.floating[Any]]:
        batch = pad_batch(seqs, max_len)
        with torch.inference_mode():
            out = model.score_last(
                torch.from_numpy(batch.items),
                torch.from_numpy(batch.actions),
                torch.from_numpy(batch.words),
                torch.from_numpy(batch.lengths),
            )
        return np.asarray(out.numpy())

    if threads:
        torch.set_num_threads(threads)
    return score


class Validation:
    """A split's validation items as training (and ``combine``) score them: at most
    10,000 users (seeded) and their sampled negatives, drawn once for every model."""

    def __init__(self, split: Split, seed: int) -> None:
        self.split = split
        self.seed = seed
        self.users = choose_users(split.evaluable(), SAMPLED_MAX_USERS, seed)
        self.negatives = sample_negatives(split, self.users, seed=seed)

    def reports(self, model: Any, max_len: int) -> tuple[dict[str, float], dict[str, float]]:
        """The ``(sampled, full)`` reports of a torch model on the validation items."""
        ranked = rank_heldout(
            torch_scorer(model, max_len), self.split, self.users, "valid", self.negatives, self.seed
        )
        catalogue = self.split.vocab.size - FIRST_ITEM
        return ranked.report("sampled", catalogue), ranked.report("full", catalogue)


class OnnxScorer:
    """Runs an exported ``recs.onnx`` with onnxruntime (the artifact the worker serves).

    The graph returns only its top k (``top_items``, ``top_scores``), so scores
    come back as a ``[B, V]`` matrix that is -inf outside the top k: ranks past k
    are misses, which is exact for metrics at cut-offs up to k.  For the sampled
    protocol every non-candidate is passed in ``exclude`` so the top k are drawn
    from the candidates only.
    """

    top_k_only = True

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        from recstream.export.metadata import parse_metadata, takes_k

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = parse_metadata(props, "recs", str(path))
        self.vocab = self.meta.vocab
        self.size = len(self.vocab) + FIRST_ITEM
        self.top_k = self.meta.top_k
        #: Graphs exported since 2026-12-07 return as many items as a run asks for.
        self.takes_k = takes_k(i.name for i in self.session.get_inputs())

    def __call__(
        self, seqs: Sequence[Encoded], candidates: IntArray | None = None
    ) -> npt.NDArray[np.floating[Any]]:
        from recstream.model.sequences import pad_batch

        batch = pad_batch(seqs, self.meta.max_len)
        rows = len(seqs)
        if candidates is None:
            exclude = np.zeros((rows, 1), dtype=np.int64)  # index 0 is padding, -inf anyway
        else:
            keep = np.zeros((rows, self.size), dtype=bool)
            keep[:, :FIRST_ITEM] = True
            keep[np.arange(rows)[:, None], candidates] = True
            others = [np.flatnonzero(~row) for row in keep]
            width = max(1, max(len(o) for o in others))
            exclude = np.zeros((rows, width), dtype=np.int64)
            for r, o in enumerate(others):
                exclude[r, : len(o)] = o
        feeds = {
            "items": batch.items,
            "actions": batch.actions,
            "words": batch.words,
            "lengths": batch.lengths,
            "exclude": exclude,
        }
        if self.takes_k:  # every item the graph can return: the widest ranking
            feeds["slots"] = np.zeros(self.meta.top_k, dtype=np.bool_)
        top_items, top_scores = self.session.run(["top_items", "top_scores"], feeds)
        dense = np.full((rows, self.size), -np.inf, dtype=np.float64)
        np.put_along_axis(dense, np.asarray(top_items, dtype=np.int64), top_scores, axis=1)
        dense[:, :FIRST_ITEM] = -np.inf
        return dense


def is_onnx(path: Path) -> bool:
    """Whether a model path is an exported ONNX file rather than a checkpoint folder."""
    return path.suffix == ".onnx" and path.is_file()


def evaluate_with_baselines(
    scorer: Scorer, split: Split, protocol: ProtocolName, part: Part = "test", seed: int = 0
) -> dict[str, Any]:
    """The model's metrics at the top level, the protocol, and both baselines' metrics."""
    from recstream.model.baselines import Cooccurrence, MostPopular

    train = [split.train_seq(u) for u in range(len(split.users))]
    scorers: dict[str, Scorer] = {
        "model": scorer,
        MostPopular.name: MostPopular(train, split.vocab.size),
        Cooccurrence.name: Cooccurrence(train, split.vocab.size),
    }
    out = evaluate_scorers(scorers, split, protocol, part, seed)
    results = out["results"]
    return {
        **results.pop("model"),
        "protocol": out["protocol"],
        "baselines": results,
    }


def evaluate_model_on_file(
    model_path: Path,
    data: Path,
    fmt: str,
    protocol: ProtocolName,
    part: Part = "test",
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Load a checkpoint folder or ``.onnx`` file, split ``data`` the same way, evaluate.

    The data is encoded with the model's own vocabulary (unknown items become
    OOV); ``data_matches_training`` says whether ``data`` is the file the model
    was trained on (its held-out items were then never trained on).
    """
    from recstream.model.sequences import Vocab, data_fingerprint, load_histories
    from recstream.model.splits import split_histories

    scorer: Scorer
    if is_onnx(model_path):
        onnx_scorer = OnnxScorer(model_path, threads)
        scorer, vocab, with_searches = onnx_scorer, onnx_scorer.vocab, True
        trained_on = str(onnx_scorer.meta.values["data_fingerprint"])
        kind = f"onnx ({onnx_scorer.meta.variant}, top {onnx_scorer.top_k})"
    else:
        from recstream.model.sasrec import load_recs

        model, meta = load_recs(model_path)
        scorer = torch_scorer(model, int(meta["max_len"]), threads)
        vocab, with_searches = meta["vocab"], bool(meta["hparams"].get("use_side_info", True))
        trained_on = str(meta.get("data_fingerprint"))
        kind = "checkpoint"
    split = split_histories(load_histories(data, fmt, with_searches), vocab=Vocab(tuple(vocab)))
    report = evaluate_with_baselines(scorer, split, protocol, part, seed)
    report["protocol"]["model_kind"] = kind
    report["data_matches_training"] = trained_on == data_fingerprint([data], fmt)
    return report
