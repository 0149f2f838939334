"""Profile recstream's worker with py-spy while it drains a click backlog; print where time goes.

    .venv/bin/python benchmarks/profile_worker.py [--scenario recstream-passthrough|recstream-full]
        [--broker tansu|noida] [--events 20000] [--paced CLICKS_PER_S --seconds 10] [--gil]

Starts a broker, loads the backlog, runs the worker under ``py-spy record`` (raw
collapsed stacks, written to ``$TMPDIR/recstream-profile-<scenario>-<broker>.txt``) until
every output has arrived, then prints the functions with the most samples, self and
inclusive, as a share of all samples and as microseconds per event.  The worker's
model processes are profiled with it (their samples count towards the events' CPU, and
in the group "child processes").  Needs ``py-spy`` (``pip install py-spy``) and
permission to trace child processes.

``--paced`` profiles live traffic instead: the worker drains a small backlog first (so
start-up is over), then py-spy attaches for ``--seconds`` while clicks of new users, as
many per user as in that backlog, arrive at the given rate, and the CPU is also given
per thread (event loop, Faust's consumer thread, scoring threads, each model process's
threads).  With ``--gil`` only the thread holding the GIL is sampled: the worker's
threads' shares then add up to the share of the time its GIL was held, which tells a
worker held back by its Python work (near 100 %) from one waiting on something else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bench_common as bc
import pipeline_speed as ps

from recstream.streams.broker import EmbeddedBroker

#: Readable name -> (function, a fragment of its file path); counted when anywhere in a stack.
GROUPS = {
    "recstream BatchProcessor.process (whole batch)": ("process", "streams/agents.py"),
    "recstream Pipeline.decode": ("decode", "streams/pipeline.py"),
    "recstream Pipeline.prepare": ("prepare", "streams/pipeline.py"),
    "recstream sessions.apply": ("apply", "streams/sessions.py"),
    "recstream UserState.to_bytes": ("to_bytes", "streams/sessions.py"),
    "recstream UserState.from_bytes": ("from_bytes", "streams/sessions.py"),
    "recstream UserState.tokens": ("tokens", "streams/sessions.py"),
    "recstream Pipeline.score": ("score", "streams/pipeline.py"),
    "recstream Pipeline.finish": ("finish", "streams/pipeline.py"),
    "recstream Pipeline.sweep": ("sweep", "streams/pipeline.py"),
    "recstream records.to_json": ("to_json", "streams/records.py"),
    "recstream TableStateStore.put": ("put", "streams/state_store.py"),
    "recstream RecordBatches.send": ("send", "streams/record_batches.py"),
    "recstream TableStateStore.flush": ("flush", "streams/state_store.py"),
    "recstream metrics": ("", "streams/metrics.py"),
    "faust Collection.send_changelog": ("send_changelog", "faust/tables/base.py"),
    "faust Stream (take_events etc.)": ("", "faust/streams.py"),
    "faust Conductor.on_message": ("on_message", "faust/transport/conductor.py"),
    "faust transport Consumer": ("", "faust/transport/consumer.py"),
    "faust Producer.send": ("send", "faust/transport/drivers/aiokafka.py"),
    "aiokafka producer": ("", "aiokafka/producer/"),
    "aiokafka consumer/fetcher": ("", "aiokafka/consumer/"),
    "onnxruntime run": ("run", "onnxruntime/capi/onnxruntime_inference_collection.py"),
    "logging": ("", "logging/__init__.py"),
    "mode (Faust's service framework)": ("", "/mode/"),
}


def _matches(frame: str, function: str, fragment: str) -> bool:
    """Whether ``frame`` ("Class.method (path)") is ``function`` in a file matching ``fragment``."""
    if fragment not in frame:
        return False
    name = frame.split(" (", 1)[0]
    return not function or name == function or name.endswith(f".{function}")


#: The group of the samples taken in the worker's children (its model processes).
CHILDREN = "child processes (model processes)"


def split_process(frames: list[str]) -> tuple[str | None, list[str]]:
    """A stack recorded with ``--subprocesses``: the child of the worker it ran in (None:
    the worker itself; else e.g. "child 812 (model process)"), and its frames below the
    process frames (``process 812:"command line"``, the worker's first)."""
    depth = 0
    while depth < len(frames) and frames[depth].startswith("process "):
        depth += 1
    if depth < 2:
        return None, frames[depth:]
    frame = frames[depth - 1]
    pid = frame.removeprefix("process ").split(":", 1)[0]
    kind = "model process" if "recstream.streams.model_process" in frame else "process"
    return f"child {pid} ({kind})", frames[depth:]


def read_stacks(path: Path) -> Iterator[tuple[str | None, list[str], int]]:
    """Each stack of a raw py-spy file as (:func:`split_process`'s child, its frames,
    its sample count); lines that are not stacks, and stacks of process frames alone,
    left out."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        child, frames = split_process(stack.split(";"))
        if frames:
            yield child, frames, int(count_text)


def parse_collapsed(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples per leaf frame, inclusive samples per group).

    Stacks inside an import (start-up) are left out.  The worker's children count too
    (group :data:`CHILDREN`): a model process's run is CPU spent on the worker's events.
    """
    total = 0
    leaf: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for child, frames, count in read_stacks(path):
        if any("_find_and_load" in frame for frame in frames):
            continue
        total += count
        leaf[frames[-1]] += count
        if child is not None:
            groups[CHILDREN] += count
        for name, (function, fragment) in GROUPS.items():
            if any(_matches(frame, function, fragment) for frame in frames):
                groups[name] += count
    return total, leaf, groups


def thread_samples(path: Path) -> Counter[str]:
    """Samples per thread of a profile recorded with ``--threads`` (the first frame below
    the process frames); a child's threads are named after it ("child 812 (model
    process): MainThread")."""
    threads: Counter[str] = Counter()
    for child, frames, count in read_stacks(path):
        name = frames[0].split(": ", 1)[-1]  # "thread (812): MainThread" -> its name
        threads[name if child is None else f"{child}: {name}"] += count
    return threads


def find_py_spy() -> str:
    """The py-spy executable beside this Python, else on the PATH."""
    py_spy = bc.py_spy_path()
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return py_spy


def output_path(args: argparse.Namespace, suffix: str = "") -> Path:
    """Where the collapsed stacks go (``--output``, else the temp dir), folder made."""
    path: Path = args.output or Path(tempfile.gettempdir()) / (
        f"recstream-profile-{args.scenario}-{args.broker}{suffix}.txt"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def record_options(args: argparse.Namespace, out_path: Path) -> tuple[str, ...]:
    """The ``py-spy record`` options both modes use."""
    # Native frames need the process paused while its stack is read.
    sampling: tuple[str, ...] = ("--native",) if args.native else ("--nonblocking",)
    if args.gil:
        sampling += ("--gil",)
    return (
        "--format",
        "raw",
        "--rate",
        str(args.rate),
        *sampling,
        "--subprocesses",  # the model processes
        "--nolineno",
        "--output",
        str(out_path),
    )


@contextlib.asynccontextmanager
async def broker_and_target(
    args: argparse.Namespace, backlog: bc.Backlog
) -> AsyncIterator[tuple[str, ps.Target]]:
    """A started broker (its address) and the scenario's topics with ``backlog`` loaded."""
    model_dir = ps.sasrec_size_models(50_000) if args.scenario == "recstream-full" else None
    broker = EmbeddedBroker(args.broker)
    broker.start()
    try:
        target = ps.make_target(args.scenario, broker.bootstrap_servers, 4, model_dir)
        await ps.prepare_target(broker.bootstrap_servers, target, 4, backlog)
        yield broker.bootstrap_servers, target
    finally:
        broker.stop()


async def profile_paced(args: argparse.Namespace) -> dict[str, Any]:
    """Run the worker on a small backlog, then profile it under paced clicks."""
    py_spy = find_py_spy()
    warmup = bc.make_backlog(args.events, args.users)
    out_path = output_path(args, "-paced")
    async with broker_and_target(args, warmup) as (bootstrap, target):
        group = ps.Workers(target)
        group.spawn()
        try:
            watch = bc.OutputWatch(target=len(warmup))
            await bc.watch_output(bootstrap, target.sink, watch, args.timeout, alive=group.dead)
            clicks = bc.live_clicks(
                bc.paced_count(args.paced, args.seconds), args.events / args.users, "p"
            )
            spy = await asyncio.create_subprocess_exec(
                py_spy,
                "record",
                "--pid",
                str(group.procs[0].pid),
                "--duration",
                str(round(args.seconds)),
                "--threads",
                *record_options(args, out_path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            sent = await bc.paced_produce(
                bootstrap, target.source, args.paced, args.seconds, clicks
            )
            await spy.wait()
        finally:
            group.stop()
    total, leaf, groups = parse_collapsed(out_path)
    return {
        "rate": sent / args.seconds,
        "events": sent,
        "total": total,
        "leaf": leaf,
        "groups": groups,
        "threads": thread_samples(out_path),
        "path": out_path,
    }


async def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Run the worker under py-spy on a fresh backlog; returns the figures."""
    py_spy = find_py_spy()
    backlog = bc.make_backlog(args.events, args.users)
    out_path = output_path(args)
    async with broker_and_target(args, backlog) as (bootstrap, target):
        command = (py_spy, "record", *record_options(args, out_path), "--", *target.command)
        group = ps.Workers(dataclasses.replace(target, command=command))
        group.spawn()
        try:
            watch = bc.OutputWatch(target=len(backlog))
            await bc.watch_output(bootstrap, target.sink, watch, args.timeout, alive=group.dead)
            rate = watch.rate()
        finally:
            # SIGINT to py-spy's group: the worker stops and py-spy writes its file.
            for proc in group.procs:
                proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(p.poll() is None for p in group.procs):
                await asyncio.sleep(0.2)
            group.stop()
    total, leaf, groups = parse_collapsed(out_path)
    return {
        "rate": rate,
        "events": len(backlog),
        "total": total,
        "leaf": leaf,
        "groups": groups,
        "path": out_path,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        choices=("recstream-passthrough", "recstream-full", "faust-naive"),
        default="recstream-passthrough",
    )
    parser.add_argument("--broker", choices=("tansu", "noida"), default="tansu")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--native",
        action="store_true",
        help="also sample C frames (py-spy --native; pauses the worker for each sample)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="count only samples of the thread holding the GIL (py-spy --gil); paced, the "
        "threads' shares then add up to the share of the time the GIL was held",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--output", type=Path, help="collapsed stacks file (default: temp dir)")
    parser.add_argument(
        "--paced", type=float, help="profile live clicks at this rate (after --events drain)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="paced: seconds profiled")
    args = parser.parse_args(argv)
    result = asyncio.run(profile_paced(args) if args.paced else profile(args))
    total = max(result["total"], 1)
    # One non-idle sample stands for 1/rate s of one thread's CPU; spread over the events.
    us_per_sample = 1e6 / args.rate / result["events"]
    print(f"{args.scenario} on {args.broker}: {result['rate']:,.0f} ev/s under py-spy")
    kind, cost = ("GIL-holding", "µs holding the GIL") if args.gil else ("non-idle", "µs of CPU")
    print(
        f"{result['total']} {kind} samples in {result['path']} = "
        f"{result['total'] * us_per_sample:,.0f} {cost} per event (imports left out)\n"
    )
    print(f"Top frames by self samples (share of samples, {cost} per event):")
    for frame, count in result["leaf"].most_common(25):
        print(f"  {count / total:6.1%} {count * us_per_sample:8.1f} µs  {frame}")
    print("\nInclusive (anywhere in the stack):")
    for name, count in result["groups"].most_common():
        print(f"  {count / total:6.1%} {count * us_per_sample:8.1f} µs  {name}")
    if "threads" in result:
        lines = thread_lines(result["threads"], args.rate, args.seconds, us_per_sample, args.gil)
        print("", *lines, sep="\n")
    return 0


def thread_lines(
    threads: Counter[str], rate: float, seconds: float, us_per_sample: float, gil: bool
) -> list[str]:
    """The per-thread table of a paced profile: each thread's share of the ``seconds``
    profiled (busy, or holding the GIL with ``gil``) and those µs per event."""
    what, cost = ("holding the GIL", "µs holding it") if gil else ("% of one core", "CPU µs")
    lines = [f"Per thread ({what} over the {seconds:g} s profiled, {cost} per event):"]
    for name, count in threads.most_common():
        share = count / rate / seconds
        lines.append(f"  {share:6.1%} {count * us_per_sample:8.1f} µs  {name}")
    if gil:  # one of the worker's threads holds its GIL at a time: their shares add up
        worker = sum(n for name, n in threads.items() if not name.startswith("child "))
        held = worker / rate / seconds
        lines.append(f"  {held:6.1%} of the time some thread held the GIL")
    return lines


if __name__ == "__main__":
    sys.exit(main())
