"""Capacity guide: partitions, worker processes and GPUs for a shop doing N events/s.

Inputs are measured figures (from ``pipeline_speed.json``), never guesses:

* ``worker_rate``: events/s one worker process sustains on a dedicated core with scoring
  on the CPU: 1e6 / the full pipeline's measured CPU µs per event (robust to other load
  on the machine), else its wall rate, else the pass-through rate with the measured
  scoring cost added per event (shown as arithmetic);
* ``passthrough_rate``: the same for the worker with scoring disabled (what a worker
  does when a GPU scores for it; an upper bound, since feeding a GPU costs some CPU);
* ``cpu_scoring_rate``: sequences/s of bare onnxruntime on the CPU at the batch size
  the worker uses;
* ``gpu_scoring_rate``: sequences/s of one GPU, from a GPU run of
  ``benchmarks/scorer_speed.py`` (``scorer_speed_gpu.json``), at 32 histories per call
  (workers' batches at the planned load, not the batch-512 peak); without it the GPU
  count is not computed;
* ``gpu_worker_rate``: events/s of one worker process scoring on CUDA, per dedicated
  core: from the ``recstream-full-gpu`` scenario of these results, else of a GPU run of
  ``pipeline_speed.py`` (``gpu_check.sh``: ``pipeline_speed_gpu.json``, then
  ``pipeline_speed_gpu_noida.json``), else the pass-through rate (an upper bound).

Rules of thumb applied (each printed with the arithmetic):

* run workers at ``utilisation`` (default 50%) of their measured capacity: latency
  grows fast past that (see the latency table) and a rebalance or a failed worker
  must be absorbed by the others;
* one worker process per core (a Python worker is bound to one core by the GIL);
* partitions = 2 x the worker count, rounded up to a multiple of 4 (at least 4), so
  the group can double without re-partitioning (Kafka cannot shrink partitions and
  growing them moves keys, i.e. user state).

    python benchmarks/capacity_guide.py --events-per-s 20000 [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_UTILISATION = 0.5
GUIDE_RATES = (1_000, 10_000, 100_000)
#: Histories per scoring call assumed for a GPU's rate (see gpu_rate_from_scorer_results).
WORKER_BATCH = 32
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: GPU runs of pipeline_speed.py (benchmarks/gpu_check.sh), in the order they are read.
GPU_PIPELINE_RESULTS = ("pipeline_speed_gpu.json", "pipeline_speed_gpu_noida.json")


def plan(
    events_per_s: float,
    *,
    worker_rate: float,
    passthrough_rate: float,
    cpu_scoring_rate: float | None = None,
    gpu_scoring_rate: float | None = None,
    gpu_worker_rate: float | None = None,
    utilisation: float = DEFAULT_UTILISATION,
) -> dict[str, Any]:
    """Partitions, workers and GPUs for ``events_per_s``, with every step as text."""
    if events_per_s <= 0 or worker_rate <= 0 or passthrough_rate <= 0:
        raise ValueError("events_per_s, worker_rate and passthrough_rate must be positive")
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    steps = []
    cpu_workers = math.ceil(events_per_s / (worker_rate * utilisation))
    steps.append(
        f"CPU scoring: workers = ceil({events_per_s:,.0f} / ({worker_rate:,.0f} x "
        f"{utilisation:.0%})) = {cpu_workers}"
    )
    out: dict[str, Any] = {
        "events_per_s": events_per_s,
        "utilisation": utilisation,
        "cpu_only": {"workers": cpu_workers, "cores": cpu_workers},
    }
    workers = cpu_workers
    if gpu_scoring_rate:
        feeding = gpu_worker_rate or passthrough_rate
        gpu_workers = math.ceil(events_per_s / (feeding * utilisation))
        gpus = math.ceil(events_per_s / (gpu_scoring_rate * utilisation))
        steps.append(
            f"GPU scoring: workers = ceil({events_per_s:,.0f} / ({feeding:,.0f} x "
            f"{utilisation:.0%})) = {gpu_workers}; GPUs = ceil({events_per_s:,.0f} / "
            f"({gpu_scoring_rate:,.0f} x {utilisation:.0%})) = {gpus}"
        )
        out["with_gpu"] = {"workers": gpu_workers, "gpus": gpus}
        workers = min(workers, gpu_workers)
    else:
        steps.append(
            "GPU scoring: not computed (no measured GPU sequences/s; run "
            "benchmarks/scorer_speed.py on a GPU machine and pass --gpu-rate)"
        )
    partitions = max(4, 4 * math.ceil(2 * max(cpu_workers, workers) / 4))
    steps.append(
        f"partitions = max(4, round up to x4 (2 x {max(cpu_workers, workers)} workers)) "
        f"= {partitions}"
    )
    out["partitions"] = partitions
    out["steps"] = steps
    return out


def inputs_from(
    results: dict[str, Any], broker: str | None = None, results_dir: Path = RESULTS_DIR
) -> dict[str, Any]:
    """The measured inputs of :func:`plan` from a ``pipeline_speed.json`` object (and
    the GPU runs' files in ``results_dir``).

    Prefers Tansu (it long-polls; noida's idle spin distorts).  Returns an ``error``
    entry when the results lack a pass-through figure.
    """
    brokers = results.get("brokers", {})
    order = [broker] if broker else ["tansu", "noida", *brokers]
    for kind in order:
        throughput = brokers.get(kind, {}).get("throughput", {})
        entry = throughput.get("recstream-passthrough", {})
        passthrough = entry.get("rate")
        if entry.get("app_cpu_us_per_event"):
            passthrough = 1e6 / entry["app_cpu_us_per_event"]  # per dedicated core
        if passthrough:
            break
    else:
        return {"error": "no recstream-passthrough throughput measured"}
    onnx_rows = results.get("onnx", {}).get("batches", [])
    cpu_scoring = max((row["sequences_per_s"] for row in onnx_rows), default=None)
    full_entry = throughput.get("recstream-full", {})
    full = full_entry.get("rate")
    full_cpu_us = full_entry.get("app_cpu_us_per_event")
    derivation = None
    if full and full_cpu_us:
        worker_rate = 1e6 / full_cpu_us
        derivation = (
            f"1e6 / {full_cpu_us:,.0f} CPU µs per event of the full pipeline on {kind} "
            f"= {worker_rate:,.0f} ev/s per dedicated core (wall rate measured on the shared "
            f"machine: {full:,.0f} ev/s)"
        )
    elif full:
        worker_rate = full
        derivation = f"measured full pipeline on {kind}: {full:,.0f} ev/s"
    elif cpu_scoring:
        us = 1e6 / passthrough + 1e6 / cpu_scoring
        worker_rate = 1e6 / us
        derivation = (
            f"1e6 / (1e6/{passthrough:,.0f} pass-through + 1e6/{cpu_scoring:,.0f} scoring) "
            f"= {worker_rate:,.0f} ev/s (on {kind}; full pipeline not measured)"
        )
    else:
        worker_rate = passthrough
        derivation = f"pass-through only on {kind} (no scoring figure): {passthrough:,.0f} ev/s"
    gpu_worker = gpu_worker_rate({"brokers": {kind: {"throughput": throughput}}}, "these results")
    for name in GPU_PIPELINE_RESULTS:
        if gpu_worker is not None:
            break
        try:
            gpu_results = json.loads((results_dir / name).read_text())
        except (OSError, ValueError):
            continue
        gpu_worker = gpu_worker_rate(gpu_results, f"benchmarks/results/{name}")
    return {
        "broker": kind,
        "worker_rate": worker_rate,
        "passthrough_rate": passthrough,
        "cpu_scoring_rate": cpu_scoring,
        "gpu_scoring_rate": gpu_rate_from_scorer_results(results_dir / "scorer_speed_gpu.json"),
        "gpu_worker_rate": gpu_worker[0] if gpu_worker else None,
        "gpu_worker_derivation": gpu_worker[1] if gpu_worker else None,
        "worker_rate_derivation": derivation,
    }


def gpu_worker_rate(results: Any, source: str) -> tuple[float, str] | None:
    """Events/s per dedicated core of a worker scoring on CUDA, and how it was derived,
    from the first broker of ``results`` that measured ``recstream-full-gpu``."""
    brokers = results.get("brokers", {}) if isinstance(results, dict) else {}
    for kind, out in brokers.items():
        entry = out.get("throughput", {}).get("recstream-full-gpu", {})
        cpu_us = entry.get("app_cpu_us_per_event")
        if isinstance(cpu_us, int | float) and cpu_us > 0:
            rate = 1e6 / cpu_us
            return rate, (
                f"1e6 / {cpu_us:,.0f} CPU µs per event of the worker scoring on CUDA on "
                f"{kind} = {rate:,.0f} ev/s per dedicated core ({source})"
            )
    return None


def gpu_rate_from_scorer_results(
    path: Path | None = None, batch: int = WORKER_BATCH
) -> float | None:
    """Sequences/s of one GPU, from a GPU run's ``scorer_speed_gpu.json``.

    The best bare CUDA rate at ``batch`` histories per call (or at any batch if that
    size was not measured).  Worker processes send batches of a few tens of events at
    the loads the guide plans for, and processes sharing a GPU take turns on it, so
    the rate at that size, not at batch 512, is what one GPU gives a worker group.
    """
    path = path or RESULTS_DIR / "scorer_speed_gpu.json"
    try:
        rows = json.loads(path.read_text()).get("rows", [])
    except (OSError, ValueError, AttributeError):
        return None
    cuda = [
        row
        for row in rows
        if isinstance(row, dict)
        and "cuda" in str(row.get("engine", "")).lower()
        and isinstance(row.get("sequences_per_s"), int | float)
    ]
    at_batch = [row for row in cuda if row.get("batch") == batch] or cuda
    return max((float(row["sequences_per_s"]) for row in at_batch), default=None)


def from_results(results: dict[str, Any], results_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    """The guide for a few example rates, from one run's results (and the GPU runs'
    files in ``results_dir``)."""
    inputs = inputs_from(results, results_dir=results_dir)
    if "error" in inputs:
        return inputs
    examples = [
        plan(
            rate,
            worker_rate=inputs["worker_rate"],
            passthrough_rate=inputs["passthrough_rate"],
            cpu_scoring_rate=inputs["cpu_scoring_rate"],
            gpu_scoring_rate=inputs["gpu_scoring_rate"],
            gpu_worker_rate=inputs["gpu_worker_rate"],
        )
        for rate in GUIDE_RATES
    ]
    return {"inputs": inputs, "examples": examples}


def render(guide: dict[str, Any]) -> str:
    """The guide as Markdown (inputs, then one worked example per rate)."""
    if "error" in guide:
        return f"Not computed: {guide['error']}\n"
    inputs = guide["inputs"]
    lines = [
        f"Measured inputs (broker {inputs['broker']}): worker rate = "
        f"{inputs['worker_rate_derivation']}; CPU onnxruntime "
        f"{inputs['cpu_scoring_rate'] or 0:,.0f} sequences/s; GPU "
        + (
            f"{inputs['gpu_scoring_rate']:,.0f} sequences/s at batch {WORKER_BATCH} "
            "(benchmarks/results/scorer_speed_gpu.json)"
            if inputs["gpu_scoring_rate"]
            else "not measured"
        )
        + (
            f"; GPU worker = {inputs['gpu_worker_derivation']}"
            if inputs.get("gpu_worker_derivation")
            else ""
        )
        + ".\n",
    ]
    for example in guide["examples"]:
        lines.append(f"**{example['events_per_s']:,.0f} events/s**\n")
        lines += [f"- {step}" for step in example["steps"]]
        lines.append("")
    lines.append(
        "Compute your own: `python benchmarks/capacity_guide.py --events-per-s N` "
        "(reads benchmarks/results/pipeline_speed.json).\n"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-s", type=float, required=True)
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR / "pipeline_speed.json",
    )
    parser.add_argument("--broker", help="use this broker's figures (default: tansu)")
    parser.add_argument("--gpu-rate", type=float, help="measured GPU sequences/s")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION)
    args = parser.parse_args(argv)
    inputs = inputs_from(json.loads(args.results.read_text()), args.broker)
    if "error" in inputs:
        print(f"error: {inputs['error']} in {args.results}", file=sys.stderr)
        return 1
    result = plan(
        args.events_per_s,
        worker_rate=inputs["worker_rate"],
        passthrough_rate=inputs["passthrough_rate"],
        cpu_scoring_rate=inputs["cpu_scoring_rate"],
        gpu_scoring_rate=args.gpu_rate or inputs["gpu_scoring_rate"],
        gpu_worker_rate=inputs["gpu_worker_rate"],
        utilisation=args.utilisation,
    )
    print(f"worker rate: {inputs['worker_rate_derivation']}")
    if inputs["gpu_worker_derivation"]:
        print(f"GPU worker rate: {inputs['gpu_worker_derivation']}")
    for step in result["steps"]:
        print(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
