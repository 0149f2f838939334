"""Export trained checkpoints to ONNX (recs.onnx, sentiment.onnx, variants) with parity checks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recstream.export.metadata import DEFAULT_TOP_K, VARIANTS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recs", type=Path, help="recommender checkpoint folder (recs.pt/json)")
    parser.add_argument(
        "--sentiment", type=Path, help="sentiment checkpoint folder (sentiment.pt/json)"
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="output folder")
    parser.add_argument(
        "--variants",
        default="fp32,int8",
        help="comma-separated: fp32 (always written), int8 (CPU; served there by default), "
        "fp16 (CUDA); e.g. fp32,int8,fp16",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help="items the recommender graph returns (top-k)",
    )


def _variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def run(args: argparse.Namespace) -> int:
    """Export what was asked; returns 1 if any fp32 export was refused or failed."""
    if args.recs is None and args.sentiment is None:
        print("nothing to export: give --recs and/or --sentiment checkpoint folders")
        return 2
    if args.top_k < 1:
        print("--top-k must be >= 1")
        return 2
    variant_names = _variants(args.variants)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("recstream").setLevel(logging.INFO)

    import torch

    from recstream.export.onnx_export import ExportError, export_recs, export_sentiment
    from recstream.export.parity import ParityError

    torch.set_num_threads(1)
    status = 0
    jobs = []
    if args.recs is not None:
        jobs.append(("recs", args.recs))
    if args.sentiment is not None:
        jobs.append(("sentiment", args.sentiment))
    for kind, folder in jobs:
        try:
            if kind == "recs":
                from recstream.model.sasrec import load_recs

                model, meta = load_recs(folder)
                written = export_recs(model, meta, args.out, variant_names, args.top_k)
            else:
                from recstream.model.sentiment import load_sentiment

                encoder, meta = load_sentiment(folder)
                written = export_sentiment(encoder, meta, args.out, variant_names)
        except (ExportError, ParityError, OSError, ValueError, KeyError, RuntimeError) as exc:
            # RuntimeError: torch's state_dict mismatch (checkpoint of another model version)
            print(f"{kind}: export refused: {exc}")
            status = 1
            continue
        for result in written:
            print(result.describe())
    return status
