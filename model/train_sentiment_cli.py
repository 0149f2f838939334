"""Train the review sentiment model (English + Chinese) from labelled review files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recstream.model.review_adapters import add_source_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream train sentiment``."""
    add_source_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--epochs", type=int, default=6, help="most epochs (early stopping)")
    parser.add_argument(
        "--patience", type=int, default=2, help="epochs without validation gain before stopping"
    )
    parser.add_argument("--max-len", type=int, default=256, help="characters kept per review")
    parser.add_argument("--char-dim", type=int, default=32, help="character embedding size")
    parser.add_argument("--dim", type=int, default=64, help="Transformer width")
    parser.add_argument("--layers", type=int, default=1, help="Transformer blocks")
    parser.add_argument(
        "--ngram-buckets",
        type=int,
        default=1 << 14,
        help="hash buckets shared by the character n-grams of the Transformer input",
    )
    parser.add_argument("--ngram-max", type=int, default=3, help="longest hashed character n-gram")
    parser.add_argument(
        "--word-buckets",
        type=int,
        default=1 << 21,
        help="hash buckets of the linear bag-of-n-grams path (0 turns it off)",
    )
    parser.add_argument(
        "--word-decay", type=float, default=0.0, help="AdamW weight decay of the word path"
    )
    parser.add_argument(
        "--word-lr", type=float, default=1e-2, help="peak learning rate of the word path"
    )
    parser.add_argument(
        "--linear-ngrams",
        type=int,
        default=3,
        help="also feed character n-grams up to this size to the linear path (0: none)",
    )
    parser.add_argument(
        "--linear-epochs",
        type=int,
        default=2,
        help="first epochs that fit the linear paths alone, before the Transformer joins",
    )
    parser.add_argument(
        "--ema-half-life",
        type=float,
        default=0.0,
        help="validate and keep an exponential moving average of the weights whose steps' "
        "weights halve every this many epochs (0: the weights themselves)",
    )
    parser.add_argument(
        "--class-weight-power",
        type=float,
        default=0.5,
        help="class weights within a source are (balanced weight) ** this (0: unweighted)",
    )
    parser.add_argument(
        "--polarity-power",
        type=float,
        default=1.0,
        help="the linear path's hashed features weigh idf x (their log-count ratio "
        "between labels) ** this (0: idf alone)",
    )
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--no-lexicon",
        action="store_true",
        help="no lexicon scores (the model's lexicon input is then all zeros)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="cap each split of each source (quick experiments)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train and print the held-out metrics summary as JSON."""
    from recstream.model.train_sentiment import TrainConfig, train_sentiment

    if len(args.data) != len(args.format):
        raise SystemExit("give one --format per --data, in the same order")
    config = TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        max_len=args.max_len,
        char_dim=args.char_dim,
        dim=args.dim,
        layers=args.layers,
        ngram_buckets=args.ngram_buckets,
        ngram_max=args.ngram_max,
        word_buckets=args.word_buckets,
        word_decay=args.word_decay,
        linear_ngrams=args.linear_ngrams,
        word_lr=args.word_lr,
        linear_epochs=args.linear_epochs,
        dropout=args.dropout,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        lexicon=not args.no_lexicon,
        limit_per_source=args.limit,
        progress=not args.quiet,
        ema_half_life=args.ema_half_life,
        class_weight_power=args.class_weight_power,
        polarity_power=args.polarity_power,
    )
    meta = train_sentiment(list(zip(args.data, args.format, strict=True)), args.out, config)
    summary = {
        "out": str(args.out),
        "best_epoch": meta["metrics"]["best_epoch"],
        "validation_mean_macro_f1": meta["metrics"]["validation"]["mean_macro_f1"],
        "test": {
            name: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
            for name, r in meta["metrics"]["test"]["sources"].items()
        },
        "train_seconds": meta["training"]["train_seconds"],
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0
