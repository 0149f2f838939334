"""Train the SASRec next-item recommender on an event log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream train recs``."""
    from recstream.model.adapters import FORMATS

    parser.add_argument("--data", type=Path, required=True, help="event log to learn from")
    parser.add_argument("--format", choices=FORMATS, required=True, help="log format")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--epochs", type=_positive_int, help="most epochs (default: 50, or 200 below 5,000 users)"
    )
    parser.add_argument("--max-len", type=_positive_int, default=50, help="tokens of history read")
    parser.add_argument("--dim", type=_positive_int, default=64, help="embedding size")
    parser.add_argument("--layers", type=_positive_int, default=2, help="Transformer layers")
    parser.add_argument("--heads", type=_positive_int, default=1, help="attention heads")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout rate")
    parser.add_argument(
        "--ffn-mult", type=_positive_int, default=1, help="feed-forward inner size / --dim"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument(
        "--cosine",
        action="store_true",
        help="decay the learning rate along a half cosine to 0 at the last of --epochs",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay"
    )
    parser.add_argument(
        "--ema-half-life",
        type=float,
        default=0.0,
        help="validate and save an exponential moving average of the weights whose "
        "steps' weights halve every this many epochs (0: the weights themselves)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        help="mean users per step; a step holds about batch-size x mean history tokens "
        "(default: 128, less on small logs)",
    )
    parser.add_argument(
        "--negatives",
        type=int,
        default=0,
        help="sampled-softmax negatives per batch (0: softmax over the full catalogue)",
    )
    parser.add_argument(
        "--bce-negatives",
        type=int,
        default=0,
        help="add a binary cross-entropy term against this many uniform negatives (0: off)",
    )
    parser.add_argument(
        "--bce-weight", type=float, default=1.0, help="weight of the --bce-negatives term"
    )
    parser.add_argument(
        "--no-item-bias", action="store_true", help="score items without a learned bias"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--max-items", type=_positive_int, help="keep the most frequent items; others become OOV"
    )
    parser.add_argument(
        "--patience", type=_positive_int, default=5, help="epochs without validation gain to stop"
    )
    parser.add_argument(
        "--no-side-info",
        action="store_true",
        help="items only: ignore action types and searches (ablation)",
    )
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train, write the checkpoint, print its validation metrics as JSON."""
    import sys

    from recstream.model.adapters import AdapterError
    from recstream.model.train_recs import TrainConfig, train_on_file

    if not args.data.exists():
        print(f"error: {args.data} does not exist", file=sys.stderr)
        return 2
    if (
        not 0.0 <= args.dropout < 1.0
        or args.lr <= 0
        or args.weight_decay < 0
        or args.bce_weight < 0
        or args.ema_half_life < 0
    ):
        print(
            "error: --dropout must be in [0, 1), --lr positive, "
            "--weight-decay, --bce-weight and --ema-half-life >= 0",
            file=sys.stderr,
        )
        return 2
    config = TrainConfig(
        epochs=args.epochs,
        max_len=args.max_len,
        dim=args.dim,
        layers=args.layers,
        heads=args.heads,
        dropout=args.dropout,
        ffn_mult=args.ffn_mult,
        lr=args.lr,
        cosine=args.cosine,
        weight_decay=args.weight_decay,
        negatives=max(args.negatives, 0),
        bce_negatives=max(args.bce_negatives, 0),
        bce_weight=args.bce_weight,
        item_bias=not args.no_item_bias,
        batch_size=args.batch_size,
        seed=args.seed,
        max_items=args.max_items,
        patience=args.patience,
        use_side_info=not args.no_side_info,
        threads=args.threads,
        ema_half_life=args.ema_half_life,
    )
    try:
        meta = train_on_file(args.data, args.format, args.out, config, args.resume, not args.quiet)
    except (AdapterError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {"out": str(args.out), "metrics": meta["metrics"], "training": meta["training"]}
    print(json.dumps(summary, indent=1))
    return 0
