"""Sentiment quality benchmark: our model vs VADER, TextBlob and TF-IDF+LR, and its speed.

On each data set's fixed held-out split (see ``recstream.model.review_adapters``)
it scores our one model (a checkpoint folder, or an exported ``sentiment.onnx``)
and the peers of ``recstream.model.sentiment_peers`` (lexicon peers on English
only; TF-IDF+LR trained on that data set's training split).  Then it measures our
model's serving throughput (reviews per CPU-second of the single-threaded process,
so other load on a shared machine does not distort it; wall-clock rate also
recorded): exported to ONNX with the export helper's exporter
and run by onnxruntime on 1 thread at batch 32, tokenization included, over the
held-out texts of all data sets mixed in a seeded shuffle (through torch when the
exporter is unavailable, and the output says so).

Writes ``benchmarks/results/sentiment_quality.json`` and ``.md`` and prints the
table.  ``--quick`` scores at most 300 held-out reviews per data set and trains
TF-IDF+LR on at most 3,000 reviews with a fixed C.

    python benchmarks/sentiment_quality.py --model models/sentiment
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstream.model.evaluate_sentiment import (
    ProbaFn,
    classification_report,
    evaluate_items,
    load_proba,
)
from recstream.model.review_adapters import (
    LabelledReview,
    load_reviews,
    train_test_split,
    train_validation_split,
)
from recstream.model.sentiment_peers import TextBlobPeer, TfidfLogRegPeer, VaderPeer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATASETS = (
    ("amazon_cells", "uci_sentiment/amazon_cells_labelled.txt", "uci", "en"),
    ("yelp", "uci_sentiment/yelp_labelled.txt", "uci", "en"),
    ("amazon_alexa", "amazon_alexa/amazon_alexa.tsv", "alexa", "en"),
    ("zh_shopping", "zh_shopping/online_shopping_10_cats.zip", "zh_shopping", "zh"),
)
QUICK_TEST = 300
QUICK_TRAIN = 3_000


def data_root(given: Path | None) -> Path:
    """``--data-root``, else ``RECSTREAM_DATA_ROOT``, else ``../shared/data`` beside the repo."""
    if given is not None:
        return given
    env = os.environ.get("RECSTREAM_DATA_ROOT")
    return Path(env) if env else REPO / ".." / "shared" / "data"


def _sample(items: list[LabelledReview], n: int) -> list[LabelledReview]:
    return items if len(items) <= n else random.Random(0).sample(items, n)


def _peer_report(
    predicted: Sequence[str], items: Sequence[LabelledReview], labels: Sequence[str]
) -> dict[str, Any]:
    report = classification_report([i.label for i in items], predicted, labels)
    groups = sorted({i.group for i in items if i.group is not None})
    if groups:
        report["by_group"] = {}
        for group in groups:
            chosen = [k for k, i in enumerate(items) if i.group == group]
            sub = classification_report(
                [items[k].label for k in chosen], [predicted[k] for k in chosen], labels
            )
            report["by_group"][group] = {k: sub[k] for k in ("n", "accuracy", "macro_f1")}
    return report


def score_dataset(
    name: str,
    path: Path,
    fmt: str,
    lang: str,
    proba: ProbaFn,
    quick: bool,
    seed_probas: Sequence[ProbaFn] = (),
) -> dict[str, Any]:
    """Our model and every applicable peer on one data set's held-out split.

    ``seed_probas``: the same training run with other seeds; with them, ``ours`` also
    holds the headline metric's spread over all seeds (``seed_spread``).
    """
    data = load_reviews(path, fmt)
    train, test = train_test_split(data)
    if quick:
        test = _sample(test, QUICK_TEST)
        train = _sample(train, QUICK_TRAIN)
    fit, validation = train_validation_split(train)
    texts = [i.review.text for i in test]
    methods: dict[str, Any] = {}
    started = time.perf_counter()
    methods["ours"] = evaluate_items(proba, test, data.labels)
    methods["ours"]["seconds"] = round(time.perf_counter() - started, 2)
    peers: list[Any] = [VaderPeer(), TextBlobPeer()] if lang == "en" else []
    for peer in peers:
        started = time.perf_counter()
        methods[peer.name] = _peer_report(peer.predict(texts, data.labels), test, data.labels)
        methods[peer.name]["seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    tfidf = TfidfLogRegPeer(grid=(2.0,) if quick or len(fit) > 20_000 else (0.5, 2.0, 8.0))
    tfidf.fit(
        [i.review.text for i in fit],
        [i.label for i in fit],
        [i.review.text for i in validation],
        [i.label for i in validation],
    )
    methods[tfidf.name] = _peer_report(tfidf.predict(texts, data.labels), test, data.labels)
    methods[tfidf.name]["C"] = tfidf.chosen_c
    methods[tfidf.name]["seconds"] = round(time.perf_counter() - started, 2)
    metric = "macro_f1" if fmt == "alexa" else "accuracy"
    if seed_probas:
        values = [methods["ours"][metric]]
        values += [evaluate_items(p, test, data.labels)[metric] for p in seed_probas]
        methods["ours"]["seeds"] = seed_spread(values)
    return {
        "data": name,
        "file": str(path),
        "labels": list(data.labels),
        "n_train": len(train),
        "n_test": len(test),
        "headline_metric": metric,
        "methods": methods,
        "verdict": verdict(methods, metric),
    }


def seed_spread(values: Sequence[float]) -> dict[str, Any]:
    """One metric over training seeds: the values, mean, sample standard deviation, range."""
    return {
        "values": [round(v, 4) for v in values],
        "mean": round(statistics.fmean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def verdict(methods: dict[str, Any], metric: str) -> dict[str, Any]:
    """Best peer on ``metric`` and our margin over it (negative: the peer wins); with
    several seeds also the margin of our mean over them."""
    peers = {k: v[metric] for k, v in methods.items() if k != "ours"}
    best_peer = max(peers, key=lambda k: peers[k])
    margin = round(methods["ours"][metric] - peers[best_peer], 4)
    result = {
        "metric": metric,
        "best_peer": best_peer,
        "best_peer_value": peers[best_peer],
        "ours": methods["ours"][metric],
        "margin": margin,
        "ours_wins": margin > 0,
    }
    seeds = methods["ours"].get("seeds")
    if seeds is not None:
        mean_margin = round(seeds["mean"] - peers[best_peer], 4)
        result |= {"mean_margin": mean_margin, "mean_wins": mean_margin > 0}
    return result


def throughput(model_path: Path, texts: Sequence[str], seconds: float = 10.0) -> dict[str, Any]:
    """Reviews per CPU-second at batch 32 on 1 thread, tokenization included.

    Runs until the process has used ``seconds`` of CPU time.
    """
    import torch

    torch.set_num_threads(1)
    onnx_file: Path | None = model_path if model_path.suffix == ".onnx" else None
    note = ""
    tmp = tempfile.TemporaryDirectory(prefix="sentiment-bench-")
    if onnx_file is None:
        try:
            from recstream.export.onnx_export import export_sentiment
            from recstream.model.sentiment import load_sentiment

            model, meta = load_sentiment(model_path)
            written = export_sentiment(model, meta, Path(tmp.name), ("fp32",))
            onnx_file = next(w.path for w in written if w.written)
        except (ImportError, StopIteration, RuntimeError) as exc:
            note = f"ONNX export unavailable ({exc}); measured through torch instead"
    if onnx_file is not None:
        from recstream.model.evaluate_sentiment import onnx_proba

        proba, _ = onnx_proba(onnx_file, batch_size=32, threads=1)
        engine = "onnxruntime CPUExecutionProvider, 1 thread"
    else:
        proba, _ = load_proba(model_path, batch_size=32)
        engine = "torch (1 thread)"
    batches = [list(texts[i : i + 32]) for i in range(0, len(texts) - 31, 32)]
    proba(batches[0])  # warm-up
    done = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    while time.process_time() - cpu_started < seconds:
        for batch in batches:
            proba(batch)
            done += len(batch)
            if time.process_time() - cpu_started >= seconds:
                break
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    tmp.cleanup()
    return {
        "engine": engine,
        "batch_size": 32,
        "reviews": done,
        "cpu_seconds": round(cpu, 2),
        "wall_seconds": round(elapsed, 2),
        # One thread: the process's CPU time is time on one core, whatever else runs.
        "reviews_per_cpu_second": round(done / cpu, 1),
        "reviews_per_wall_second": round(done / elapsed, 1),
        "note": note or "tokenization included; all held-out texts mixed in a seeded shuffle",
    }


def _training_seed(meta: dict[str, Any]) -> int | str:
    """The ``--seed`` a checkpoint was trained with ("?" when its record lacks one)."""
    training = meta.get("training")
    seed = training.get("seed") if isinstance(training, dict) else None
    return seed if isinstance(seed, int) else "?"


def lexicon_use(meta: dict[str, Any]) -> str:
    """How the model used a sentiment lexicon, from its checkpoint or ONNX metadata."""
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict):
        return "unknown (no tokenizer in the model metadata)"
    lexicon = tokenizer.get("lexicon")
    if not isinstance(lexicon, dict):
        return "none"
    return (
        f"rule-adjusted sums of {len(lexicon.get('valence', {}))} word valences as a model "
        "input (the VADER lexicon file read from the installed package at training time)"
    )


def to_markdown(result: dict[str, Any]) -> str:
    """The results table (and verdicts) as Markdown."""
    lines = [
        "# Sentiment quality: held-out 20 % of each data set",
        "",
        f"Model: `{result['model']}`" + (" (quick run)" if result["quick"] else ""),
        "",
        f"Lexicon use by our model: {result['model_lexicon']}.",
        "",
        "| data set | n test | method | accuracy | macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for ds in result["datasets"]:
        for method, rep in ds["methods"].items():
            lines.append(
                f"| {ds['data']} | {ds['n_test']} | {method} | {rep['accuracy']:.4f} "
                f"| {rep['macro_f1']:.4f} |"
            )
    lines += [
        "",
        "| data set | metric | ours | best peer | margin | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for ds in result["datasets"]:
        v = ds["verdict"]
        word = "ours wins" if v["ours_wins"] else f"**{v['best_peer']} wins by {-v['margin']:.4f}**"
        lines.append(
            f"| {ds['data']} | {v['metric']} | {v['ours']:.4f} | {v['best_peer']} "
            f"{v['best_peer_value']:.4f} | {v['margin']:+.4f} | {word} |"
        )
    if any("seeds" in ds["methods"]["ours"] for ds in result["datasets"]):
        lines += [
            "",
            f"Over training seeds ({', '.join(map(str, result['seeds']))}; the first is the "
            "model above):",
            "",
            "| data set | metric | ours, per seed | mean ± sd | best peer | mean's margin |",
            "|---|---|---|---|---|---|",
        ]
        for ds in result["datasets"]:
            spread, v = ds["methods"]["ours"]["seeds"], ds["verdict"]
            per_seed = " / ".join(f"{x:.4f}" for x in spread["values"])
            lines.append(
                f"| {ds['data']} | {v['metric']} | {per_seed} | {spread['mean']:.4f} ± "
                f"{spread['sd']:.4f} | {v['best_peer']} {v['best_peer_value']:.4f} "
                f"| {v['mean_margin']:+.4f} |"
            )
    for ds in result["datasets"]:
        groups = ds["methods"]["ours"].get("by_group")
        if groups:
            lines += ["", f"Per category ({ds['data']}, accuracy: ours / TF-IDF+LR):", ""]
            peer = ds["methods"]["TF-IDF+LR"].get("by_group", {})
            lines += ["| category | n | ours | TF-IDF+LR |", "|---|---|---|---|"]
            for group, row in groups.items():
                other = peer.get(group, {}).get("accuracy", float("nan"))
                lines.append(f"| {group} | {row['n']} | {row['accuracy']:.4f} | {other:.4f} |")
    speed = result["throughput"]
    lines += [
        "",
        f"Throughput: {speed['reviews_per_cpu_second']:.0f} reviews per CPU-second of one core "
        f"({speed['reviews_per_wall_second']:.0f} per wall-clock second on this shared machine; "
        f"{speed['engine']}, batch {speed['batch_size']}; {speed['note']})",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="checkpoint folder or sentiment.onnx"
    )
    parser.add_argument(
        "--seed-model",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint of the same training command with another --seed (repeatable): "
        "the table adds the spread over seeds",
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small run (see module docstring)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--speed-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    root = data_root(args.data_root)
    if not root.is_dir():
        print(
            f"data folder {root} not found (../shared/data); nothing to benchmark", file=sys.stderr
        )
        return 2
    proba, meta = load_proba(args.model)
    seed_models = [load_proba(path) for path in args.seed_model]
    seed_probas = [seed_proba for seed_proba, _ in seed_models]
    seeds = [_training_seed(m) for m in (meta, *(m for _, m in seed_models))]
    datasets = []
    held_out_texts: list[str] = []
    for name, rel, fmt, lang in DATASETS:
        print(f"scoring {name} ...", file=sys.stderr)
        datasets.append(score_dataset(name, root / rel, fmt, lang, proba, args.quick, seed_probas))
        _, test = train_test_split(load_reviews(root / rel, fmt))
        held_out_texts.extend(i.review.text for i in test)
    random.Random(0).shuffle(held_out_texts)
    speed = throughput(args.model, held_out_texts, args.speed_seconds)
    result = {
        "model": str(args.model),
        "model_trained_at": meta.get("trained_at"),
        "model_hparams": meta.get("hparams"),
        "model_lexicon": lexicon_use(meta),
        "seed_models": [str(path) for path in args.seed_model],
        "seeds": seeds,
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "datasets": datasets,
        "throughput": speed,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sentiment_quality_quick" if args.quick else "sentiment_quality"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    markdown = to_markdown(result)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
