"""Combine trained recommenders (same log, other seeds) into one ensemble checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream combine recs``."""
    from recstream.model.adapters import FORMATS

    parser.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="checkpoint folder of `recstream train recs` (give two or more)",
    )
    parser.add_argument("--data", type=Path, required=True, help="the log the members learned")
    parser.add_argument("--format", choices=FORMATS, required=True, help="log format")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation sample")


def run(args: argparse.Namespace) -> int:
    """Combine, validate, write the checkpoint, print its validation metrics as JSON."""
    import sys

    from recstream.model.adapters import AdapterError
    from recstream.model.ensemble_recs import combine

    try:
        meta = combine(args.member, args.data, args.format, args.out, args.seed)
    except (AdapterError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "metrics": meta["metrics"]}, indent=1))
    return 0
