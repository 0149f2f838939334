"""Next-item quality on every shared data set: SASRec vs most-popular vs co-occurrence.

    python benchmarks/recs_quality.py            # full configuration (Games takes long)
    python benchmarks/recs_quality.py --quick    # small configuration, minutes
                                                 # (writes recs_quality_quick.json / .md)
    python benchmarks/recs_quality.py --only games --reuse

For each data set it trains a model (``recstream.model.train_recs``) into
``runs/recs_quality/<name>/``, evaluates it with both protocols (sampled: 100
negatives, 10,000 users; full: the whole catalogue) against the two baselines,
and on logs with searches also trains an items-only model (the side-information
ablation).  Results go to ``benchmarks/results/recs_quality.json`` and ``.md``.
``--reuse`` skips training where a checkpoint of the same data and settings exists.
On Games it also trains a second model with another seed and evaluates the ensemble
of the two (``recstream combine recs``).
Data come from ``../shared/data`` (or ``RECSTREAM_DATA_ROOT``); missing sets are
skipped with a note.  The shop log is generated with ``recstream.model.shoplog``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "runs" / "recs_quality"
METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@20", "coverage@10", "gini@10")


@dataclass
class DataSet:
    """One benchmark data set, with its published figure when there is one."""

    name: str
    path: Path
    fmt: str
    searches: bool = False
    published: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    #: Seeds of more models of the same configuration, combined with the first into an
    #: ensemble (``recstream combine recs``) that is evaluated too.
    ensemble_seeds: tuple[int, ...] = ()


def data_root() -> Path:
    env = os.environ.get("RECSTREAM_DATA_ROOT")
    return Path(env) if env else REPO / ".." / "shared" / "data"


def data_sets(quick: bool) -> list[DataSet]:
    root = data_root()
    games_config: dict[str, Any] = {
        "dropout": 0.5,
        "patience": 3,
        "epochs": 28,
        "batch_size": 64,
        "lr": 4e-3,
        "ema_half_life": 4.0,
    }
    if quick:
        games_config = {"dim": 32, "epochs": 2}
    return [
        DataSet(
            "games",
            root / "sasrec_games" / "Video.txt",
            "sasrec",
            published={
                "sampled hr@10 (SASRec paper)": 0.7410,
                "sampled ndcg@10 (SASRec paper)": 0.5360,
                "sampled hr@10 (RecBole SASRec, CE)": 0.7313,
                "sampled ndcg@10 (RecBole SASRec, CE)": 0.5323,
                "full hr@10 (RecBole SASRec, CE)": 0.0856,
                "full ndcg@10 (RecBole SASRec, CE)": 0.0412,
            },
            config=games_config,
            ensemble_seeds=(1,),
        ),
        DataSet(
            "diginetica", root / "diginetica_sample" / "sample_train-item-views.csv", "diginetica"
        ),
        DataSet("rees46", root / "rees46_sample" / "2019-Oct-sample.csv", "rees46"),
        DataSet(
            "ubi", root / "esci_ubi_search" / "ubi_queries_events.ndjson", "ubi", searches=True
        ),
    ]


def shop_log(quick: bool) -> DataSet:
    """Generate the built-in shop log (deterministic) under ``runs/``."""
    from recstream.model.shoplog import generate, write_log

    users, items = (300, 120) if quick else (1_000, 500)
    path = RUNS / f"shoplog-{users}u-{items}i-7d-seed0.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_log(path, generate(users=users, items=items, days=7, seed=0))
    return DataSet("shoplog", path, "jsonl", searches=True)


def train_and_evaluate(
    data: DataSet, side_info: bool, quick: bool, reuse: bool, threads: int, seed: int | None = None
) -> dict[str, Any]:
    """Train (unless reusable) and evaluate one model with both protocols.

    ``seed`` (an ensemble member's) replaces the configuration's seed.
    """
    from recstream.model.checkpoint import load_meta
    from recstream.model.sequences import data_fingerprint
    from recstream.model.train_recs import TrainConfig, train_on_file

    options = dict(data.config) | ({} if seed is None else {"seed": seed})
    config = TrainConfig(use_side_info=side_info, threads=threads, **options)
    if quick:
        config.epochs = config.epochs or 10
    name = data.name if side_info else f"{data.name}-items-only"
    out = RUNS / (name if seed is None else f"{name}-seed{seed}") / ("quick" if quick else "full")
    fingerprint = data_fingerprint([data.path], data.fmt)
    meta: dict[str, Any] | None = None
    if reuse and (out / "recs.json").is_file():
        old = load_meta(out, "recs")
        wanted = {k: v for k, v in asdict(config).items() if v is not None}
        same = all(old.get("training", {}).get(k) == v for k, v in wanted.items() if k != "threads")
        if old.get("data_fingerprint") == fingerprint and same:
            meta = old
    if meta is None:
        meta = train_on_file(data.path, data.fmt, out, config, progress=sys.stderr.isatty())
    if not side_info:
        options["use_side_info"] = False
    path = os.path.relpath(data.path, REPO)
    command = command_line(path, data.fmt, str(out.relative_to(REPO)), options)
    result: dict[str, Any] = {
        "model_dir": str(out.relative_to(REPO)),
        "command": f"{command} --threads {threads}",
        "training": meta["training"],
    }
    return result | evaluate_both(out, data)


def combine_and_evaluate(
    data: DataSet, members: list[dict[str, Any]], quick: bool
) -> dict[str, Any]:
    """Combine trained members (their ``train_and_evaluate`` results) and evaluate the ensemble."""
    from recstream.model.ensemble_recs import combine

    out = RUNS / f"{data.name}-ensemble" / ("quick" if quick else "full")
    folders = [REPO / member["model_dir"] for member in members]
    started = time.perf_counter()
    meta = combine(folders, data.path, data.fmt, out)
    seconds = round(time.perf_counter() - started, 1)
    path = os.path.relpath(data.path, REPO)
    flags = " ".join(f"--member {member['model_dir']}" for member in members)
    result: dict[str, Any] = {
        "model_dir": str(out.relative_to(REPO)),
        "command": f"recstream combine recs {flags} --data {path} --format {data.fmt} "
        f"--out {out.relative_to(REPO)}",
        "training": {**meta["training"], "combine_seconds": seconds},
    }
    return result | evaluate_both(out, data)


def evaluate_both(model: Path, data: DataSet) -> dict[str, Any]:
    """The model's reports on the test items with the sampled and the full protocol."""
    from recstream.model.evaluate_recs import evaluate_model_on_file

    result: dict[str, Any] = {}
    for protocol in ("sampled", "full"):
        started = time.perf_counter()
        report = evaluate_model_on_file(model, data.path, data.fmt, protocol)
        report["eval_seconds"] = round(time.perf_counter() - started, 1)
        result[protocol] = report
    return result


FLAGS = {
    "epochs": "--epochs",
    "max_len": "--max-len",
    "dim": "--dim",
    "layers": "--layers",
    "heads": "--heads",
    "dropout": "--dropout",
    "ffn_mult": "--ffn-mult",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "batch_size": "--batch-size",
    "negatives": "--negatives",
    "patience": "--patience",
    "seed": "--seed",
    "max_items": "--max-items",
    "ema_half_life": "--ema-half-life",
}
SWITCHES = {"use_side_info": "--no-side-info", "item_bias": "--no-item-bias"}


def command_line(path: str, fmt: str, out: str, config: dict[str, Any]) -> str:
    """The ``recstream train recs`` command that trains with ``config``."""
    parts = ["recstream train recs", f"--data {path}", f"--format {fmt}", f"--out {out}"]
    for key, value in config.items():
        if key in FLAGS and value is not None:
            parts.append(f"{FLAGS[key]} {value}")
        elif key in SWITCHES and value is False:
            parts.append(SWITCHES[key])
    return " ".join(parts)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Next-item recommendation quality",
        "",
        f"Measured {results['measured_at']} on {results['machine']} "
        f"({'quick' if results['quick'] else 'full'} configuration).",
        "Sampled: leave-one-out, test item vs 100 negatives the user never touched, "
        "at most 10,000 users (seed 0). Full: the whole catalogue, history items not excluded.",
        "",
    ]
    for name, entry in results["data_sets"].items():
        if "skipped" in entry:
            lines += [f"## {name}", "", f"Skipped: {entry['skipped']}", ""]
            continue
        lines += [f"## {name} ({entry['format']})", ""]
        for variant, run in entry["runs"].items():
            training = run["training"]
            users = f"{run['sampled']['users']} sampled / {run['full']['users']} full users."
            if "members" in training:
                seeds = ", ".join(str(m["seed"]) for m in training["members"])
                lines.append(
                    f"**{variant}**: mean score of the models of seeds {seeds} "
                    f"(each trained as above), combined in {training['combine_seconds']:.0f} s, "
                    + users
                )
            else:
                cpu = training.get("train_cpu_seconds")
                lines.append(
                    f"**{variant}**: best epoch {training['best_epoch']}, training "
                    f"{training['train_seconds']:.0f} s wall"
                    + (f", {cpu:.0f} s CPU" if cpu is not None else "")
                    + f", {users}"
                )
            if run.get("command"):
                lines += ["", f"`{run['command']}`"]
            lines += ["", "| protocol | scorer | " + " | ".join(METRICS) + " |"]
            lines.append("|---|---|" + "---|" * len(METRICS))
            for protocol in ("sampled", "full"):
                report = run[protocol]
                rows = {"SASRec": report, **report["baselines"]}
                for scorer, values in rows.items():
                    cells = " | ".join(f"{values[m]:.4f}" for m in METRICS)
                    lines.append(f"| {protocol} | {scorer} | {cells} |")
            lines.append("")
        if entry.get("published"):
            published = ", ".join(f"{k} {v:.4f}" for k, v in entry["published"].items())
            lines += [f"Published: {published}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configuration")
    parser.add_argument("--only", nargs="*", help="data set names to run (default: all)")
    parser.add_argument("--reuse", action="store_true", help="reuse matching trained checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args(argv)
    sets = [*data_sets(args.quick), shop_log(args.quick)]
    results: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s)",
        "quick": args.quick,
        "data_sets": {},
    }
    for data in sets:
        if args.only and data.name not in args.only:
            continue
        if not data.path.is_file():
            results["data_sets"][data.name] = {"skipped": f"{data.path} not found"}
            print(f"{data.name}: skipped ({data.path} not found)")
            continue
        entry: dict[str, Any] = {"format": data.fmt, "published": data.published, "runs": {}}
        variants = [True, False] if data.searches else [True]
        for side_info in variants:
            label = "items + actions + searches" if data.searches and side_info else "items only"
            if not data.searches:
                label = "SASRec"
            entry["runs"][label] = train_and_evaluate(
                data, side_info, args.quick, args.reuse, args.threads
            )
            run = entry["runs"][label]
            print(
                f"{data.name} [{label}] sampled ndcg@10 {run['sampled']['ndcg@10']:.4f} "
                f"(pop {run['sampled']['baselines']['most_popular']['ndcg@10']:.4f}, "
                f"co-oc {run['sampled']['baselines']['cooccurrence']['ndcg@10']:.4f}); "
                f"full ndcg@10 {run['full']['ndcg@10']:.4f} "
                f"(pop {run['full']['baselines']['most_popular']['ndcg@10']:.4f}, "
                f"co-oc {run['full']['baselines']['cooccurrence']['ndcg@10']:.4f})"
            )
        if data.ensemble_seeds:
            members = [next(iter(entry["runs"].values()))] + [
                train_and_evaluate(data, True, args.quick, args.reuse, args.threads, seed)
                for seed in data.ensemble_seeds
            ]
            for member in members[1:]:
                entry["runs"][f"SASRec, seed {member['training']['seed']}"] = member
            run = entry["runs"]["ensemble"] = combine_and_evaluate(data, members, args.quick)
            print(
                f"{data.name} [ensemble] sampled hr@10 {run['sampled']['hr@10']:.4f} "
                f"ndcg@10 {run['sampled']['ndcg@10']:.4f}; "
                f"full ndcg@10 {run['full']['ndcg@10']:.4f}"
            )
        results["data_sets"][data.name] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "recs_quality_quick" if args.quick else "recs_quality"
    previous = RESULTS / f"{stem}.json"
    if args.only and previous.is_file():  # a partial run updates the other sets' entries
        kept = json.loads(previous.read_text()).get("data_sets", {})
        results["data_sets"] = {**kept, **results["data_sets"]}
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
