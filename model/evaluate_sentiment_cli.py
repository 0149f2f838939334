"""Evaluate a sentiment model on the held-out split of labelled review files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recstream.model.review_adapters import add_source_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream evaluate sentiment``."""
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="checkpoint folder (sentiment.json/.pt) or exported sentiment.onnx",
    )
    add_source_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['data']} ({report['format']}, held-out n={report['n']}): "
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
    ]
    for label, row in report["per_label"].items():
        lines.append(
            f"  {label:<9} precision {row['precision']:.4f}  recall {row['recall']:.4f}"
            f"  F1 {row['f1']:.4f}  support {row['support']}"
        )
    labels = report["confusion"]["labels"]
    lines.append("  confusion (rows true, columns predicted): " + " ".join(labels))
    for label, row in zip(labels, report["confusion"]["matrix"], strict=True):
        lines.append(f"    {label:<9} " + " ".join(f"{n:>6}" for n in row))
    for group, row in report.get("by_group", {}).items():
        lines.append(
            f"  {group}: n={row['n']} accuracy {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score the model on each file's fixed 20 % held-out split."""
    from recstream.model.evaluate_sentiment import evaluate_held_out, load_proba
    from recstream.model.review_adapters import load_reviews

    if len(args.data) != len(args.format):
        raise SystemExit("give one --format per --data, in the same order")
    proba, _ = load_proba(args.model)
    reports = [
        evaluate_held_out(proba, load_reviews(path, fmt))
        for path, fmt in zip(args.data, args.format, strict=True)
    ]
    if args.json:
        print(
            json.dumps({"model": str(args.model), "reports": reports}, indent=1, ensure_ascii=False)
        )
    else:
        print("\n".join(_table(r) for r in reports))
    return 0
