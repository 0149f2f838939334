"""Scorer speed: PyTorch eager vs onnxruntime (fp32, int8 on CPU; fp32, fp16 on CUDA).

One run, the same inputs for every engine: a SASRec-size recommender (50k items,
d 64, 2 layers, length 50; random init, which is fine for speed), exported
through the real export path (``recstream.export.onnx_export.export_recs``), at
batch 1, 8, 32, 128, 512 and history lengths 10 and 50.  Each cell is the median
latency of repeated calls and the sequences/s it implies.

It also measures the runtime overhead ratio: the throughput of the whole runtime
call (``OnnxRecsScorer.recommend``: building input buffers from ``Token``
histories, the run, decoding the default 10 items per user to ``ScoredItem``s)
divided by the throughput of a bare ``InferenceSession.run`` on the same, already
encoded, batch (goal >= 0.9); the two are timed alternately.  It is given from
wall time (the definition) and from the thread's CPU time (steadier when other
jobs share the cores), with the same histories call after call: every token
carries this model's encoding (``Token.encoded``) after the first call, as the
tokens of a served user's history do.  A third ratio ("newest token new") gives
each history, before each runtime call (untimed), a new newest token equal to
the old one: the case of a new event whose token no model has encoded yet.

Prints a table and writes ``benchmarks/results/scorer_speed.json``.  Runs on one
thread (the machine is shared): start it with ``nice -n 10``.

    python benchmarks/scorer_speed.py            # full grid
    python benchmarks/scorer_speed.py --quick    # batch 1, 32, 512; fewer repeats
    python benchmarks/scorer_speed.py --gpu-check  # batch 512 x 50 only, CPU vs CUDA
    python benchmarks/scorer_speed.py --overhead-only  # fp32 bare run vs runtime only

The overhead ratio is the figure to watch on a shared machine: both sides are
timed alternately, so other jobs' load hits them alike.  For the CPU fp32 engine
each cell also gets the CPU time of each step of the runtime call (encode,
exclusions, run, decode), each step timed right after a bare run as in the ratio
measurement: where the overhead goes.  What is left is mostly the fixed cost of
code that runs cold right after onnxruntime has streamed the model through the
caches, and at large batches the C loops that read and join each token's encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "scorer_speed.json"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Items per recommendation in the runtime measurement: the default RECSTREAM_TOP_K.
RUNTIME_K = 10


def build_recommender(
    n_items: int, dim: int, layers: int, max_len: int
) -> tuple[Any, dict[str, Any]]:
    """A random-init SASRec and checkpoint-style metadata over ``n_items`` item ids."""
    import torch

    from recstream.model.features import FIRST_ITEM
    from recstream.model.sasrec import SASRec

    torch.manual_seed(0)
    vocab = [f"item-{i}" for i in range(n_items)]
    hparams: dict[str, Any] = {
        "n_items": n_items + FIRST_ITEM,
        "max_len": max_len,
        "dim": dim,
        "layers": layers,
    }
    model = SASRec(**hparams, dropout=0.0).eval()
    meta = {
        "kind": "recs",
        "hparams": hparams,
        "vocab": vocab,
        "popular": vocab[:100],
        "max_len": max_len,
        "data_fingerprint": "benchmark-random-init",
        "metrics": {},
        "trained_at": "2026-01-01T00:00:00+00:00",
    }
    return model, meta


def make_histories(
    rng: np.random.Generator, batch: int, length: int, vocab: Sequence[str]
) -> tuple[list[list[Any]], list[set[str]]]:
    """Histories of ``length`` tokens (about 1 in 5 a search) and 2 excluded items each."""
    from recstream.streams.scoring import Token

    actions = ("view", "view", "view", "add_to_cart", "purchase")
    words = ("red", "shoes", "jacket", "size", "42", "cotton", "手机", "wireless")
    histories = []
    for _ in range(batch):
        history = []
        for _ in range(length):
            if rng.random() < 0.2:
                query = " ".join(rng.choice(words, size=int(rng.integers(1, 4))).tolist())
                history.append(Token(None, "search", query))
            else:
                item = vocab[int(rng.integers(len(vocab)))]
                history.append(Token(item, actions[int(rng.integers(len(actions)))]))
        histories.append(history)
    exclude = [{vocab[int(i)] for i in rng.integers(len(vocab), size=2)} for _ in range(batch)]
    return histories, exclude


def renew_newest_tokens(histories: list[list[Any]]) -> None:
    """Replace each history's newest token by an equal new ``Token``: what a new event
    brings, a token no model has encoded yet (the inputs stay the same)."""
    from recstream.streams.scoring import Token

    for history in histories:
        newest = history[-1]
        history[-1] = Token(newest.item_id, newest.action, newest.query)


def median_seconds(call: Callable[[], object], min_time: float, min_repeats: int) -> float:
    """Median wall time of ``call`` after one warm-up, repeated for ``min_time`` s at least."""
    call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def paired_median_seconds(
    first: Callable[[], object],
    second: Callable[[], object],
    min_time: float,
    min_repeats: int,
    prepare: Callable[[], object] = lambda: None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median wall and CPU times of two calls measured alternately: ``(first, second)``;
    ``prepare`` runs, untimed, before each call of ``second``.

    Alternating makes load changes hit both calls alike.  The CPU time is the
    calling thread's (``time.thread_time``): with one onnxruntime thread the run
    happens on it, so it counts the work done, not the time other jobs held the
    core; the steadier figure on a shared machine.
    """
    first()
    prepare()
    second()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    started = time.perf_counter()
    while len(wall[0]) < min_repeats or time.perf_counter() - started < 2 * min_time:
        for call, walls, cpus in ((first, wall[0], cpu[0]), (second, wall[1], cpu[1])):
            if call is second:
                prepare()
            c0, t0 = time.thread_time(), time.perf_counter()
            call()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.thread_time() - c0)
        if len(wall[0]) >= 200:
            break
    return (
        (statistics.median(wall[0]), statistics.median(cpu[0])),
        (statistics.median(wall[1]), statistics.median(cpu[1])),
    )


def step_seconds(
    scorer: Any,
    bare: Callable[[], object],
    histories: list[list[Any]],
    exclude: list[set[str]],
    min_time: float,
    min_repeats: int,
) -> dict[str, float]:
    """Median CPU seconds of each step of ``scorer.recommend``, each right after ``bare()``.

    The steps are the runtime's own (``RecsModel.encode``, ``exclusions``, ``run``,
    ``decode``); building the ``RecsResult`` list and the checks are not timed.
    """
    model = scorer._model.current()
    times: dict[str, list[float]] = {"encode": [], "exclusions": [], "run": [], "decode": []}
    clock = time.thread_time
    started = time.perf_counter()
    while len(times["run"]) < min_repeats or time.perf_counter() - started < min_time:
        bare()
        t0 = clock()
        batch = model.encode(histories)
        t1 = clock()
        masked = model.exclusions(batch, exclude)
        t2 = clock()
        top_items, top_scores = model.run(batch, masked)
        t3 = clock()
        model.decode(top_items, top_scores, RUNTIME_K)
        t4 = clock()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[name].append(seconds)
        if len(times["run"]) >= 200:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def export_models(
    workdir: Path, model: Any, meta: dict[str, Any], variants: Sequence[str]
) -> dict[str, Any]:
    """Export the variants through the real export path; the reports by variant."""
    from recstream.export.onnx_export import export_recs

    return {r.variant: r for r in export_recs(model, meta, workdir, variants, top_k=20)}


def cuda_usable() -> bool:
    """True when onnxruntime can really run a model on CUDA here (not just list it)."""
    from onnx import TensorProto, helper

    from recstream.streams.scoring import runs_on_cuda

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return runs_on_cuda(model.SerializeToString())


def measure_cell(
    graph: Any,
    engines: dict[str, Any],
    feeds: dict[str, np.ndarray],
    histories: list[list[Any]],
    exclude: list[set[str]],
    min_time: float,
    min_repeats: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
    """Median seconds per engine on one batch, the runtime overhead ratios, and the
    runtime's step CPU seconds for the CPU fp32 engine (``step_seconds``, by engine).

    ``graph`` None: PyTorch eager is not measured.
    """
    import torch

    tensors = [torch.from_numpy(v) for v in feeds.values()]

    def eager() -> object:
        with torch.inference_mode():
            return graph(*tensors)

    cells = (
        {} if graph is None else {"pytorch-eager-cpu": median_seconds(eager, min_time, min_repeats)}
    )
    overhead: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    for name, scorer in engines.items():
        session = scorer._model.current().session
        bare = partial(session.run, None, feeds)
        if name in ("ort-fp32-cpu", "ort-fp32-cuda", "ort-fp16-cuda"):
            full = partial(scorer.recommend, histories, exclude, RUNTIME_K)
            (cells[name], bare_cpu), (runtime_s, runtime_cpu) = paired_median_seconds(
                bare, full, min_time, min_repeats
            )
            overhead[name] = cells[name] / runtime_s
            overhead[name + ":cpu"] = bare_cpu / runtime_cpu
            _, (new_token_s, _) = paired_median_seconds(
                bare, full, min_time, min_repeats, partial(renew_newest_tokens, histories)
            )
            overhead[name + ":new"] = cells[name] / new_token_s
            if name == "ort-fp32-cpu":
                steps[name] = step_seconds(scorer, bare, histories, exclude, min_time, min_repeats)
        else:
            cells[name] = median_seconds(bare, min_time, min_repeats)
    return cells, overhead, steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from recstream.export.onnx_export import RecsServingGraph
    from recstream.streams.scoring import OnnxRecsScorer, RuntimeOptions

    torch.set_num_threads(args.threads)
    gpu = cuda_usable()
    if args.gpu_check and not gpu:
        print("no CUDA: onnxruntime cannot open a CUDA session here; measuring the CPU only")
    model, meta = build_recommender(args.items, args.dim, args.layers, args.max_len)
    graph = RecsServingGraph(model, 20, model.n_items).eval()
    rng = np.random.default_rng(1)
    if args.gpu_check:
        grid = [(512, args.max_len)]
    elif args.quick:
        grid = [(b, n) for n in (10, args.max_len) for b in (1, 32, 512)]
    else:
        grid = [(b, n) for n in (10, args.max_len) for b in (1, 8, 32, 128, 512)]
    min_time = args.min_time or (0.5 if args.quick or args.gpu_check else 2.0)
    min_repeats = 3 if args.quick or args.gpu_check else 5
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recstream-bench-") as tmp:
        t0 = time.perf_counter()
        variants = ["fp32"]
        variants += [] if args.gpu_check or args.overhead_only else ["int8"]
        variants += ["fp16"] if gpu and not args.overhead_only else []
        reports = export_models(Path(tmp), model, meta, variants)
        export_s = time.perf_counter() - t0
        cpu = RuntimeOptions((CPU,), False, args.threads, 1)
        engines: dict[str, OnnxRecsScorer] = {
            "ort-fp32-cpu": OnnxRecsScorer(reports["fp32"].path, cpu)
        }
        if "int8" in reports and reports["int8"].written:
            engines["ort-int8-cpu"] = OnnxRecsScorer(reports["int8"].path, cpu)
        if gpu and not args.overhead_only:
            cuda = RuntimeOptions((CUDA, CPU), True, args.threads, 1)
            engines["ort-fp32-cuda"] = OnnxRecsScorer(reports["fp32"].path, cuda)
            if reports["fp16"].written:
                engines["ort-fp16-cuda"] = OnnxRecsScorer(reports["fp16"].path, cuda)
        for batch, length in grid:
            histories, exclude = make_histories(rng, batch, length, meta["vocab"])
            # The runtime's own encoding, copied out of its reusable buffers.
            reference = engines["ort-fp32-cpu"]._model.current()
            encoded = reference.encode(histories, k=RUNTIME_K)
            feeds = {
                "items": encoded.items.copy(),
                "actions": encoded.actions.copy(),
                "words": encoded.words.copy(),
                "lengths": encoded.lengths.copy(),
                "exclude": reference.exclusions(encoded, exclude).copy(),
                "slots": np.zeros(reference.items_per_row(RUNTIME_K), np.bool_),
            }
            cells, overhead, steps = measure_cell(
                None if args.overhead_only else graph,
                engines,
                feeds,
                histories,
                exclude,
                min_time,
                min_repeats,
            )
            for name, seconds in cells.items():
                rows.append(
                    {
                        "engine": name,
                        "batch": batch,
                        "length": length,
                        "padded_length": int(feeds["items"].shape[1]),
                        "median_ms": round(seconds * 1e3, 3),
                        "sequences_per_s": round(batch / seconds, 1),
                        "runtime_overhead_ratio": round(overhead[name], 3)
                        if name in overhead
                        else None,
                        "runtime_overhead_ratio_cpu_time": round(overhead[name + ":cpu"], 3)
                        if name in overhead
                        else None,
                        "runtime_overhead_ratio_newest_token_new": round(overhead[name + ":new"], 3)
                        if name in overhead
                        else None,
                    }
                )
                if name in steps:
                    rows[-1]["runtime_steps_cpu_ms"] = {
                        step: round(seconds * 1e3, 3) for step, seconds in steps[name].items()
                    }
            print(f"  measured batch {batch} x {length}", file=sys.stderr, flush=True)
        agreement = {v: r.agreement.as_dict() | {"written": r.written} for v, r in reports.items()}
    return {
        "model": {
            "items": args.items,
            "dim": args.dim,
            "layers": args.layers,
            "max_len": args.max_len,
            "init": "random",
        },
        "threads": args.threads,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "cuda": gpu,
        },
        "export_seconds": round(export_s, 1),
        "variant_agreement": agreement,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(f"\nscorer speed, {result['threads']} thread(s), model {result['model']}")
    print(
        f"{'engine':<18} {'batch':>5} {'len':>4} {'median ms':>10} {'seq/s':>10} "
        f"{'overhead':>9} {'(cpu time)':>10} {'(newest token new)':>18}"
    )
    for row in rows:
        ratios = [
            row[key]
            for key in (
                "runtime_overhead_ratio",
                "runtime_overhead_ratio_cpu_time",
                "runtime_overhead_ratio_newest_token_new",
            )
        ]
        ratio, cpu_ratio, new_ratio = ("" if r is None else f"{r:.2f}" for r in ratios)
        print(
            f"{row['engine']:<18} {row['batch']:>5} {row['length']:>4} {row['median_ms']:>10.2f} "
            f"{row['sequences_per_s']:>10.1f} {ratio:>9} {cpu_ratio:>10} {new_ratio:>18}"
        )
    print_steps(rows)
    print("\nvariant agreement with PyTorch fp32:")
    for variant, agreement in result["variant_agreement"].items():
        print(f"  {variant}: {agreement}")
    if result["machine"]["cuda"]:
        print_speedup(rows)


def print_steps(rows: list[dict[str, Any]]) -> None:
    """Where the CPU fp32 runtime call's time goes: medians of each step's CPU ms."""
    stepped = [row for row in rows if "runtime_steps_cpu_ms" in row]
    if not stepped:
        return
    print("\nruntime steps, ort-fp32-cpu, CPU ms (each step timed right after a bare run):")
    print(
        f"{'batch':>5} {'len':>4} {'encode':>9} {'exclude':>9} {'run':>9} {'decode':>9} "
        f"{'outside the run, % of it':>25}"
    )
    for row in stepped:
        steps = row["runtime_steps_cpu_ms"]
        outside = steps["encode"] + steps["exclusions"] + steps["decode"]
        print(
            f"{row['batch']:>5} {row['length']:>4} {steps['encode']:>9.3f} "
            f"{steps['exclusions']:>9.3f} {steps['run']:>9.3f} {steps['decode']:>9.3f} "
            f"{100 * outside / steps['run']:>24.1f}%"
        )


def print_speedup(rows: list[dict[str, Any]]) -> None:
    """Speed-up of the CUDA engines over CPU fp32 at the largest batch."""
    big = max(r["batch"] for r in rows)
    at = {r["engine"]: r for r in rows if r["batch"] == big and r["length"] == rows[-1]["length"]}
    base = at["ort-fp32-cpu"]["sequences_per_s"]
    for name in ("ort-fp32-cuda", "ort-fp16-cuda"):
        if name in at:
            speed = at[name]["sequences_per_s"]
            print(f"{name}: {speed:.0f} seq/s at batch {big}, {speed / base:.1f}x CPU fp32")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer cells and repeats")
    parser.add_argument("--gpu-check", action="store_true", help="batch 512 x 50: CPU vs CUDA")
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the fp32 runtime overhead ratio"
    )
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--min-time", type=float, help="seconds each timing lasts at least (2, --quick 0.5)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args)
    result["mode"] = ("gpu-check" if args.gpu_check else "quick" if args.quick else "full") + (
        "-overhead-only" if args.overhead_only else ""
    )
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
