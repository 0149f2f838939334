"""Training the SASRec recommender on an event log.

One pass (epoch) shows every training user once: the last ``max_len + 1``
tokens of their training part become an input and, shifted by one, the item to
predict at every position, with cross-entropy over the full catalogue (or a
sampled softmax, ``negatives``), optionally plus a binary cross-entropy
against uniform negatives (``bce_negatives``, ``bce_weight``), at a constant
learning rate or one decaying along a half cosine (``cosine``), optionally keeping an
exponential moving average of the weights (``ema_half_life``, :class:`WeightAverage`),
which is then what is validated and saved.  Batches group
users of similar history length (:func:`bucketed_batches`) and are padded to
their longest history only, which saves most of the encoder's work on
short-history logs.  After
each epoch the model is scored on the validation items (sampled and full
protocols); the best epoch by sampled validation NDCG@10 is kept as the
checkpoint, and training stops after ``patience`` epochs without improvement.

The output folder holds ``recs.pt`` + ``recs.json`` (the best model),
``train_state.pt`` (the last epoch's model, optimiser and RNG states, for
``--resume``) and ``tensorboard/`` (loss and validation metrics).
Runs are deterministic for a given ``seed`` and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recstream.model.checkpoint import save_checkpoint
from recstream.model.evaluate_recs import Validation
from recstream.model.features import FIRST_ITEM
from recstream.model.sasrec import CHECKPOINT_NAME, SASRec
from recstream.model.sequences import (
    IntArray,
    data_fingerprint,
    load_histories,
    training_batch,
)
from recstream.model.splits import (
    Split,
    split_histories,
)
from recstream.model.weight_average import WeightAverage
from recstream.streams.scoring import Token

STATE_FILE = "train_state.pt"
#: Validation metric that selects the best epoch.
SELECT_METRIC = "ndcg@10"
#: Batches whose users are sorted by length together (see :func:`bucketed_batches`).
BUCKET_POOL = 50


@dataclass
class TrainConfig:
    """Training options; ``None`` means "choose from the data size" (see :func:`resolve`)."""

    epochs: int | None = None
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.3
    ffn_mult: int = 1
    lr: float = 1e-3
    cosine: bool = False
    weight_decay: float = 0.0
    negatives: int = 0
    bce_negatives: int = 0
    bce_weight: float = 1.0
    item_bias: bool = True
    batch_size: int | None = None
    seed: int = 0
    max_items: int | None = None
    patience: int = 5
    use_side_info: bool = True
    threads: int | None = None
    ema_half_life: float = 0.0


def resolve(config: TrainConfig, n_train_users: int) -> TrainConfig:
    """Fill data-size defaults: small logs get smaller batches and more epochs."""
    small = n_train_users < 5_000
    batch = config.batch_size or (32 if n_train_users < 1_000 else 64 if small else 128)
    epochs = config.epochs or (200 if small else 50)
    return TrainConfig(**{**asdict(config), "batch_size": batch, "epochs": epochs})


def train_on_file(
    path: Path,
    fmt: str,
    out: Path,
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from a log file in one of the adapters' formats; returns the checkpoint meta."""
    histories = load_histories(path, fmt, with_searches=config.use_side_info)
    return train(histories, data_fingerprint([path], fmt), out, config, resume, progress)


def _trainable(split: Split) -> list[int]:
    """Users whose training part has at least one next-item target."""
    keep = []
    for user in range(len(split.users)):
        seq = split.train_seq(user)
        if len(seq) >= 2 and bool((seq.items[1:] >= FIRST_ITEM).any()):
            keep.append(user)
    return keep


def train(
    histories: Mapping[str, Sequence[Token]],
    fingerprint: str,
    out: Path,
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on user histories, write the checkpoint to ``out``; returns its meta."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    split = split_histories(histories, config.max_items)
    train_users = _trainable(split)
    if not train_users:
        raise ValueError("no user has two or more tokens to learn from")
    config = resolve(config, len(train_users))
    assert config.epochs is not None and config.batch_size is not None
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    hparams: dict[str, Any] = {
        "n_items": split.vocab.size,
        "max_len": config.max_len,
        "dim": config.dim,
        "layers": config.layers,
        "heads": config.heads,
        "dropout": config.dropout,
        "use_side_info": config.use_side_info,
        "ffn_mult": config.ffn_mult,
        "item_bias": config.item_bias,
    }
    model = SASRec(**hparams)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    validation = Validation(split, config.seed)
    state: dict[str, Any] = {
        "epoch": 0,
        "best": -1.0,
        "best_epoch": 0,
        "bad_epochs": 0,
        "seconds": 0.0,
    }
    average = WeightAverage(model, config.ema_half_life) if config.ema_half_life else None
    if resume:
        state = _restore(out, model, optimizer, fingerprint, hparams, average)
    # What is validated and saved: the average of the weights, or the weights.
    kept = model if average is None else average.model
    writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    meta: dict[str, Any] = {}
    try:
        while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
            epoch = state["epoch"] + 1
            started, cpu_started = time.perf_counter(), time.process_time()
            loss = _one_epoch(
                model, optimizer, split, train_users, config, epoch, progress, average
            )
            state["seconds"] += time.perf_counter() - started
            state["cpu_seconds"] = state.get("cpu_seconds", 0.0) + time.process_time() - cpu_started
            kept.eval()
            sampled, full = validation.reports(kept, config.max_len)
            writer.add_scalar("train/loss", loss, epoch)
            for name, value in sampled.items():
                writer.add_scalar(f"valid_sampled/{name}", value, epoch)
            for name, value in full.items():
                writer.add_scalar(f"valid_full/{name}", value, epoch)
            writer.flush()
            if progress:
                tqdm.write(
                    f"epoch {epoch}: loss {loss:.4f}  valid sampled hr@10 {sampled['hr@10']:.4f} "
                    f"ndcg@10 {sampled['ndcg@10']:.4f}  full ndcg@10 {full['ndcg@10']:.4f}"
                )
            state["epoch"] = epoch
            if sampled[SELECT_METRIC] > state["best"]:
                state |= {"best": sampled[SELECT_METRIC], "best_epoch": epoch, "bad_epochs": 0}
                meta = _meta(split, config, hparams, fingerprint, epoch, state, sampled, full, loss)
                save_checkpoint(out, CHECKPOINT_NAME, kept, meta)
            else:
                state["bad_epochs"] += 1
            _save_state(out, model, optimizer, fingerprint, hparams, state, average)
    finally:
        writer.close()
    if not meta:  # resumed after the last improvement: the best checkpoint is already on disk
        from recstream.model.checkpoint import load_meta

        meta = load_meta(out, CHECKPOINT_NAME)
    return meta


def _one_epoch(
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    split: Split,
    train_users: list[int],
    config: TrainConfig,
    epoch: int,
    progress: bool,
    average: WeightAverage | None = None,
) -> float:
    """One shuffled pass over the training users; returns the mean loss."""
    assert config.batch_size is not None
    model.train()
    rng = np.random.default_rng([config.seed, epoch])
    seqs = [split.train_seq(int(u)) for u in rng.permutation(train_users)]
    batches = bucketed_batches(
        [min(len(s), config.max_len + 1) for s in seqs], config.batch_size, rng
    )
    total, seen = 0.0, 0
    bar = tqdm(
        batches,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=2.0,
    )
    started = time.perf_counter()
    for n, rows in enumerate(bar, start=1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch - 1 + (n - 1) / len(batches))
        batch, targets = training_batch([seqs[r] for r in rows], config.max_len)
        loss = model.loss(
            torch.from_numpy(batch.items),
            torch.from_numpy(batch.actions),
            torch.from_numpy(batch.words),
            torch.from_numpy(batch.lengths),
            torch.from_numpy(targets),
            config.negatives,
            config.bce_negatives,
            config.bce_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model, len(batches))
        total += float(loss.detach())
        seen += len(rows)
        users_per_s = seen / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{total / n:.4f}", users_s=f"{users_per_s:.0f}")
    return total / max(len(batches), 1)


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The step's learning rate after ``progress`` epochs (fractional).

    Constant ``lr``, or with ``cosine`` a half cosine from ``lr`` down to 0 at
    the end of the last planned epoch (``epochs``), so the final epochs take
    small steps; it depends on the epoch count only, so ``--resume`` follows it.
    """
    if not config.cosine or not config.epochs:
        return config.lr
    done = min(max(progress / config.epochs, 0.0), 1.0)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, pool: int = BUCKET_POOL
) -> list[IntArray]:
    """Batches of row indices of similar lengths holding about the same number of tokens.

    Rows are taken in their (already shuffled) order ``pool`` batches at a
    time and sorted by length within that window; each window is cut into
    batches of at most ``batch_size * mean length`` padded tokens (so many
    short histories share a batch, a few long ones fill another, and every
    step learns from a similar number of positions).  The batches of all
    windows are then shuffled.  Every row lands in exactly one batch.  A batch
    is padded to its longest row only, so grouping similar lengths saves most
    of the encoder's work on padding.
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    budget = max(1, round(batch_size * float(lengths_arr.mean()))) if len(lengths_arr) else 1
    window = batch_size * max(pool, 1)
    batches: list[IntArray] = []
    for start in range(0, len(lengths_arr), window):
        rows = np.arange(start, min(start + window, len(lengths_arr)), dtype=np.int64)
        rows = rows[np.argsort(lengths_arr[rows], kind="stable")]
        first = 0
        for n in range(1, len(rows) + 1):
            if n == len(rows) or (n + 1 - first) * int(lengths_arr[rows[n]]) > budget:
                batches.append(rows[first:n])
                first = n
    return [batches[i] for i in rng.permutation(len(batches))]


def _meta(
    split: Split,
    config: TrainConfig,
    hparams: dict[str, Any],
    fingerprint: str,
    epoch: int,
    state: dict[str, Any],
    sampled: dict[str, float],
    full: dict[str, float],
    loss: float,
) -> dict[str, Any]:
    return {
        "kind": "recs",
        "hparams": hparams,
        "vocab": list(split.vocab.items),
        "popular": split.popular(100),
        "max_len": config.max_len,
        "data_fingerprint": fingerprint,
        "metrics": {"valid_sampled": sampled, "valid_full": full, "train_loss": round(loss, 4)},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            **{f.name: getattr(config, f.name) for f in fields(config)},
            "best_epoch": epoch,
            "train_seconds": round(state["seconds"], 1),
            "train_cpu_seconds": round(state.get("cpu_seconds", 0.0), 1),
        },
    }


def _save_state(
    out: Path,
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    fingerprint: str,
    hparams: dict[str, Any],
    state: dict[str, Any],
    average: WeightAverage | None = None,
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "fingerprint": fingerprint,
        "hparams": hparams,
        "state": state,
    }
    if average is not None:
        payload["average"] = average.model.state_dict()
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out / STATE_FILE)


def _restore(
    out: Path,
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    fingerprint: str,
    hparams: dict[str, Any],
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {STATE_FILE} in {out}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["fingerprint"] != fingerprint:
        raise ValueError(f"--resume: {out} was trained on different data")
    if payload["hparams"] != hparams:
        raise ValueError(f"--resume: {out} was trained with {payload['hparams']}, not {hparams}")
    model.load_state_dict(payload["model"])
    if average is not None:
        if "average" not in payload:
            raise ValueError(f"--resume: {out} was trained without a weight average")
        average.model.load_state_dict(payload["average"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    state: dict[str, Any] = payload["state"]
    return state
