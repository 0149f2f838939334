"""Evaluate a recommender (checkpoint folder or .onnx) against two baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream evaluate recs``."""
    from recstream.model.adapters import FORMATS

    parser.add_argument(
        "--model", type=Path, required=True, help="checkpoint folder (recs.json) or exported .onnx"
    )
    parser.add_argument("--data", type=Path, required=True, help="event log to evaluate on")
    parser.add_argument("--format", choices=FORMATS, required=True, help="log format")
    parser.add_argument(
        "--protocol",
        choices=("sampled", "full"),
        default="sampled",
        help="sampled: 100 negatives per user (SASRec paper); full: whole catalogue",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of user and negative sampling")
    parser.add_argument(
        "--part", choices=("test", "valid"), default="test", help="held-out item to rank"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the model")
    parser.add_argument("--json", action="store_true", help="print one JSON object (else a table)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics."""
    from recstream.model.adapters import AdapterError
    from recstream.model.evaluate_recs import evaluate_model_on_file

    if not args.data.exists():
        print(f"error: {args.data} does not exist", file=sys.stderr)
        return 2
    if not args.model.exists():
        print(f"error: {args.model} does not exist", file=sys.stderr)
        return 2
    try:
        report = evaluate_model_on_file(
            args.model, args.data, args.format, args.protocol, args.part, args.seed, args.threads
        )
    except (AdapterError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    names = (
        "hr@5",
        "hr@10",
        "hr@20",
        "ndcg@5",
        "ndcg@10",
        "ndcg@20",
        "mrr@20",
        "coverage@10",
        "gini@10",
    )
    rows = {"model": report, **report["baselines"]}
    print(f"protocol: {json.dumps(report['protocol'])}  users: {report['users']}")
    print(f"{'scorer':<14}" + "".join(f"{n:>12}" for n in names))
    for name, values in rows.items():
        print(f"{name:<14}" + "".join(f"{values[n]:>12.4f}" for n in names))
    return 0
