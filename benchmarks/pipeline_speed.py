"""Issue #8: recstream's Faust pipeline against the raw Kafka floor, Quix Streams and plain Faust.

One run starts its own brokers (Tansu and noida), loads a click backlog and measures,
side by side on each broker:

* throughput of raw aiokafka (consume + decode; + one produced output), Quix Streams
  (per-user state + one output), a naive Faust agent with a Table, recstream's stateful
  pass-through (sessions + one output, scoring disabled) and the full pipeline with
  scoring (when ``recstream worker`` and ONNX models are available);
* CPU use per process (app, broker, this observer) over the measured window;
* latency (event ts -> output receipt) at 25/50/80% of the measured capacity;
* state size per user, changelog records per event and changelog recovery time;
* scale-out with 1, 2, 3 worker processes and the rebalance pause when one joins;

and, without a broker, bare onnxruntime on a SASRec-size recommender.  It prints a
table and writes ``benchmarks/results/pipeline_speed.json`` and ``.md``.

    .venv/bin/python benchmarks/pipeline_speed.py            # full (long; run by hand)
    .venv/bin/python benchmarks/pipeline_speed.py --quick    # tiny, ~2 min (*_quick.json)

Absolute figures depend on the machine and on what else runs on it; compare the
ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import bench_common as bc
import capacity_guide
import orjson
from bench_workers import NullRecs, NullSentiment

from recstream.streams.broker import BROKER_CAVEATS, EmbeddedBroker, free_port
from recstream.streams.settings import Settings

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 1
#: Seconds a stopped worker gets to leave its group before it is killed.
STOP_TIMEOUT_S = 30.0
#: Throughput scenarios in table order.
THROUGHPUT_SCENARIOS = (
    "raw-decode",
    "raw-produce",
    "quix-memory",
    "quix-rocksdb",
    "faust-naive",
    "recstream-passthrough",
    "recstream-passthrough-eos",
    "recstream-full",
    "recstream-full-in-thread",
    "recstream-full-gpu",
)
#: The scenarios that run recstream's own worker code.
RECSTREAM_SCENARIOS = (
    "recstream-passthrough",
    "recstream-passthrough-eos",
    "recstream-full",
    "recstream-full-in-thread",
    "recstream-full-gpu",
)
#: The run of :func:`turns` that times the bare model (:func:`onnx_backlog`, no broker).
BARE_MODEL: Final = "bare-model"
LABELS = {
    "raw-decode": "aiokafka consume + orjson decode",
    "raw-produce": "aiokafka consume + decode + produce 1 output",
    "quix-memory": "Quix Streams, state list<=50 (memory store) + 1 output",
    "quix-rocksdb": "Quix Streams, state list<=50 (RocksDB) + 1 output",
    "faust-naive": "Faust agent + Table, await send() per event",
    "recstream-passthrough": "recstream sessions + 1 output (scoring disabled)",
    "recstream-passthrough-eos": "same, exactly_once (Kafka transactions)",
    "recstream-full": "recstream worker, full pipeline with scoring",
    "recstream-full-in-thread": "same, onnxruntime in the scoring threads (no model processes)",
    "recstream-full-gpu": "same, scorer on CUDA (RECSTREAM_REQUIRE_GPU)",
}

#: Joins a recstream scenario and the settings of a variant of it, run in turns with
#: the rest: ``recstream-full+RECSTREAM_SCORING_THREADS=3``.
VARIANT_SEP: Final = "+"


def split_variant(scenario: str) -> tuple[str, dict[str, str]]:
    """A scenario's base scenario and its variant's settings ({} for a plain one)."""
    base, *pairs = scenario.split(VARIANT_SEP)
    return base, dict(pair.partition("=")[::2] for pair in pairs)


def scenario_problem(scenario: str) -> str | None:
    """Why ``scenario`` is not one this benchmark can run (None when it is)."""
    base, settings = split_variant(scenario)
    if base not in THROUGHPUT_SCENARIOS:
        return f"unknown scenario {base!r}"
    if settings and base not in RECSTREAM_SCENARIOS:
        return f"{scenario}: only recstream scenarios take settings"
    for key, value in settings.items():
        if not key.startswith("RECSTREAM_") or not value:
            return f"{scenario}: settings are RECSTREAM_NAME=value"
    return None


def label(scenario: str) -> str:
    """The report's words for a scenario, with its variant's settings."""
    base, settings = split_variant(scenario)
    pairs = ", ".join(f"{key}={value}" for key, value in settings.items())
    return LABELS[base] + (f", with {pairs}" if pairs else "")


def table_order(scenarios: Iterable[str]) -> list[str]:
    """Scenarios in table order: by base scenario, each variant after its base (the
    variants of one base by name)."""
    return sorted(
        scenarios, key=lambda name: (THROUGHPUT_SCENARIOS.index(split_variant(name)[0]), name)
    )


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run."""

    events: int
    users: int
    partitions: int
    repeats: int
    brokers: tuple[str, ...]
    scenarios: tuple[str, ...]
    latency_loads: tuple[float, ...]
    latency_seconds: float
    scale_workers: tuple[int, ...]
    rebalance_phase_s: float
    onnx_batches: tuple[int, ...]
    onnx_seconds: float
    onnx_items: int
    timeout_s: float
    #: A throughput run whose outputs began and then stopped for this long ends as failed.
    stall_s: float = 120.0
    deep: bool = True
    """Run latency, state/recovery and scale-out on the main recstream scenario."""
    deep_scenario: str | None = None
    """The scenario the deep part runs on instead of the main one (e.g. the GPU scorer)."""
    worker_cpus: tuple[int, ...] = ()
    """CPUs the apps' processes (and their children) are pinned to; () = all."""
    worker_cpu_limit: float | None = None
    """CPUs each app process (with its children: a worker's model processes) may use in
    all, as a container's CPU limit (:class:`CpuLimit`); None = no limit."""


#: About two minutes: one broker (noida starts Faust workers fastest), the scenarios
#: that define the comparison, short deep phases.  Use --brokers tansu,noida for both.
QUICK = Config(
    events=2_000,
    users=200,
    partitions=4,
    repeats=1,
    brokers=("noida",),
    scenarios=(
        "raw-decode",
        "raw-produce",
        "quix-memory",
        "faust-naive",
        "recstream-passthrough",
        "recstream-full",
    ),
    latency_loads=(0.25, 0.5, 0.8),
    latency_seconds=1.5,
    scale_workers=(1, 2),
    rebalance_phase_s=3.0,
    onnx_batches=(32, 128),
    onnx_seconds=1.0,
    onnx_items=50_000,
    timeout_s=90.0,
)
FULL = Config(
    events=200_000,
    users=5_000,
    partitions=4,
    repeats=3,
    brokers=("tansu", "noida"),
    scenarios=THROUGHPUT_SCENARIOS,
    latency_loads=(0.25, 0.5, 0.8),
    latency_seconds=20.0,
    scale_workers=(1, 2, 3),
    rebalance_phase_s=15.0,
    onnx_batches=(1, 32, 128),
    onnx_seconds=5.0,
    onnx_items=50_000,
    timeout_s=1_200.0,
)


# ----------------------------------------------------------------------------
# Stream applications run as child processes
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one run of a stream app reads and writes, and how it is started."""

    scenario: str
    source: str
    sink: str
    app_id: str
    changelog: str | None
    env: dict[str, str]
    extra_topics: tuple[str, ...] = ()
    command: tuple[str, ...] = ()


def skip_reason(scenario: str, model_dir: Path | None, transactions: bool = True) -> str | None:
    """Why a scenario cannot run here (None when it can): scoring without a model or
    GPU, exactly-once on a broker without ``transactions``."""
    scenario = split_variant(scenario)[0]
    if scenario == "recstream-passthrough-eos" and not transactions:
        return "this broker has no Kafka transactions"
    if not scenario.startswith("recstream-full"):
        return None
    if model_dir is None:
        return worker_available() or "no models"
    if scenario == "recstream-full-gpu":
        from recstream.streams.scoring import runs_on_cuda

        if not runs_on_cuda(model_dir / "recs.onnx"):
            return "onnxruntime cannot run the model on CUDA here"
    return None


def worker_available() -> str | None:
    """None when ``recstream worker`` exists, else why the full pipeline cannot run."""
    if not (bc.REPO / "streams" / "worker.py").is_file():
        return "streams/worker.py does not exist yet"
    return None


def make_target(
    scenario: str, bootstrap: str, partitions: int, model_dir: Path | None = None
) -> Target:
    """Fresh topic and group names for one run of ``scenario``."""
    run = bc.unique_name("bench", re.sub("[^A-Za-z0-9]", "", scenario))  # a legal topic name
    workers = str(bc.BENCH_DIR / "bench_workers.py")
    if scenario.startswith("quix-"):
        source, sink = f"{run}-in", f"{run}-out"
        return Target(
            scenario,
            source,
            sink,
            run,
            f"changelog__{run}--{source}--default",
            {},
            command=(
                bc.PYTHON,
                str(bc.BENCH_DIR / "quix_baseline.py"),
                "--bootstrap",
                bootstrap,
                "--source",
                source,
                "--sink",
                sink,
                "--group",
                run,
                "--store",
                scenario.removeprefix("quix-"),
            ),
        )
    if scenario == "faust-naive":
        source, sink = f"{run}-in", f"{run}-out"
        return Target(
            scenario,
            source,
            sink,
            run,
            f"{run}-history-changelog",
            {},
            command=(
                bc.PYTHON,
                workers,
                "faust-naive",
                "--bootstrap",
                bootstrap,
                "--source",
                source,
                "--sink",
                sink,
                "--app-id",
                run,
                "--partitions",
                str(partitions),
            ),
        )
    base, variant = split_variant(scenario)
    if base in RECSTREAM_SCENARIOS:
        prefix = f"{run}."
        connection = Settings(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            app_id=run,
            partitions=partitions,
            web_port=free_port(),
        )
        env = {
            **connection.connection_env(),
            "RECSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="bench-recstream-data-"),
            "RECSTREAM_LOG_LEVEL": "warning",
            "RECSTREAM_PROVIDERS": "CPUExecutionProvider",
        }
        if base == "recstream-passthrough-eos":
            env["RECSTREAM_PROCESSING_GUARANTEE"] = "exactly_once"
        if base == "recstream-full-in-thread":
            env["RECSTREAM_MODEL_PROCESSES"] = "false"
        if base == "recstream-full-gpu":
            env["RECSTREAM_PROVIDERS"] = "CUDAExecutionProvider,CPUExecutionProvider"
            env["RECSTREAM_REQUIRE_GPU"] = "true"
        env.update(variant)
        if base.startswith("recstream-full"):
            env["RECSTREAM_MODEL_DIR"] = str(model_dir)
            command: tuple[str, ...] = (bc.PYTHON, "-m", "recstream", "worker")
        else:
            command = (bc.PYTHON, workers, base.removesuffix("-eos"))
        return Target(
            scenario,
            f"{prefix}clicks",
            f"{prefix}recommendations",
            run,
            f"{run}-user-state-changelog",
            env,
            extra_topics=tuple(
                f"{prefix}{name}"
                for name in (
                    "searches",
                    "reviews",
                    "privacy",
                    "sentiment",
                    "sessions",
                    "deadletter",
                )
            ),
            command=command,
        )
    raise ValueError(f"not a stream-app scenario: {scenario}")


#: CFS period of the workers' cgroups, microseconds (the kernel's default).
CFS_PERIOD_US: Final = 100_000
#: Numbers the workers' cgroups (unique within this run).
_CGROUP_SERIAL: Final = itertools.count()


@dataclass(frozen=True)
class CpuLimit:
    """A cgroup of its own for one app process and its children, allowed ``cpus`` CPUs in all
    (CFS bandwidth, what a container's CPU limit sets: cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``).  Making one needs root and a writable cgroup file system."""

    cpus: float
    folder: Path
    #: The file a process joins the cgroup through (its pid written there).
    procs: Path

    @classmethod
    def make(cls, cpus: float, name: str, root: Path = Path("/sys/fs/cgroup")) -> CpuLimit:
        """A new cgroup ``name`` under ``root`` (v2 where ``root`` is a unified hierarchy
        with the cpu controller, else v1's ``cpu`` hierarchy); SystemExit if none can be."""
        quota = round(cpus * CFS_PERIOD_US)
        try:
            if "cpu" in _read(root / "cgroup.controllers").split():
                (root / "cgroup.subtree_control").write_text("+cpu")
                folder = root / name
                folder.mkdir()
                (folder / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            else:
                folder = root / "cpu" / name
                folder.mkdir()
                (folder / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (folder / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as exc:
            raise SystemExit(f"--worker-cpu-limit: cannot make a cgroup ({exc})") from None
        return cls(cpus, folder, folder / "cgroup.procs")

    def join(self) -> None:
        """Move the calling process into the cgroup (its children follow it)."""
        self.procs.write_text(str(os.getpid()))

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup once its processes are gone (a worker's model processes
        exit when their pipes close); left with a warning if they are not."""
        deadline = time.monotonic() + timeout
        while _read(self.procs).strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.folder.rmdir()
        except OSError as exc:
            print(f"warning: cgroup {self.folder} left: {exc}", file=sys.stderr)


def _read(path: Path) -> str:
    """A file's text, or "" when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Workers:
    """Child worker processes of one target, with their log files."""

    target: Target
    cpus: tuple[int, ...] = ()
    """CPUs each worker and its children are pinned to (() = not pinned)."""
    cpu_limit: float | None = None
    """CPUs each worker and its children may use in all (None: no limit)."""
    limits: list[CpuLimit] = field(default_factory=list)
    """The workers' cgroups, in spawn order (with ``cpu_limit``)."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    spawned_at: list[float] = field(default_factory=list)
    web_ports: list[str] = field(default_factory=list)
    """Each recstream worker's HTTP port (metrics), in spawn order."""
    data_dirs: list[str] = field(default_factory=list)
    """The data folders made for the further workers (removed by :meth:`stop`)."""

    def own_env(self) -> dict[str, str]:
        """The next worker's environment: the target's, where the first worker runs; a
        port and a data folder of its own for each further recstream worker (workers of
        one machine cannot share either)."""
        env = dict(self.target.env)
        if self.procs and "RECSTREAM_WEB_PORT" in env:
            env["RECSTREAM_WEB_PORT"] = str(free_port())
        if self.procs and "RECSTREAM_DATA_DIR" in env:
            env["RECSTREAM_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-recstream-data-")
            self.data_dirs.append(env["RECSTREAM_DATA_DIR"])
        return env

    def clicks_read(self) -> list[int]:
        """The clicks each recstream worker consumed so far, from its metrics."""
        return [bc.events_in(bc.scrape_metrics(port), "clicks") for port in self.web_ports]

    def spawn(self) -> float:
        """Start one more worker; returns its start time (perf_counter)."""
        log = Path(tempfile.mkstemp(prefix=f"bench-{self.target.scenario}-", suffix=".log")[1])
        env = self.own_env()
        if "RECSTREAM_WEB_PORT" in env:
            self.web_ports.append(env["RECSTREAM_WEB_PORT"])
        limit = None
        if self.cpu_limit is not None:
            name = f"recstream-bench-{os.getpid()}-{next(_CGROUP_SERIAL)}"
            limit = CpuLimit.make(self.cpu_limit, name)
            self.limits.append(limit)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.target.command,
                cwd=bc.REPO,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(self._confine, limit) if self.cpus or limit else None,
            )
        self.procs.append(proc)
        self.logs.append(log)
        started = time.perf_counter()
        self.spawned_at.append(started)
        return started

    def _confine(self, limit: CpuLimit | None) -> None:
        """In the forked child before it runs the worker: keep it on ``cpus``, and in
        ``limit``'s cgroup."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        if limit is not None:
            limit.join()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def dead(self) -> str | None:
        """The log tail of a worker that exited, if any did."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                return f"worker exited with {proc.returncode}: {tail(log)}"
        return None

    def stop(self) -> None:
        """SIGTERM every worker, then SIGKILL what is left after STOP_TIMEOUT_S; remove the
        logs.  (A killed worker never leaves its group, and noida never expires it: the
        next worker of the group could not join.)"""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.unlink(missing_ok=True)
        for folder in self.data_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        for limit in self.limits:
            limit.remove()
        self.procs.clear()
        self.logs.clear()
        self.data_dirs.clear()
        self.limits.clear()


def tail(path: Path, chars: int = 1_500) -> str:
    """The end of a log file."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------


async def prepare_target(
    bootstrap: str, target: Target, partitions: int, backlog: bc.Backlog
) -> None:
    """Create the run's topics and load the backlog into its source topic."""
    names = [target.source, target.sink, *target.extra_topics]
    if target.scenario.startswith("recstream"):
        from recstream.streams.topic_admin import create_topics

        await create_topics(
            Settings(
                bootstrap_servers=bootstrap,
                topic_prefix=target.env["RECSTREAM_TOPIC_PREFIX"],
                partitions=partitions,
            )
        )
        await bc.wait_for_topics(bootstrap, names)
    else:
        await bc.create_topics(bootstrap, names, partitions)
    if len(backlog):
        await bc.produce_backlog(bootstrap, target.source, backlog.records)


def per_event(rate: float) -> float:
    """Microseconds per event at ``rate`` events/s."""
    return 1e6 / rate if rate > 0 else 0.0


async def raw_throughput(
    broker: EmbeddedBroker, scenario: str, backlog: bc.Backlog, cfg: Config
) -> dict[str, Any]:
    """One run of a self-timed raw aiokafka scenario."""
    bootstrap = broker.bootstrap_servers
    run = bc.unique_name("bench", scenario.replace("-", ""))
    source, sink = f"{run}-in", f"{run}-out"
    await bc.create_topics(bootstrap, [source, sink], cfg.partitions)
    await bc.produce_backlog(bootstrap, source, backlog.records)
    command = [
        bc.PYTHON,
        str(bc.BENCH_DIR / "bench_workers.py"),
        scenario,
        "--bootstrap",
        bootstrap,
        "--source",
        source,
        "--sink",
        sink,
        "--group",
        run,
        "--events",
        str(len(backlog)),
    ]
    proc = subprocess.Popen(command, cwd=bc.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.to_thread(proc.communicate, timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimeoutError(f"{scenario} did not finish in {cfg.timeout_s:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{scenario} failed: {err.decode(errors='replace')[-1500:]}")
    await bc.delete_run_topics(bootstrap, run)
    result = json.loads(out.decode().strip().splitlines()[-1])
    rate = result["rate"]
    app_cpu = 100.0 * result["cpu_s"] / result["seconds"] if result["seconds"] else 0.0
    return {
        "rate": rate,
        "seconds": result["seconds"],
        "cpu_percent": {"app": round(app_cpu, 1)},
        "app_cpu_us_per_event": app_cpu / 100.0 * per_event(rate),
    }


def cpu_window(group: Workers, broker: EmbeddedBroker) -> bc.CpuWindow:
    """CPU of the workers (``app``), the broker and this process (``observer``)."""
    return bc.CpuWindow({"app": group.pids, "broker": [broker.pid or 0], "observer": [os.getpid()]})


async def app_throughput(
    broker: EmbeddedBroker,
    scenario: str,
    backlog: bc.Backlog,
    cfg: Config,
    *,
    workers: int = 1,
    keep: bool = False,
    model_dir: Path | None = None,
) -> tuple[dict[str, Any], Workers]:
    """Start ``workers`` processes on a fresh backlog and time its outputs.

    Returns the figures and the workers (still running when ``keep``, else stopped).
    """
    bootstrap = broker.bootstrap_servers
    target = make_target(scenario, bootstrap, cfg.partitions, model_dir)
    await prepare_target(bootstrap, target, cfg.partitions, backlog)
    group = Workers(target, cfg.worker_cpus, cfg.worker_cpu_limit)
    try:
        spawned = group.spawn()  # the cold start counts from the first worker's
        for _ in range(workers - 1):
            group.spawn()
        cpu = cpu_window(group, broker)
        watch = bc.OutputWatch(target=len(backlog), stall_s=cfg.stall_s)
        # On noida a consuming observer spins a core (no long-poll); its end offsets are
        # exact, so count by polling them there.
        count = bc.watch_end_offsets if broker.traits.exact_end_offsets else bc.watch_output
        await count(bootstrap, target.sink, watch, cfg.timeout_s, cpu=cpu, alive=group.dead)
        if watch.done_at is None or watch.first_at is None:
            why = group.dead() or (
                f"no output for {cfg.stall_s:.0f} s after {watch.count}/{len(backlog)}"
                if watch.stalled
                else f"only {watch.count}/{len(backlog)} outputs"
            )
            raise RuntimeError(f"{scenario}: {why}; log: {tail(group.logs[0])}")
        rate = watch.rate()
        result: dict[str, Any] = {
            "rate": rate,
            "seconds": watch.done_at - watch.first_at,
            "cold_start_s": watch.first_at - spawned,
            "cpu_percent": cpu.result,
            "app_cpu_us_per_event": cpu.result["app"] / 100.0 * per_event(rate),
        }
        if group.web_ports and workers == 1:
            # the worker's collector since its start-up, nearly all of it in the window
            metrics_text = bc.scrape_metrics(group.web_ports[0])
            result["gc"] = bc.gc_pauses(metrics_text)
            result["gc_us_per_event"] = result["gc"]["seconds"] * 1e6 / len(backlog)
            # how the backlog was cut: a broker that answers fetches with less cuts finer
            result["scoring_batches"] = bc.scoring_batches(metrics_text)
            result["scoring_threads"] = bc.scoring_thread_shares(metrics_text)
        if len(group.web_ports) > 1:  # did each worker get partitions?
            result["events_in_by_worker"] = group.clicks_read()
    except BaseException:
        group.stop()
        with contextlib.suppress(Exception):
            await bc.delete_run_topics(bootstrap, target.app_id)
        raise
    if not keep:
        group.stop()
        await bc.delete_run_topics(bootstrap, target.app_id)
    return result, group


async def latency_phase(
    bootstrap: str,
    target: Target,
    rate: float,
    seconds: float,
    clicks_per_user: float,
    tag: str,
    cpu: bc.CpuWindow | None = None,
    metrics_port: str | None = None,
) -> dict[str, Any]:
    """Paced load at ``rate``: event time to output receipt, in milliseconds.

    The clicks are the shop log's for users new to the worker, ``clicks_per_user`` each
    as in the backlog (:func:`bc.live_clicks`): histories as long as those the capacity
    was measured on.

    ``cpu``: measured over the paced load (in % of one core; the ``observer`` role is
    this process, which generates the load and watches the outputs).  ``metrics_port``:
    the worker's, read before and after for how many scoring threads were busy
    (:func:`bc.scoring_threads_busy`).
    """
    clicks = bc.live_clicks(bc.paced_count(rate, seconds), clicks_per_user, tag)
    watch = bc.OutputWatch(target=10**12, tag=tag, latency=True)
    with bc.collector_paused():  # this process's collections would count as latency
        started = asyncio.Event()
        watcher = asyncio.create_task(
            bc.watch_output(bootstrap, target.sink, watch, seconds + 30.0, started=started)
        )
        await started.wait()
        metrics_before = "" if metrics_port is None else bc.scrape_metrics(metrics_port)
        scraped_at = time.monotonic()
        if cpu is not None:
            cpu.begin()
        sent = await bc.paced_produce(bootstrap, target.source, rate, seconds, clicks)
        cpu_percent = cpu.end() if cpu is not None else None
        watch.target = sent
        await watcher
    busy = None
    if metrics_port is not None:
        metrics_after = bc.scrape_metrics(metrics_port)
        busy = bc.scoring_threads_busy(metrics_before, metrics_after, time.monotonic() - scraped_at)
    lat = [value * 1000.0 for value in watch.latencies]
    return {
        "rate": round(rate, 1),
        "sent": sent,
        "received": watch.count,
        "p50_ms": bc.percentile(lat, 50),
        "p99_ms": bc.percentile(lat, 99),
        "p999_ms": bc.percentile(lat, 99.9),
        "max_ms": max(lat, default=0.0),
        "cpu_percent": cpu_percent,
        "scoring_threads_busy": busy,
    }


async def probe(
    bootstrap: str, target: Target, user: str, tag: str, timeout: float
) -> dict[str, Any]:
    """Send one event for ``user`` and wait for its output; returns the output object."""
    watch = bc.OutputWatch(target=1, tag=tag, keep_values=True)
    started = asyncio.Event()
    watcher = asyncio.create_task(
        bc.watch_output(bootstrap, target.sink, watch, timeout, started=started)
    )
    await started.wait()
    await bc.send_one(bootstrap, target.source, user, tag)
    await watcher
    if not watch.values:
        raise TimeoutError(f"no output for probe {tag} within {timeout:.0f}s")
    return watch.values[0]


def same_state(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the probe after a restart saw the state the probe before it left."""
    if "session_id" in before:
        return bool(before["session_id"] == after.get("session_id"))
    return bool(after.get("history") == before.get("history", 0) + 1)


async def state_and_recovery(
    broker: EmbeddedBroker, group: Workers, cold_start_s: float, cfg: Config
) -> dict[str, Any]:
    """Changelog size per user, then restart the worker and time its recovery."""
    bootstrap = broker.bootstrap_servers
    target = group.target
    before = await probe(bootstrap, target, "u0", "probe-a-", 30.0)
    result: dict[str, Any] = {}
    if target.changelog:
        records, live = await bc.read_changelog(bootstrap, target.changelog)
        result["changelog_records"] = records
        result["users_in_state"] = len(live)
        result["bytes_per_user"] = (
            sum(len(k) + len(v) for k, v in live.items()) / len(live) if live else 0.0
        )
    group.stop()
    restarted = group.spawn()
    try:
        after = await probe(bootstrap, target, "u0", "probe-b-", cfg.timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; restarted worker's log: {tail(group.logs[-1])}") from None
    restart_s = time.perf_counter() - restarted
    result.update(
        {
            "cold_start_s": cold_start_s,
            "restart_s": restart_s,
            "recovery_s": max(restart_s - cold_start_s, 0.0),
            "state_recovered": same_state(before, after),
        }
    )
    if "changelog_records" in result and result["recovery_s"] > 0:
        result["changelog_records_per_s"] = result["changelog_records"] / result["recovery_s"]
    return result


async def rebalance_pauses(
    broker: EmbeddedBroker, scenario: str, capacity: float, cfg: Config, model_dir: Path | None
) -> dict[str, Any]:
    """Steady load at 50% of one worker's capacity while workers join one by one.

    Starts with one worker and adds one per phase up to ``max(cfg.scale_workers)``.  The
    pause after a join is the longest gap between consecutive outputs in the phase that
    follows it; phase 0 (one worker, no join) gives the normal gap.
    """
    bootstrap = broker.bootstrap_servers
    target = make_target(scenario, bootstrap, cfg.partitions, model_dir)
    await prepare_target(bootstrap, target, cfg.partitions, bc.Backlog([], "none", 0))
    group = Workers(target, cfg.worker_cpus, cfg.worker_cpu_limit)
    try:
        group.spawn()
        await probe(bootstrap, target, "u0", "warm-", cfg.timeout_s)
        phases = max(cfg.scale_workers)
        seconds = cfg.rebalance_phase_s * phases
        rate = capacity * 0.5
        load = bc.live_clicks(bc.paced_count(rate, seconds), cfg.events / cfg.users, "reb-")
        watch = bc.OutputWatch(target=10**12, tag="reb-", keep_times=True)
        with bc.collector_paused():  # a collection here would read as an output gap
            started = asyncio.Event()
            watcher = asyncio.create_task(
                bc.watch_output(bootstrap, target.sink, watch, seconds + 60.0, started=started)
            )
            await started.wait()
            producer = asyncio.create_task(
                bc.paced_produce(bootstrap, target.source, rate, seconds, load)
            )
            t0 = time.time()
            joins = []
            for _ in range(1, phases):
                await asyncio.sleep(cfg.rebalance_phase_s)
                group.spawn()
                joins.append(time.time())
            watch.target = await producer
            await watcher
        # did each joiner take part? (one that got no partition, or died, reads nothing)
        clicks = group.clicks_read()
    finally:
        group.stop()
    times = watch.receipt_times

    def max_gap(start: float, end: float) -> float:
        inside = [start, *[t for t in times if start <= t <= end]]
        after = [t for t in times if t > end]
        if after:
            inside.append(after[0])
        return max((b - a for a, b in itertools.pairwise(inside)), default=end - start)

    return {
        "load_rate": round(rate, 1),
        "baseline_max_gap_s": max_gap(t0 + 0.5, t0 + cfg.rebalance_phase_s),
        "joins": [
            {"workers_after": n + 2, "max_gap_s": max_gap(j, j + cfg.rebalance_phase_s)}
            for n, j in enumerate(joins)
        ],
        "sent": watch.target,
        "received": watch.count,
        "events_in_by_worker": clicks,
    }


# ----------------------------------------------------------------------------
# Bare onnxruntime
# ----------------------------------------------------------------------------


#: The code the benchmark models' graphs come from: a change to any builds them anew.
MODEL_SOURCES: Final = (
    "model/sasrec.py",
    "model/sentiment.py",
    "export/onnx_export.py",
    "export/variants.py",
    "export/tiny.py",
    "benchmarks/bench_workers.py",
)


#: What :func:`sasrec_size_models` writes.
MODEL_FILES: Final = ("recs.onnx", "recs.int8.onnx", "sentiment.onnx", "sentiment.int8.onnx")


def model_sources_digest() -> str:
    """A short digest of :data:`MODEL_SOURCES` (names the cached model folder)."""
    digest = hashlib.sha256()
    for name in MODEL_SOURCES:
        digest.update((bc.REPO / name).read_bytes())
    return digest.hexdigest()[:12]


def sasrec_size_models(items: int) -> Path:
    """A folder with a random-init SASRec-size recommender and a tiny sentiment model,
    each in fp32 and int8 (``recs.onnx``, ``recs.int8.onnx``, ...).

    Exported once through recstream's real export path and cached in the temp dir, per
    version of the code that builds them; scores are meaningless (random weights),
    speed is what a trained model of the same shape costs.  Built in a child process
    (torch) at low priority.
    """
    name = f"recstream-bench-models-p{items}-{model_sources_digest()}"
    folder = Path(tempfile.gettempdir()) / name
    if all((folder / file).is_file() for file in MODEL_FILES):
        return folder
    subprocess.run(
        [
            bc.PYTHON,
            str(bc.BENCH_DIR / "bench_workers.py"),
            "build-models",
            "--out",
            str(folder),
            "--items",
            str(items),
        ],
        cwd=bc.REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.nice(10),
    )
    return folder


def random_feeds(
    rng: np.random.Generator,
    names: set[str],
    num_items: int,
    width: int,
    lengths: list[int],
    k: int,
) -> dict[str, np.ndarray]:
    """Inputs of one ``recs.onnx`` run (those among ``names``): one row of random items
    per entry of ``lengths``, padded to ``width`` tokens, plain actions, no search words,
    an empty exclusion list, ``k`` items asked per row (a graph with ``slots``)."""
    import numpy as np

    rows = len(lengths)
    feeds = {
        "items": rng.integers(2, num_items, size=(rows, width), dtype=np.int64),
        "actions": np.ones((rows, width), dtype=np.int64),
        "words": np.zeros((rows, width, 4), dtype=np.int64),
        "lengths": np.array(lengths, dtype=np.int64),
        "exclude": np.zeros((rows, 1), dtype=np.int64),
        "slots": np.zeros(k, dtype=np.bool_),
    }
    return {name: value for name, value in feeds.items() if name in names}


def recs_file(model_dir: Path) -> Path:
    """The recommender file the workers serve from ``model_dir``: the variant that
    ``RECSTREAM_MODEL_VARIANT`` names in this environment, which they inherit (``auto``
    resolved as they resolve it)."""
    from recstream.streams.scoring import RuntimeOptions, served_file

    settings = Settings()
    options = RuntimeOptions.from_settings(settings)
    return served_file(model_dir, "recs", settings.model_variant, options)


def onnx_bare(model_dir: Path, cfg: Config) -> dict[str, Any]:
    """Sequences/s of bare onnxruntime on the served ``recs`` file (:func:`recs_file`)
    at each batch size (CPU, 2 threads)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    path = recs_file(model_dir)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    max_len = int(meta["recstream.max_len"])
    num_items = int(meta["recstream.num_items"])
    k = min(Settings().top_k, int(meta["recstream.top_k"]))  # what the workers ask for
    names = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(3)
    rows = []
    for batch in cfg.onnx_batches:
        feeds = random_feeds(rng, names, num_items, max_len, [max_len] * batch, k)
        session.run(None, feeds)  # warm-up
        calls = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < cfg.onnx_seconds or calls < 3:
            session.run(None, feeds)
            calls += 1
        rows.append(
            {
                "batch": batch,
                "sequences_per_s": calls * batch / elapsed,
                "ms_per_batch": elapsed / calls * 1000.0,
            }
        )
    return {
        "model": {
            "items": num_items - 2,
            "max_len": max_len,
            "source": str(model_dir),
            "file": path.name,
        },
        "threads": 2,
        "provider": "CPUExecutionProvider",
        "batches": rows,
    }


class _LengthRecorder(NullRecs):
    """Scoring disabled, the history lengths of each batch recorded."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def recommend(self, histories: Any, exclude: Any, k: int) -> list[Any]:
        self.batches.append([len(history) for history in histories])
        return super().recommend(histories, exclude, k)


def backlog_history_lengths(backlog: bc.Backlog, partitions: int) -> list[list[int]]:
    """The history lengths the worker's recommender gets for ``backlog``, batch by batch.

    The backlog replayed offline through recstream's ``Pipeline`` with the default
    settings (batch size, sessions, lateness), in batches of ``batch_size`` records as a
    worker takes them from a backlog; its scoring disabled.
    """
    from recstream.streams.pipeline import DictStore, Pipeline, RawRecord, partition_for_key

    settings = Settings()
    recorder = _LengthRecorder()
    pipeline = Pipeline(settings, recorder, NullSentiment(), partitions=partitions)
    store = DictStore()
    records = [
        RawRecord("clicks", "clicks", partition_for_key(key, partitions), offset, value, key)
        for offset, (key, value) in enumerate(backlog.records)
    ]
    for start in range(0, len(records), settings.batch_size):
        pipeline.run(records[start : start + settings.batch_size], store)
    return recorder.batches


def spread_order(count: int, stride: int = 8) -> list[int]:
    """``range(count)`` reordered so that every prefix spreads over the whole range:
    every ``stride``-th index from 0, then from 1, and so on."""
    return [index for start in range(stride) for index in range(start, count, stride)]


def onnx_backlog(model_dir: Path, lengths: list[list[int]], seconds: float) -> dict[str, Any]:
    """Sequences/s of bare onnxruntime on the backlog's own histories, run as the worker
    runs its scorer: ``RECSTREAM_SCORING_THREADS`` threads, each scoring whole batches on
    one session with ``RECSTREAM_INTRA_OP_THREADS`` threads per run (the defaults: 2 and 1).

    Each batch of :func:`backlog_history_lengths` is run in the parts the worker's
    scorer runs it in (``RecsModel.runs``: one padded length per part), on random
    items made before the clock starts: the model's cost for what the full pipeline
    scores, without the scorer's encoding and decoding.  Batches in the order of
    :func:`spread_order`, round and round, until ``seconds`` have passed (at least one
    batch): a run stopped early still samples the whole backlog, whose histories grow
    from its start to its end, and a short backlog is timed for ``seconds`` all the same
    (once through, the benchmark's 30 batches took about a second, too short a sample on
    a machine whose speed moves from second to second: 29,322 and 39,019 sequences/s
    twenty minutes apart on 2026-12-07).  The lengths and rows reported are those of
    the batches run.  The length-50 rows of :func:`onnx_bare` are the model's worst case.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    import numpy as np

    from recstream.streams.scoring import RuntimeOptions, bucket_length, load_recs_model

    settings = Settings()
    threads = settings.scoring_threads
    options = RuntimeOptions(
        ("CPUExecutionProvider",), False, settings.intra_op_threads, settings.inter_op_threads
    )
    model = load_recs_model(recs_file(model_dir), options)
    names = {i.name for i in model.session.get_inputs()}
    k = model.items_per_row(settings.top_k)  # what the worker asks for
    rng = np.random.default_rng(3)

    def feeds_of(batch: list[int]) -> list[dict[str, np.ndarray]]:
        """The session inputs of ``batch``'s parts."""
        parts = []
        for part in model.runs([range(length) for length in batch]):
            lengths = [min(batch[row], model.max_len) for row in part]
            width = bucket_length(max(lengths), model.max_len)
            parts.append(random_feeds(rng, names, len(model.item_ids), width, lengths, k))
        return parts

    def run_batch(parts: list[dict[str, np.ndarray]]) -> None:
        for feeds in parts:
            model.session.run(None, feeds)

    lengths = [lengths[index] for index in spread_order(len(lengths))]
    prepared = [feeds_of(batch) for batch in lengths]
    queued: list[tuple[Future[None], list[int]]] = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run_batch, prepared[:threads]))  # warm-up
        started = time.perf_counter()
        cpu_started = time.process_time()
        # Two batches queued per thread: a thread never waits for this loop.
        for parts, batch in itertools.cycle(zip(prepared, lengths, strict=True)):
            queued.append((pool.submit(run_batch, parts), batch))
            if len(queued) < 2 * threads:
                continue
            queued[-2 * threads][0].result()
            if time.perf_counter() - started >= seconds:
                break
        for future, _ in queued:  # those not started yet are not counted
            future.cancel()
        run = []
        for future, batch in queued:
            if not future.cancelled():
                future.result()
                run.append(batch)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    counted = [length for batch in run for length in batch]
    sequences = len(counted)
    return {
        "sequences": sequences,
        "sequences_per_s": sequences / elapsed if elapsed else None,
        # this process's CPU time (the scoring threads'; the waiting one uses next to none)
        "cpu_us_per_sequence": cpu / sequences * 1e6 if sequences else None,
        "threads": threads,
        "intra_op_threads": settings.intra_op_threads,
        "batches": len(run),
        "backlog_batches": len(lengths),
        "mean_rows": len(counted) / len(run) if run else 0.0,
        "mean_length": sum(min(n, model.max_len) for n in counted) / len(counted)
        if counted
        else 0.0,
    }


# ----------------------------------------------------------------------------
# One broker, everything
# ----------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def turns(
    scenarios: Sequence[str], repeats: int, deep: str, model_before: str | None = None
) -> list[tuple[int, str]]:
    """The order of the throughput runs, (repeat, scenario): the scenarios take turns,
    one run each per round, so that the machine's speed, which drifts over minutes
    here, weighs on each of them alike (one scenario's runs back to back, then the
    next's, put the drift into their ratio: 0.71 to 1.09 within an hour, 2026-12-04).
    ``deep`` runs last in each round: the workers of its last run stay up for the
    deeper measurements.  With ``model_before`` (one of ``scenarios``), a
    :data:`BARE_MODEL` run comes right before each of its runs, when no worker runs."""
    order = sorted(scenarios, key=lambda scenario: scenario == deep)  # stable
    if model_before in order:
        order.insert(order.index(model_before), BARE_MODEL)
    return [(repeat, scenario) for repeat in range(repeats) for scenario in order]


async def measure_throughput(
    broker: EmbeddedBroker,
    backlog: bc.Backlog,
    cfg: Config,
    model_dir: Path | None,
    deep: str,
    model_lengths: list[list[int]] | None = None,
) -> tuple[dict[str, Any], Workers | None, list[dict[str, Any]]]:
    """Each scenario's throughput entry on ``broker`` (in ``cfg.scenarios`` order), the
    workers kept running from the last run of ``deep`` (the deep part's scenario) when
    ``cfg.deep``, and, given the backlog's ``model_lengths``, the bare model's runs
    (:func:`onnx_backlog`), one right before each full-pipeline run: goal 2's bound,
    measured in the same rounds as the pipeline it bounds."""
    entries: dict[str, dict[str, Any]] = {}
    runnable = []
    for scenario in cfg.scenarios:
        skipped = skip_reason(scenario, model_dir, broker.traits.transactions)
        if skipped:
            entries[scenario] = {"skipped": skipped}
        else:
            entries[scenario] = {"label": label(scenario)}
            runnable.append(scenario)
    runs: dict[str, list[dict[str, Any]]] = {scenario: [] for scenario in runnable}
    model_runs: list[dict[str, Any]] = []
    kept: Workers | None = None
    kind = broker.kind
    time_model = (
        functools.partial(onnx_backlog, model_dir, model_lengths, cfg.onnx_seconds)
        if model_dir is not None and model_lengths is not None
        else None
    )
    model_before = "recstream-full" if time_model is not None else None
    for repeat, scenario in turns(runnable, cfg.repeats, deep, model_before):
        if scenario == BARE_MODEL and time_model is not None:
            log(f"{kind}: bare onnxruntime on the backlog's histories, run {repeat + 1}")
            try:
                model_runs.append(await asyncio.to_thread(time_model))
            except Exception as exc:  # the goal-2 line then uses the run's first measurement
                log(f"{kind}: the bare model failed: {exc!r}"[:300])
            continue
        entry = entries[scenario]
        if "error" in entry:  # one broken scenario must not hide the others
            continue
        log(f"{kind}: {scenario} run {repeat + 1}/{cfg.repeats}")
        try:
            if scenario.startswith("raw-"):
                runs[scenario].append(await raw_throughput(broker, scenario, backlog, cfg))
                continue
            keep = cfg.deep and scenario == deep and repeat == cfg.repeats - 1
            result, group = await app_throughput(
                broker, scenario, backlog, cfg, keep=keep, model_dir=model_dir
            )
            runs[scenario].append(result)
            if keep:
                kept = group
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2_000]
            log(f"{kind}: {scenario} failed: {entry['error'][:300]}")
    for scenario, done in runs.items():
        if done:
            entries[scenario].update(summarise(done))
    return entries, kept, model_runs


def summarise_model(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The bare model's runs of :func:`measure_throughput` as one figure: medians, every
    run's rate kept ({} when there was none)."""
    if not runs:
        return {}
    rates = [run["sequences_per_s"] for run in runs]
    return {
        "sequences_per_s": bc.median(rates),
        "rates": rates,
        "cpu_us_per_sequence": bc.median([run["cpu_us_per_sequence"] for run in runs]),
        "threads": runs[0]["threads"],
        "intra_op_threads": runs[0]["intra_op_threads"],
    }


async def run_broker(
    kind: str,
    backlog: bc.Backlog,
    cfg: Config,
    model_dir: Path | None,
    model_lengths: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Every broker-bound measurement on one fresh broker of ``kind`` (with the bare
    model timed in turns with the full pipeline, given the backlog's ``model_lengths``)."""
    out: dict[str, Any] = {"caveats": BROKER_CAVEATS[kind], "throughput": {}}
    broker = EmbeddedBroker(kind)  # type: ignore[arg-type]
    broker.start()
    try:
        main = "recstream-full" if model_dir and "recstream-full" in cfg.scenarios else None
        main = main or "recstream-passthrough"
        out["main_scenario"] = main
        deep = cfg.deep_scenario or main
        out["throughput"], kept, model_runs = await measure_throughput(
            broker, backlog, cfg, model_dir, deep, model_lengths
        )
        if model_runs:
            out["bare_model"] = summarise_model(model_runs)
        if kept is not None:
            try:
                out.update(
                    await deep_measurements(broker, deep, kept, out, backlog, cfg, model_dir)
                )
            finally:
                kept.stop()
                await bc.delete_run_topics(broker.bootstrap_servers, kept.target.app_id)
        out["ratios"] = ratios(out["throughput"], main)
        out["cpu_cost_ratios"] = ratios(out["throughput"], main, "app_cpu_us_per_event")
        out["round_ratios"] = round_ratios(out["throughput"], main)
    finally:
        broker.stop()
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats (every run's rate kept)."""
    rates = [run["rate"] for run in runs]
    rate = bc.median(rates)
    summary: dict[str, Any] = {
        "rate": rate,
        "rates": rates,
        "us_per_event": per_event(rate),
    }
    cpus = [run["cpu_percent"] for run in runs if run.get("cpu_percent")]
    if cpus:
        summary["cpu_percent"] = {role: bc.median([c[role] for c in cpus]) for role in cpus[0]}
        summary["app_cpu_us_per_event"] = bc.median([run["app_cpu_us_per_event"] for run in runs])
    gcs = [run for run in runs if "gc" in run]
    if gcs:
        summary["gc_us_per_event"] = bc.median([run["gc_us_per_event"] for run in gcs])
        summary["gc_collections"] = bc.median([run["gc"]["collections"] for run in gcs])
        longest = [run["gc"]["longest_at_most_s"] for run in gcs]
        summary["gc_longest_at_most_s"] = max(
            (bound for bound in longest if bound is not None), default=None
        )
    batches = [run["scoring_batches"] for run in runs if run.get("scoring_batches")]
    if batches:
        summary["events_per_batch"] = bc.median([b["mean_events"] for b in batches])
    threads = [run["scoring_threads"] for run in runs if run.get("scoring_threads")]
    if threads:
        summary["scoring_threads"] = {
            state: bc.median([t.get(state, 0.0) for t in threads]) for state in threads[0]
        }
    starts = [run["cold_start_s"] for run in runs if "cold_start_s" in run]
    if starts:
        summary["cold_start_s"] = bc.median(starts)
    return summary


def gc_summary(throughput: dict[str, Any]) -> str:
    """The collector's pauses per scenario that reported them, as one line of text."""
    parts = []
    for name, entry in throughput.items():
        if "gc_us_per_event" not in entry:
            continue
        longest = entry.get("gc_longest_at_most_s")
        bound = "none" if longest is None else f"<= {longest:g} s"
        parts.append(
            f"{name} {entry['gc_us_per_event']:.1f} µs/ev in {entry['gc_collections']:g} "
            f"collections (longest pause {bound})"
        )
    return "; ".join(parts)


def batch_summary(throughput: dict[str, Any]) -> str:
    """The mean micro-batch per scenario that reported it, as one line of text."""
    return "; ".join(
        f"{name} {entry['events_per_batch']:,.0f} events"
        for name, entry in throughput.items()
        if "events_per_batch" in entry
    )


def scoring_threads_summary(throughput: dict[str, Any]) -> str:
    """How each scenario's scoring threads spent their scoring time, as one line of text."""
    return "; ".join(
        f"{name} " + ", ".join(f"{state} {share:.0%}" for state, share in shares.items())
        for name, entry in throughput.items()
        if (shares := entry.get("scoring_threads"))
    )


def cpu_summary(throughput: dict[str, Any]) -> str:
    """Each scenario's CPU by role (app, broker, observer, machine idle), as one line of
    text; those measured without the machine's idle CPU are left out."""
    return "; ".join(
        f"{name} " + ", ".join(f"{role} {share:.0f}" for role, share in cpu.items())
        for name, entry in throughput.items()
        if bc.IDLE in (cpu := entry.get("cpu_percent") or {})
    )


def ratios(throughput: dict[str, Any], main: str, key: str = "rate") -> dict[str, float]:
    """``key`` of the main recstream scenario over the others' (same run, same broker)."""
    mine = throughput.get(main, {}).get(key)
    if not mine:
        return {}
    return {
        f"{main}/{name}": mine / entry[key]
        for name, entry in throughput.items()
        if name != main and entry.get(key)
    }


def full_pipeline_share(
    throughput: dict[str, Any], model: dict[str, Any], cores: int | None = None
) -> dict[str, Any]:
    """The issue's goal 2: the full pipeline's rate over min(pass-through, the model's
    limit on the backlog's histories), ``model`` being :func:`onnx_backlog`'s result;
    empty when a figure is missing.

    With the CPU figures, also the pipeline's CPU efficiency: the CPU the pass-through
    and the bare model take per event, together, over what the full pipeline takes (1:
    scoring in the worker costs no more than its two parts apart).  On a machine whose
    cores the broker and the load generator share with the worker, the rate ratio
    falls short of what the worker alone could do; the CPU ratio does not.

    With the machine's ``cores``, also the highest share it could show (``ceiling``): a
    worker that lost no CPU (the pass-through's and the bare model's CPU per event,
    nothing more) on the cores it can use (the machine's, at most one per scoring
    thread and one for the event loop), and on what the broker and the load generator
    left of them in the full pipeline's runs.  The bare model's threads take every core
    of a small machine, so there the goal may lie above what any worker could reach.
    """
    full = throughput.get("recstream-full", {})
    passthrough = throughput.get("recstream-passthrough", {})
    model_limit = model.get("sequences_per_s")
    if not full.get("rate") or not passthrough.get("rate") or not model_limit:
        return {}
    bound = min(passthrough["rate"], model_limit)
    share: dict[str, Any] = {
        "full": full["rate"],
        "passthrough": passthrough["rate"],
        "model_limit": model_limit,
        "bound_by": "passthrough" if passthrough["rate"] <= model_limit else "model",
        "share": full["rate"] / bound,
    }
    if model.get("rates"):  # timed in turns with the full pipeline (:func:`summarise_model`)
        share["model_rates"] = model["rates"]
    passthrough_cpu = passthrough.get("app_cpu_us_per_event")
    model_cpu = model.get("cpu_us_per_sequence")
    full_cpu = full.get("app_cpu_us_per_event")
    if passthrough_cpu and model_cpu and full_cpu:
        share["cpu_efficiency"] = (passthrough_cpu + model_cpu) / full_cpu
        share["cpu_us_per_event"] = {
            "passthrough": passthrough_cpu,
            "model": model_cpu,
            "full": full_cpu,
        }
        if cores:
            threads = model.get("threads")
            usable = min(cores, threads + 1) if threads else cores
            others = full.get("cpu_percent", {})
            taken = (others.get("broker", 0.0) + others.get("observer", 0.0)) / 100.0
            left = min(usable, max(cores - taken, 0.0))
            lossless = 1e6 / (passthrough_cpu + model_cpu)  # events/s per core
            share["ceiling"] = {
                "cores": usable,
                "on_cores": usable * lossless / bound,
                "cores_left": left,
                "beside_others": left * lossless / bound,
            }
    return share


def add_full_pipeline_shares(results: dict[str, Any]) -> None:
    """:func:`full_pipeline_share` on every broker of ``results``: over the bare model
    timed in turns with that broker's full-pipeline runs, or, where there is none
    (results before 2026-12-07 15:30 UTC), over the one timed at the run's start."""
    first = results.get("onnx", {}).get("backlog", {})
    cores = results.get("meta", {}).get("cpus")
    meta = results.get("meta", {})
    confined = bool(meta.get("worker_cpus")) or meta.get("worker_cpu_limit") is not None
    for out in results["brokers"].values():
        if confined:  # the workers had fewer cores than the bare model: no like-for-like share
            out["full_pipeline_share"] = {}
            continue
        in_turns = out.get("bare_model", {})
        model = in_turns if in_turns.get("sequences_per_s") else first
        out["full_pipeline_share"] = full_pipeline_share(out["throughput"], model, cores)


def round_ratios(throughput: dict[str, Any], main: str) -> dict[str, dict[str, Any]]:
    """The main scenario's rate over each other's, round by round (the runs take turns:
    :func:`turns`), and their median; only for scenarios with as many runs as it."""
    mine = throughput.get(main, {}).get("rates") or []
    found = {}
    for name, entry in throughput.items():
        theirs = entry.get("rates") or []
        if name == main or len(theirs) != len(mine) or not all(theirs):
            continue
        rounds = [a / b for a, b in zip(mine, theirs, strict=True)]
        found[f"{main}/{name}"] = {"rounds": rounds, "median": bc.median(rounds)}
    return found


async def deep_measurements(
    broker: EmbeddedBroker,
    scenario: str,
    group: Workers,
    out: dict[str, Any],
    backlog: bc.Backlog,
    cfg: Config,
    model_dir: Path | None,
) -> dict[str, Any]:
    """Latency, state/recovery and scale-out of the main scenario (its workers still run)."""
    kind = broker.kind
    capacity = out["throughput"][scenario]["rate"]
    deep: dict[str, Any] = {"deep_scenario": scenario}
    phases = []
    for load in cfg.latency_loads:
        log(f"{kind}: latency of {scenario} at {load:.0%} of {capacity:,.0f}/s")
        tag = f"lat{int(load * 100)}-"
        try:
            phase = await latency_phase(
                broker.bootstrap_servers,
                group.target,
                load * capacity,
                cfg.latency_seconds,
                cfg.events / cfg.users,
                tag,
                cpu_window(group, broker),
                group.web_ports[0] if group.web_ports else None,
            )
            phases.append({"load": load, **phase})
        except Exception as exc:
            phases.append({"load": load, "error": f"{type(exc).__name__}: {exc}"})
    deep["latency"] = phases
    log(f"{kind}: state size and recovery of {scenario}")
    cold = out["throughput"][scenario].get("cold_start_s", 0.0)
    try:
        deep["state"] = await state_and_recovery(broker, group, cold, cfg)
        if not broker.traits.exact_end_offsets:
            deep["state"]["recovery_caveat"] = (
                "this broker's ListOffsets 'latest' is wrong: Faust stops recovery early"
            )
    except Exception as exc:
        deep["state"] = {"error": f"{type(exc).__name__}: {exc}"}
    group.stop()
    scale = []
    for workers in cfg.scale_workers:
        log(f"{kind}: scale-out of {scenario} with {workers} worker(s)")
        try:
            result, _ = await app_throughput(
                broker, scenario, backlog, cfg, workers=workers, model_dir=model_dir
            )
            scale.append({"workers": workers, **result})
        except Exception as exc:
            scale.append({"workers": workers, "error": f"{type(exc).__name__}: {exc}"})
    deep["scale_out"] = scale
    log(f"{kind}: rebalance pauses of {scenario}")
    try:
        deep["rebalance"] = await rebalance_pauses(broker, scenario, capacity, cfg, model_dir)
    except Exception as exc:
        deep["rebalance"] = {"error": f"{type(exc).__name__}: {exc}"}
    return deep


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def throughput_table(results: dict[str, Any]) -> str:
    """Scenario rows, one column group per broker."""
    kinds = list(results["brokers"])
    headers = ["scenario"]
    for kind in kinds:
        headers += [f"{kind} ev/s", f"{kind} µs/ev", f"{kind} app CPU %", f"{kind} CPU µs/ev"]
    rows = []
    measured = {name for kind in kinds for name in results["brokers"][kind]["throughput"]}
    for scenario in table_order(measured):
        row = [label(scenario)]
        present = False
        for kind in kinds:
            entry = results["brokers"][kind]["throughput"].get(scenario, {})
            present = present or bool(entry)
            if entry.get("rate"):
                cpu = entry.get("cpu_percent", {}) or {}
                row += [
                    bc.fmt(entry["rate"]),
                    bc.fmt(entry["us_per_event"], 1),
                    bc.fmt(cpu.get("app")),
                    bc.fmt(entry.get("app_cpu_us_per_event"), 1),
                ]
            else:
                reason = entry.get("skipped") or ("error" if "error" in entry else "-")
                row += [reason, "-", "-", "-"]
        if present:
            rows.append(row)
    return bc.markdown_table(headers, rows)


#: The roles whose CPU a latency phase records (see :func:`latency_phase`).
LATENCY_CPU_ROLES = ("app", "broker", "observer", bc.IDLE)


def busy_cell(busy: dict[str, float] | None) -> str:
    """Scoring threads busy on average (:func:`bc.scoring_threads_busy`), and how many of
    them waited for a core: "1.37 (0.54 in the run queue)"; "-" without scoring."""
    if not busy:
        return "-"
    return f"{sum(busy.values()):.2f} ({busy.get('runqueue', 0.0):.2f} in the run queue)"


def deep_tables(results: dict[str, Any]) -> list[str]:
    """Latency, state, scale-out and rebalance sections per broker."""
    parts = []
    for kind, out in results["brokers"].items():
        if "latency" not in out:
            continue
        scenario = out["deep_scenario"]
        parts.append(f"### {kind}: {scenario}\n")
        rows = [
            [
                f"{p['load']:.0%}",
                bc.fmt(p.get("rate")),
                p.get("received", "-"),
                bc.fmt(p.get("p50_ms"), 1),
                bc.fmt(p.get("p99_ms"), 1),
                bc.fmt(p.get("p999_ms"), 1),
                *(bc.fmt((p.get("cpu_percent") or {}).get(role)) for role in LATENCY_CPU_ROLES),
                busy_cell(p.get("scoring_threads_busy")),
            ]
            for p in out["latency"]
        ]
        parts.append(
            "Latency, event ts → output receipt; CPU in % of one core while the load ran "
            "(load generator: this benchmark's process, producing and watching; idle: what "
            "no process used); scoring threads busy on average, of them waiting for a "
            "core:\n\n"
            + bc.markdown_table(
                [
                    "load",
                    "ev/s",
                    "outputs",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "app CPU %",
                    "broker CPU %",
                    "load generator CPU %",
                    "idle CPU %",
                    "scoring threads busy",
                ],
                rows,
            )
        )
        state = out.get("state", {})
        parts.append(
            "State and recovery:\n\n"
            + bc.markdown_table(
                ["measure", "value"],
                [[k, bc.fmt(v, 3) if isinstance(v, float) else v] for k, v in state.items()],
            )
        )
        rows = [
            [
                s["workers"],
                bc.fmt(s.get("rate")),
                bc.fmt((s.get("cpu_percent") or {}).get("app")),
                " / ".join(map(str, s.get("events_in_by_worker", []))) or "-",
                s.get("error", "")[:80],
            ]
            for s in out.get("scale_out", [])
        ]
        headers = ["workers", "ev/s", "app CPU % (all workers)", "clicks read by each", "error"]
        parts.append(
            "Scale-out (one backlog, N worker processes):\n\n" + bc.markdown_table(headers, rows)
        )
        reb = out.get("rebalance", {})
        if "joins" in reb:
            rows = [["1 (no join)", bc.fmt(reb["baseline_max_gap_s"], 2)]] + [
                [f"{j['workers_after']} (join)", bc.fmt(j["max_gap_s"], 2)] for j in reb["joins"]
            ]
            read = " / ".join(map(str, reb.get("events_in_by_worker", []))) or "-"
            parts.append(
                f"Rebalance pause at {bc.fmt(reb['load_rate'])} ev/s (longest output gap):\n\n"
                + bc.markdown_table(["workers", "max gap s"], rows)
                + f"\nAnswered {reb['received']} of {reb['sent']} events; clicks read by each "
                f"worker: {read}.\n"
            )
        elif "error" in reb:
            parts.append(f"Rebalance: {reb['error'][:200]}")
    return parts


def onnx_table(results: dict[str, Any]) -> str:
    onnx = results.get("onnx", {})
    if "batches" not in onnx:
        return f"onnxruntime: {onnx.get('error') or onnx.get('skipped', 'not run')}"
    rows = [
        [b["batch"], bc.fmt(b["sequences_per_s"]), bc.fmt(b["ms_per_batch"], 2)]
        for b in onnx["batches"]
    ]
    model = onnx["model"]
    text = (
        f"Bare onnxruntime, SASRec-size {model.get('file', 'recs.onnx')} "
        f"({model['items']:,} items, length "
        f"{model['max_len']}), CPU, {onnx['threads']} threads:\n\n"
        + bc.markdown_table(["batch", "sequences/s", "ms/batch"], rows)
    )
    backlog = onnx.get("backlog")
    if backlog and backlog.get("sequences_per_s"):
        run, of_all = backlog["batches"], backlog.get("backlog_batches", backlog["batches"])
        if run == of_all:
            which = f"its {run:,} batches"
        elif run < of_all:
            which = f"{run:,} of its {of_all:,} batches"
        else:  # round and round the backlog (since 2026-12-07)
            which = f"{run:,} batches, round and round its {of_all:,},"
        text += (
            f"\n\nOn the backlog's own histories ({which} of "
            f"{backlog['mean_rows']:,.0f} histories, {backlog['mean_length']:.1f} tokens long on "
            "average, replayed offline through the pipeline; run in the parts the scorer runs "
            f"them in, as the worker's scorer: {backlog['threads']} threads, "
            f"{backlog['intra_op_threads']} onnxruntime thread per run): "
            f"**{backlog['sequences_per_s']:,.0f} sequences/s** over {backlog['sequences']:,} "
            "histories, timed at the start of the run (the goal-2 lines above use each "
            "broker's own runs, timed right before its full-pipeline runs, where it has them)"
            + (
                f", {backlog['cpu_us_per_sequence']:.1f} µs of CPU per history."
                if backlog.get("cpu_us_per_sequence")
                else "."
            )
        )
    return text


def _env_note(env: dict[str, str] | None) -> str:
    if not env:
        return ""
    return (
        " Worker settings from the environment: "
        + ", ".join(f"`{k}={v}`" for k, v in sorted(env.items()))
        + "."
    )


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    meta = results["meta"]
    parts = [
        "# Pipeline speed (issue #8)\n",
        f"Run {meta['started_at']} on {meta['cpus']} CPUs ({meta['mode']}); backlog "
        f"{meta['events']:,} clicks, {meta['backlog_source']}; {meta['partitions']} partitions; "
        f"medians of {meta['repeats']} run(s)"
        + (", the scenarios taking turns" if meta.get("runs_in_turns") else "")
        + f"; load average at start {meta['load_average']}. "
        "Absolute figures depend on what else ran; compare ratios within this run."
        + _env_note(meta.get("recstream_env"))
        + (
            f" The apps were pinned to CPU(s) {', '.join(map(str, cpus))}; the brokers and "
            "the benchmark were not."
            if (cpus := meta.get("worker_cpus"))
            else ""
        )
        + (
            f" Each app process, a worker's model processes included, was limited to "
            f"{limit:g} CPUs (a cgroup of its own, as a container's CPU limit); the brokers "
            "and the benchmark were not."
            if (limit := meta.get("worker_cpu_limit")) is not None
            else ""
        )
        + "\n",
        "## Throughput\n",
        "ev/s: outputs per second from the first output to the last (median of the runs); "
        "µs/ev: wall time per event; app CPU %: the app's processes, in % of one core, over "
        "that window; CPU µs/ev: the app's CPU time per event (least disturbed by other load "
        "on the machine).\n",
        throughput_table(results),
        "",
    ]
    for kind, out in results["brokers"].items():
        if out.get("ratios"):
            ratio_text = ", ".join(f"{k} = {v:.2f}" for k, v in out["ratios"].items())
            parts.append(f"Throughput ratios on {kind}: {ratio_text}\n")
        if out.get("round_ratios"):
            round_text = ", ".join(
                f"{k} = {' / '.join(f'{r:.2f}' for r in v['rounds'])} (median {v['median']:.2f})"
                for k, v in out["round_ratios"].items()
            )
            parts.append(f"Throughput ratios on {kind}, round by round: {round_text}\n")
        if out.get("cpu_cost_ratios"):
            cost_text = ", ".join(f"{k} = {v:.2f}" for k, v in out["cpu_cost_ratios"].items())
            parts.append(f"CPU-cost ratios on {kind} (CPU µs/ev over CPU µs/ev): {cost_text}\n")
        share = out.get("full_pipeline_share")
        if share:
            parts.append(
                f"Full pipeline on {kind} over min(pass-through, bare model on the backlog's "
                f"histories) (goal 2, aim >= 0.8): {share['full']:,.0f} / "
                f"min({share['passthrough']:,.0f}, {share['model_limit']:,.0f}) = "
                f"**{share['share']:.2f}** (bound by the {share['bound_by']})"
                + (
                    "; the bare model timed right before each full-pipeline run: "
                    + " / ".join(f"{rate:,.0f}" for rate in rates)
                    + " sequences/s"
                    if (rates := share.get("model_rates"))
                    else ""
                )
                + (
                    f"; CPU per event, pass-through {cpu['passthrough']:.1f} + bare model "
                    f"{cpu['model']:.1f} µs against {cpu['full']:.1f} µs in the full pipeline: "
                    f"CPU efficiency **{share['cpu_efficiency']:.2f}**"
                    if (cpu := share.get("cpu_us_per_event"))
                    else ""
                )
                + (
                    f"; the most this machine could show (a worker losing no CPU: "
                    f"{cpu['passthrough'] + cpu['model']:.1f} µs per event): "
                    f"{ceiling['on_cores']:.2f} on {ceiling['cores']} cores, "
                    f"{ceiling['beside_others']:.2f} on the {ceiling['cores_left']:.2f} "
                    "the broker and the load generator left"
                    if cpu and (ceiling := share.get("ceiling"))
                    else ""
                )
                + "\n"
            )
        throughput = out.get("throughput", {})
        summaries: tuple[tuple[Callable[[dict[str, Any]], str], str], ...] = (
            (
                gc_summary,
                f"Garbage collector on {kind} (the worker's `recstream_gc_pause_seconds`, "
                "median of the runs)",
            ),
            (
                batch_summary,
                f"Mean micro-batch on {kind} (the worker's `recstream_scoring_batch_size`, "
                "median of the runs)",
            ),
            (
                scoring_threads_summary,
                f"Scoring threads on {kind}, share of their scoring time (the worker's "
                "`recstream_scoring_thread_seconds_total`, median of the runs; runqueue: "
                "waiting for a core, blocked: for the GIL, or for the model processes' answers "
                "where the worker has them)",
            ),
            (
                cpu_summary,
                f"CPU on {kind} from the first output to the last, in % of one core of "
                f"{results['meta']['cpus']} (median of the runs; idle: what no process used)",
            ),
        )
        for summary, about in summaries:
            if text := summary(throughput):
                parts.append(f"{about}: {text}\n")
    parts += [
        "## Latency, state, scale-out\n",
        *deep_tables(results),
        "",
        "## Scoring\n",
        onnx_table(results),
        "",
    ]
    if "capacity_guide" in results:
        parts += ["## Capacity guide\n", capacity_guide.render(results["capacity_guide"])]
    parts += ["## Broker caveats\n"] + [f"- {k}: {v}" for k, v in BROKER_CAVEATS.items()]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


async def run(cfg: Config, mode: str, with_models: bool) -> dict[str, Any]:
    """Every measurement of one configuration."""
    started = time.time()
    backlog = bc.make_backlog(cfg.events, cfg.users, cfg.onnx_items)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            "mode": mode,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "backlog_source": backlog.source,
            **{k: v for k, v in asdict(cfg).items() if not isinstance(v, tuple)},
            "brokers": list(cfg.brokers),
            "scenarios": list(cfg.scenarios),
            "worker_cpus": list(cfg.worker_cpus),
            "runs_in_turns": True,  # (:func:`turns`; earlier results ran each back to back)
            # the workers inherit these (what a run changed from the defaults)
            "recstream_env": {k: v for k, v in os.environ.items() if k.startswith("RECSTREAM_")},
        },
        "brokers": {},
    }
    model_dir: Path | None = None
    if with_models:
        try:
            log(f"building a SASRec-size model ({cfg.onnx_items:,} items) if not cached")
            model_dir = sasrec_size_models(cfg.onnx_items)
            results["onnx"] = onnx_bare(model_dir, cfg)
        except Exception as exc:
            results["onnx"] = {"error": f"{type(exc).__name__}: {exc}"[:1_000]}
            model_dir = None
    else:
        results["onnx"] = {"skipped": "--no-models"}
    lengths: list[list[int]] | None = None
    if model_dir is not None:
        log("bare onnxruntime on the backlog's own histories")
        try:
            lengths = backlog_history_lengths(backlog, cfg.partitions)
            results["onnx"]["backlog"] = onnx_backlog(model_dir, lengths, cfg.onnx_seconds)
        except Exception as exc:  # the goal-2 line is then missing; the rest still runs
            results["onnx"]["backlog"] = {"error": f"{type(exc).__name__}: {exc}"[:1_000]}
    full_model_dir = model_dir if worker_available() is None else None
    for kind in cfg.brokers:
        log(f"broker {kind}")
        results["brokers"][kind] = await run_broker(kind, backlog, cfg, full_model_dir, lengths)
    add_full_pipeline_shares(results)
    results["capacity_guide"] = capacity_guide.from_results(results)
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration (~2 minutes)")
    parser.add_argument("--brokers", help="comma-separated subset of tansu,noida")
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated subset of {THROUGHPUT_SCENARIOS}; a recstream scenario "
        f"with settings, e.g. recstream-full{VARIANT_SEP}RECSTREAM_SCORING_THREADS=3, runs "
        "as one more scenario in turns with the rest (values without commas)",
    )
    parser.add_argument("--events", type=int, help="backlog size")
    parser.add_argument("--users", type=int, help="distinct users in the backlog")
    parser.add_argument("--repeats", type=int, help="runs per throughput figure (median)")
    parser.add_argument("--no-deep", action="store_true", help="skip latency/state/scale-out")
    parser.add_argument("--no-models", action="store_true", help="skip onnxruntime and scoring")
    parser.add_argument("--scale-workers", help="comma-separated worker counts, e.g. 1,2,3")
    parser.add_argument(
        "--deep-scenario",
        help="run latency, state and scale-out on this scenario instead of the main one "
        "(recstream-full with models, else recstream-passthrough); it must be in --scenarios",
    )
    parser.add_argument(
        "--rerender",
        type=Path,
        help="rewrite the .md (and capacity guide) of an existing JSON result, run nothing",
    )
    parser.add_argument("--latency-seconds", type=float, help="seconds of paced load per level")
    parser.add_argument(
        "--worker-cpus",
        help="comma-separated CPU numbers the apps (workers and their children) are pinned "
        "to, e.g. 1: a worker with one core of its own, as in a pod with one CPU (goal 2's "
        "share is then not computed: the bare model runs on every core)",
    )
    parser.add_argument(
        "--worker-cpu-limit",
        type=positive_float,
        help="CPUs each app process (a worker with its model processes) may use in all: "
        "a cgroup of its own with that CPU quota, as a container's CPU limit (needs root; "
        "goal 2's share is then not computed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where the JSON goes, the .md beside it (default benchmarks/results/"
        "pipeline_speed.json, or pipeline_speed_quick.json with --quick)",
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    """The quick or full configuration with the command-line overrides applied."""
    cfg = QUICK if args.quick else FULL
    updates: dict[str, Any] = {}
    if args.brokers:
        updates["brokers"] = tuple(b.strip() for b in args.brokers.split(",") if b.strip())
    if args.scenarios:
        names = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        problems = [problem for name in names if (problem := scenario_problem(name))]
        if problems:
            raise SystemExit("; ".join(problems))
        updates["scenarios"] = names
    for name in ("events", "users", "repeats"):
        if getattr(args, name):
            updates[name] = getattr(args, name)
    if args.scale_workers:
        updates["scale_workers"] = tuple(int(n) for n in args.scale_workers.split(","))
    if args.deep_scenario:
        if args.deep_scenario not in updates.get("scenarios", cfg.scenarios):
            raise SystemExit(f"--deep-scenario {args.deep_scenario} is not among the scenarios")
        updates["deep_scenario"] = args.deep_scenario
    if args.latency_seconds:
        updates["latency_seconds"] = args.latency_seconds
    if args.no_deep:
        updates["deep"] = False
    if args.worker_cpus:
        updates["worker_cpus"] = parse_cpus(args.worker_cpus)
    if args.worker_cpu_limit:
        updates["worker_cpu_limit"] = args.worker_cpu_limit
    return replace(cfg, **updates)


def positive_float(text: str) -> float:
    """An argument that must be a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not above 0: {text}")
    return value


def parse_cpus(text: str) -> tuple[int, ...]:
    """``--worker-cpus``: comma-separated CPU numbers, each one this process may use."""
    cpus = tuple(int(cpu) for cpu in text.split(",") if cpu.strip())
    unknown = set(cpus) - os.sched_getaffinity(0)
    if unknown:
        raise SystemExit(f"--worker-cpus: not CPUs of this process: {sorted(unknown)}")
    return cpus


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        results = orjson.loads(args.rerender.read_bytes())
        results["capacity_guide"] = capacity_guide.from_results(results)
        add_full_pipeline_shares(results)
        for out in results["brokers"].values():
            # (results before main_scenario was written ran the deep part on the main one)
            main_scenario = out.get("main_scenario") or out.get(
                "deep_scenario", "recstream-passthrough"
            )
            out["cpu_cost_ratios"] = ratios(
                out["throughput"], main_scenario, "app_cpu_us_per_event"
            )
            if results["meta"].get("runs_in_turns"):  # else the runs of a round are not paired
                out["round_ratios"] = round_ratios(out["throughput"], main_scenario)
        args.rerender.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        args.rerender.with_suffix(".md").write_text(render(results))
        print(render(results))
        return 0
    cfg = config_from(args)
    mode = "quick" if args.quick else "full"
    output = args.output or bc.RESULTS_DIR / f"pipeline_speed{'_quick' if args.quick else ''}.json"
    results = asyncio.run(run(cfg, mode, with_models=not args.no_models))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    report = render(results)
    output.with_suffix(".md").write_text(report)
    print(report)
    log(f"wrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
