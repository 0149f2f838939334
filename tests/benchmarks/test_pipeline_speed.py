"""The pipeline benchmark: its arithmetic, its bookkeeping, and one tiny end-to-end run.

Timed figures are never asserted (they depend on the machine); the tests check that the
code computes what it says and that a run writes well-formed results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import bench_common as bc
import capacity_guide
import orjson
import pipeline_speed as ps
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from recstream.streams.broker import EmbeddedBroker
from recstream.streams.metrics import Metrics
from recstream.streams.records import parse_click
from recstream.streams.thread_clock import ThreadTimes

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"

# ----------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------


def test_recstream_targets_put_the_worker_on_the_run_s_topics_and_group(tmp_path: Path) -> None:
    target = ps.make_target("recstream-full", "127.0.0.1:19092", 3, model_dir=tmp_path)
    env = target.env
    prefix = env["RECSTREAM_TOPIC_PREFIX"]
    assert env["RECSTREAM_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert prefix == env["RECSTREAM_APP_ID"] + "." and target.source == f"{prefix}clicks"
    assert env["RECSTREAM_PARTITIONS"] == "3" and int(env["RECSTREAM_WEB_PORT"]) > 0
    assert env["RECSTREAM_MODEL_DIR"] == str(tmp_path)
    assert env["RECSTREAM_PROVIDERS"] == "CPUExecutionProvider"


def test_the_in_thread_full_pipeline_differs_only_in_where_the_model_runs(
    tmp_path: Path,
) -> None:
    full = ps.make_target("recstream-full", "127.0.0.1:19092", 2, model_dir=tmp_path)
    in_thread = ps.make_target("recstream-full-in-thread", "127.0.0.1:19092", 2, model_dir=tmp_path)
    assert "RECSTREAM_MODEL_PROCESSES" not in full.env  # the worker's default: processes
    assert in_thread.env.pop("RECSTREAM_MODEL_PROCESSES") == "false"
    assert in_thread.command == full.command
    different = {"RECSTREAM_TOPIC_PREFIX", "RECSTREAM_APP_ID", "RECSTREAM_WEB_PORT"}
    different |= {"RECSTREAM_DATA_DIR"}
    assert {k: v for k, v in in_thread.env.items() if k not in different} == {
        k: v for k, v in full.env.items() if k not in different
    }
    assert in_thread.env.keys() == full.env.keys()


def test_a_variant_is_its_base_scenario_with_its_settings(tmp_path: Path) -> None:
    name = "recstream-full-in-thread+RECSTREAM_SCORING_THREADS=3+RECSTREAM_BATCH_SIZE=512"
    cfg = ps.config_from(ps.parse_args(["--scenarios", f"recstream-full,{name}"]))
    assert cfg.scenarios == ("recstream-full", name)
    base = ps.make_target("recstream-full-in-thread", "127.0.0.1:19092", 2, model_dir=tmp_path)
    variant = ps.make_target(name, "127.0.0.1:19092", 2, model_dir=tmp_path)
    assert variant.scenario == name
    for topic in (variant.source, variant.sink, variant.app_id):
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic), topic
    assert variant.command == base.command
    assert variant.env.pop("RECSTREAM_SCORING_THREADS") == "3"
    assert variant.env.pop("RECSTREAM_BATCH_SIZE") == "512"
    assert variant.env["RECSTREAM_MODEL_PROCESSES"] == "false"  # the base's own setting
    assert variant.env.keys() == base.env.keys()
    assert ps.label(name) == (
        ps.LABELS["recstream-full-in-thread"]
        + ", with RECSTREAM_SCORING_THREADS=3, RECSTREAM_BATCH_SIZE=512"
    )
    assert ps.skip_reason(name, None) == ps.skip_reason("recstream-full-in-thread", None)
    assert ps.table_order([name, "recstream-full", "raw-decode"]) == [
        "raw-decode",
        "recstream-full",
        name,
    ]


@pytest.mark.parametrize(
    ("scenarios", "problem"),
    [
        ("recstream-fast+RECSTREAM_SCORING_THREADS=3", "unknown scenario 'recstream-fast'"),
        ("quix-memory+RECSTREAM_SCORING_THREADS=3", "only recstream scenarios"),
        ("recstream-full+SCORING_THREADS=3", "RECSTREAM_NAME=value"),
        ("recstream-full+RECSTREAM_SCORING_THREADS", "RECSTREAM_NAME=value"),
    ],
)
def test_a_variant_that_cannot_run_is_refused(scenarios: str, problem: str) -> None:
    with pytest.raises(SystemExit, match=problem):
        ps.config_from(ps.parse_args(["--scenarios", scenarios]))


def test_a_variant_gets_its_own_row() -> None:
    name = "recstream-full+RECSTREAM_SCORING_THREADS=3"
    entry = {"rate": 1_000.0, "us_per_event": 1_000.0, "app_cpu_us_per_event": 900.0}
    results = {"brokers": {"noida": {"throughput": {"recstream-full": entry, name: entry}}}}
    rows = ps.throughput_table(results).splitlines()[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        ps.label("recstream-full"),
        ps.label(name),
    ]


def test_workers_can_be_pinned_to_cpus() -> None:
    cpu = min(os.sched_getaffinity(0))
    cfg = ps.config_from(ps.parse_args(["--worker-cpus", str(cpu)]))
    assert cfg.worker_cpus == (cpu,)
    with pytest.raises(SystemExit, match="not CPUs of this process"):
        ps.config_from(ps.parse_args(["--worker-cpus", "4096"]))
    target = ps.Target(
        "affinity",
        "in",
        "out",
        "group",
        "changelog",
        {},
        command=(sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"),
    )
    group = ps.Workers(target, cfg.worker_cpus)
    group.spawn()
    try:
        assert group.procs[0].wait(30) == 0
        assert group.logs[0].read_text().strip() == f"[{cpu}]"
    finally:
        group.stop()


def test_a_cpu_limit_is_a_cgroup_with_that_quota(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    limit = ps.CpuLimit.make(1.5, "bench-1", root=v1)
    assert limit.folder == v1 / "cpu" / "bench-1"
    assert (limit.folder / "cpu.cfs_quota_us").read_text() == "150000"
    assert (limit.folder / "cpu.cfs_period_us").read_text() == "100000"
    limit.join()
    assert limit.procs.read_text() == str(os.getpid())
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    limit = ps.CpuLimit.make(0.5, "bench-2", root=v2)
    assert (v2 / "cgroup.subtree_control").read_text() == "+cpu"
    assert (limit.folder / "cpu.max").read_text() == "50000 100000"
    with pytest.raises(SystemExit, match="cannot make a cgroup"):
        ps.CpuLimit.make(0.5, "bench-2", root=v2)  # exists already


def test_a_cpu_limit_is_an_option_above_zero() -> None:
    cfg = ps.config_from(ps.parse_args(["--worker-cpu-limit", "1.5"]))
    assert cfg.worker_cpu_limit == 1.5
    assert ps.config_from(ps.parse_args([])).worker_cpu_limit is None
    with pytest.raises(SystemExit):
        ps.parse_args(["--worker-cpu-limit", "0"])


def _cgroups_writable() -> bool:
    """Whether this process may make cgroups with a CPU quota (root, cgroup v1 or v2)."""
    root = Path("/sys/fs/cgroup")
    controllers = root / "cgroup.controllers"
    v2 = controllers.is_file() and "cpu" in controllers.read_text().split()
    folder = root if v2 else root / "cpu"
    return os.geteuid() == 0 and folder.is_dir() and os.access(folder, os.W_OK)


@pytest.mark.skipif(not _cgroups_writable(), reason="needs root and a writable cgroup fs")
def test_a_worker_in_a_cpu_limit_sees_that_limit() -> None:
    """The worker's ``RECSTREAM_MODEL_PROCESSES=auto`` reads the quota the kernel gives it."""
    code = "from recstream.streams.model_process import usable_cpus; print(usable_cpus())"
    target = ps.Target(
        "limited", "in", "out", "group", "changelog", {}, command=(sys.executable, "-c", code)
    )
    group = ps.Workers(target, cpu_limit=0.5)
    group.spawn()
    try:
        assert group.procs[0].wait(60) == 0
        assert group.logs[0].read_text().strip() == "0.5"
    finally:
        folder = group.limits[0].folder
        group.stop()
    assert not folder.exists()


def test_pinned_workers_get_no_goal_2_share() -> None:
    throughput = {
        "recstream-full": {"rate": 500.0, "app_cpu_us_per_event": 100.0},
        "recstream-passthrough": {"rate": 2_000.0, "app_cpu_us_per_event": 20.0},
    }
    model = {"sequences_per_s": 1_000.0, "cpu_us_per_sequence": 50.0, "threads": 2}
    results: dict[str, Any] = {
        "meta": {"cpus": 2, "worker_cpus": [1]},
        "onnx": {"backlog": model},
        "brokers": {"noida": {"throughput": throughput}},
    }
    ps.add_full_pipeline_shares(results)
    assert results["brokers"]["noida"]["full_pipeline_share"] == {}
    results["meta"]["worker_cpus"] = []
    ps.add_full_pipeline_shares(results)
    assert results["brokers"]["noida"]["full_pipeline_share"]["share"] == 0.5
    results["meta"]["worker_cpu_limit"] = 1.5  # limited like a container: not either
    ps.add_full_pipeline_shares(results)
    assert results["brokers"]["noida"]["full_pipeline_share"] == {}


def test_the_exactly_once_pass_through_needs_transactions() -> None:
    target = ps.make_target("recstream-passthrough-eos", "127.0.0.1:19092", 2)
    assert target.env["RECSTREAM_PROCESSING_GUARANTEE"] == "exactly_once"
    assert target.command[-1] == "recstream-passthrough"  # the same worker code
    plain = ps.make_target("recstream-passthrough", "127.0.0.1:19092", 2)
    assert "RECSTREAM_PROCESSING_GUARANTEE" not in plain.env
    assert ps.skip_reason("recstream-passthrough-eos", None, transactions=False)
    assert ps.skip_reason("recstream-passthrough-eos", None, transactions=True) is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert bc.percentile(values, 50) == 50.0
    assert bc.percentile(values, 99) == 99.0
    assert bc.percentile(values, 99.9) == 100.0
    assert bc.percentile(values, 0) == 1.0
    assert bc.percentile([], 50) == 0.0
    assert bc.percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_median_and_per_event() -> None:
    assert bc.median([3.0, 1.0, 2.0]) == 2.0
    assert bc.median([1.0, 2.0]) == 1.5
    assert bc.median([]) == 0.0
    assert ps.per_event(1_000.0) == pytest.approx(1_000.0)
    assert ps.per_event(0.0) == 0.0


def test_markdown_table_shape() -> None:
    table = bc.markdown_table(["a", "b"], [[1, 2], ["x", "y"]])
    lines = table.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[1] == "|---|---|"
    assert lines[3] == "| x | y |"


def test_synthetic_backlog_is_valid_and_ordered_per_user() -> None:
    backlog = bc.synthetic_clicks(500, users=20, items=100, seed=1)
    assert len(backlog) == 500
    last: dict[str, float] = {}
    for key, value in backlog.records:
        click = parse_click(orjson.loads(value))  # every event passes recstream's validation
        assert key == click.user_id.encode()
        assert click.ts >= last.get(click.user_id, 0.0)
        last[click.user_id] = click.ts
    assert len(last) <= 20


def test_make_backlog_prefers_the_shop_log() -> None:
    backlog = bc.make_backlog(300, users=30, items=1_000)
    assert len(backlog) == 300
    assert backlog.source.startswith("recstream.model.shoplog")
    for _, value in backlog.records[:50]:
        parse_click(orjson.loads(value))


def test_output_watch_counts_only_tagged_outputs_and_latency() -> None:
    watch = bc.OutputWatch(target=2, tag="lat-", latency=True, keep_values=True)
    values = [
        orjson.dumps({"trigger_event_id": "lat-1", "event_ts": 100.0}),
        orjson.dumps({"trigger_event_id": "old-1", "event_ts": 50.0}),
        orjson.dumps({"trigger_event_id": "lat-2", "event_ts": 100.5}),
    ]
    assert watch.add(values, now=101.0) == 2
    assert watch.count == 2
    assert watch.latencies == [pytest.approx(1.0), pytest.approx(0.5)]
    assert [v["trigger_event_id"] for v in watch.values] == ["lat-1", "lat-2"]


def test_output_watch_stalls_only_after_outputs_began() -> None:
    watch = bc.OutputWatch(target=10, stall_s=5.0)
    assert not watch.check_stall(1e9)  # nothing yet: a cold start is not a stall
    watch.add([b"{}"] * 3, now=0.0)
    assert watch.progress_at is not None
    assert not watch.check_stall(watch.progress_at + 4.9) and not watch.stalled
    assert watch.check_stall(watch.progress_at + 5.1) and watch.stalled
    assert not bc.OutputWatch(target=10).check_stall(1e9)  # no stall_s: never


def test_output_watch_rate_excludes_the_first_batch() -> None:
    watch = bc.OutputWatch(target=10)
    watch.add([b"{}"] * 4, now=0.0)
    watch.add([b"{}"] * 6, now=0.0)
    assert watch.first_at is not None
    watch.done_at = watch.first_at + 2.0
    assert watch.rate() == pytest.approx(3.0)  # (10 - 4) outputs in 2 s


def test_same_state_reads_sessions_or_history() -> None:
    assert ps.same_state({"session_id": "u0:1"}, {"session_id": "u0:1"})
    assert not ps.same_state({"session_id": "u0:1"}, {"session_id": "u0:9"})
    assert ps.same_state({"history": 4}, {"history": 5})
    assert not ps.same_state({"history": 4}, {"history": 1})


def test_config_overrides() -> None:
    args = ps.parse_args(
        ["--quick", "--brokers", "tansu", "--scenarios", "raw-decode", "--events", "10"]
    )
    cfg = ps.config_from(args)
    assert cfg.brokers == ("tansu",)
    assert cfg.scenarios == ("raw-decode",)
    assert cfg.events == 10
    assert cfg.repeats == ps.QUICK.repeats
    with pytest.raises(SystemExit):
        ps.config_from(ps.parse_args(["--scenarios", "nope"]))


def test_the_deep_scenario_must_be_one_that_runs() -> None:
    assert ps.config_from(ps.parse_args(["--quick"])).deep_scenario is None
    cfg = ps.config_from(
        ps.parse_args(
            [
                "--scenarios",
                "recstream-full,recstream-full-gpu",
                "--deep-scenario",
                "recstream-full-gpu",
            ]
        )
    )
    assert cfg.deep_scenario == "recstream-full-gpu"
    with pytest.raises(SystemExit, match="not among the scenarios"):
        ps.config_from(
            ps.parse_args(["--scenarios", "recstream-full", "--deep-scenario", "faust-naive"])
        )


class _NoBroker:
    """Stands in for an embedded broker where nothing is sent."""

    kind = "noida"
    bootstrap_servers = "127.0.0.1:9"

    def __init__(self, kind: str) -> None:
        self.traits = EmbeddedBroker(kind).traits  # type: ignore[arg-type]

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("deep_scenario", [None, "recstream-full-gpu"])
def test_ratios_stay_on_the_main_scenario_when_the_deep_part_runs_on_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deep_scenario: str | None
) -> None:
    seen: dict[str, str] = {}

    class Kept:
        target = ps.Target("recstream-full-gpu", "in", "out", "app", None, {})

        def stop(self) -> None:
            pass

    async def throughput(
        broker: Any, backlog: Any, cfg: Any, model_dir: Any, deep: str, *_: Any
    ) -> tuple[dict[str, Any], Kept, list[dict[str, Any]]]:
        seen["kept"] = deep
        entries = {
            "recstream-full": {"rate": 100.0, "rates": [100.0]},
            "recstream-full-gpu": {"rate": 150.0, "rates": [150.0]},
        }
        return entries, Kept(), []

    async def deep(broker: Any, scenario: str, *rest: Any) -> dict[str, Any]:
        seen["deep"] = scenario
        return {"deep_scenario": scenario}

    async def no_topics(*args: Any) -> None:
        pass

    monkeypatch.setattr(ps, "EmbeddedBroker", _NoBroker)
    monkeypatch.setattr(ps, "measure_throughput", throughput)
    monkeypatch.setattr(ps, "deep_measurements", deep)
    monkeypatch.setattr(bc, "delete_run_topics", no_topics)
    args = ["--scenarios", "recstream-full,recstream-full-gpu"]
    if deep_scenario:
        args += ["--deep-scenario", deep_scenario]
    cfg = ps.config_from(ps.parse_args(args))

    out = asyncio.run(ps.run_broker("noida", bc.Backlog([], "test", 0), cfg, tmp_path))

    expected = deep_scenario or "recstream-full"
    assert seen == {"kept": expected, "deep": expected}
    assert out["main_scenario"] == "recstream-full" and out["deep_scenario"] == expected
    assert out["ratios"] == {"recstream-full/recstream-full-gpu": pytest.approx(100 / 150)}


# ----------------------------------------------------------------------------
# Capacity guide
# ----------------------------------------------------------------------------


def test_plan_arithmetic() -> None:
    result = capacity_guide.plan(
        10_000,
        worker_rate=1_500,
        passthrough_rate=3_000,
        cpu_scoring_rate=4_500,
        gpu_scoring_rate=40_000,
        utilisation=0.5,
    )
    assert result["cpu_only"]["workers"] == math.ceil(10_000 / 750)  # 14
    assert result["with_gpu"]["workers"] == math.ceil(10_000 / 1_500)  # 7
    assert result["with_gpu"]["gpus"] == 1
    assert result["partitions"] == 28  # 2 x 14 rounded up to a multiple of 4
    assert any("ceil(10,000 / (1,500 x 50%)) = 14" in step for step in result["steps"])
    # A measured rate of workers feeding a GPU replaces the scoring-free rate.
    fed = capacity_guide.plan(
        10_000,
        worker_rate=1_500,
        passthrough_rate=3_000,
        gpu_scoring_rate=40_000,
        gpu_worker_rate=2_000,
    )
    assert fed["with_gpu"]["workers"] == 10  # ceil(10,000 / (2,000 x 50%))


def test_plan_without_gpu_figure_says_so() -> None:
    result = capacity_guide.plan(100, worker_rate=1_000, passthrough_rate=2_000)
    assert "with_gpu" not in result
    assert result["partitions"] == 4
    assert any("not computed" in step for step in result["steps"])
    with pytest.raises(ValueError):
        capacity_guide.plan(0, worker_rate=1, passthrough_rate=1)


def test_inputs_from_results_adds_scoring_cost_when_full_pipeline_missing() -> None:
    results: dict[str, Any] = {
        "brokers": {
            "tansu": {"throughput": {"recstream-passthrough": {"rate": 2_000.0}}},
            "noida": {"throughput": {"recstream-passthrough": {"rate": 9_999.0}}},
        },
        "onnx": {"batches": [{"sequences_per_s": 1_000.0}, {"sequences_per_s": 2_000.0}]},
    }
    inputs = capacity_guide.inputs_from(results)
    assert inputs["broker"] == "tansu"
    # 1 / (1/2000 + 1/2000) = 1000 events/s per worker
    assert inputs["worker_rate"] == pytest.approx(1_000.0)
    guide = capacity_guide.from_results(results)
    assert [e["events_per_s"] for e in guide["examples"]] == list(capacity_guide.GUIDE_RATES)
    assert "1,000 events/s" in capacity_guide.render(guide)


def test_inputs_from_results_prefers_cpu_cost_per_event() -> None:
    results: dict[str, Any] = {
        "brokers": {
            "tansu": {
                "throughput": {
                    "recstream-passthrough": {"rate": 300.0, "app_cpu_us_per_event": 500.0},
                    "recstream-full": {"rate": 100.0, "app_cpu_us_per_event": 1_250.0},
                }
            }
        }
    }
    inputs = capacity_guide.inputs_from(results)
    assert inputs["worker_rate"] == pytest.approx(800.0)  # 1e6 / 1250 µs
    assert inputs["passthrough_rate"] == pytest.approx(2_000.0)  # 1e6 / 500 µs
    assert "per dedicated core" in inputs["worker_rate_derivation"]


def _gpu_run(cpu_us: float | None) -> dict[str, Any]:
    entry = {"rate": 1_000.0} if cpu_us is None else {"app_cpu_us_per_event": cpu_us}
    return {"brokers": {"noida": {"throughput": {"recstream-full-gpu": entry}}}}


def test_the_gpu_worker_rate_comes_from_these_results_then_from_a_gpu_run(
    tmp_path: Path,
) -> None:
    passthrough = {"recstream-passthrough": {"rate": 300.0, "app_cpu_us_per_event": 20.0}}
    results: dict[str, Any] = {"brokers": {"tansu": {"throughput": dict(passthrough)}}}

    # no GPU figure anywhere: the guide falls back to the pass-through rate
    inputs = capacity_guide.inputs_from(results, results_dir=tmp_path)
    assert inputs["gpu_worker_rate"] is None and inputs["gpu_worker_derivation"] is None
    assert inputs["gpu_scoring_rate"] is None

    # a GPU run on disk: the first file with a measured CPU cost counts
    (tmp_path / "pipeline_speed_gpu.json").write_text(json.dumps(_gpu_run(None)))
    (tmp_path / "pipeline_speed_gpu_noida.json").write_text(json.dumps(_gpu_run(80.0)))
    inputs = capacity_guide.inputs_from(results, results_dir=tmp_path)
    assert inputs["gpu_worker_rate"] == pytest.approx(12_500.0)  # 1e6 / 80 µs
    assert "pipeline_speed_gpu_noida.json" in inputs["gpu_worker_derivation"]

    # measured in these results: that wins
    results["brokers"]["tansu"]["throughput"]["recstream-full-gpu"] = {"app_cpu_us_per_event": 50.0}
    inputs = capacity_guide.inputs_from(results, results_dir=tmp_path)
    assert inputs["gpu_worker_rate"] == pytest.approx(20_000.0)
    assert "these results" in inputs["gpu_worker_derivation"]
    (tmp_path / "scorer_speed_gpu.json").write_text(
        json.dumps({"rows": [{"engine": "ort-fp16-cuda", "batch": 32, "sequences_per_s": 9.0e4}]})
    )
    guide = capacity_guide.from_results(results, results_dir=tmp_path)
    assert "GPU worker = 1e6 / 50 CPU µs" in capacity_guide.render(guide)
    # 100,000 events/s: ceil(1e5 / (20,000 x 50%)) = 10 workers, ceil(1e5 / 45,000) = 3 GPUs
    assert guide["examples"][-1]["with_gpu"] == {"workers": 10, "gpus": 3}


def test_gc_pauses_are_read_from_the_workers_metrics() -> None:
    metrics = Metrics()
    hook = metrics._gc.hook
    for generation, seconds in ((0, 0.002), (0, 0.004), (1, 0.03)):
        hook("start", {"generation": generation})
        metrics._gc._started -= seconds
        hook("stop", {"generation": generation})
    found = bc.gc_pauses(metrics.render()[0].decode())
    assert found["collections"] == 3
    assert found["seconds"] == pytest.approx(0.036, abs=1e-3)
    assert found["by_generation"]["0"]["collections"] == 2
    assert found["by_generation"]["1"]["seconds"] == pytest.approx(0.03, abs=1e-3)
    assert found["by_generation"]["2"] == {"collections": 0, "seconds": 0.0}
    assert found["longest_at_most_s"] == 0.05  # the 30 ms pause's bucket
    assert bc.gc_pauses(Metrics().render()[0].decode())["longest_at_most_s"] is None


def test_scoring_batches_are_read_from_the_workers_metrics() -> None:
    metrics = Metrics()
    for size in (1_000, 24, 2):
        metrics.scoring_batch("recs", size, 0.01)
    metrics.scoring_batch("sentiment", 5, 0.01)
    found = bc.scoring_batches(metrics.render()[0].decode())
    assert found == {"batches": 3, "mean_events": pytest.approx(342.0)}
    assert bc.scoring_batches(metrics.render()[0].decode(), "sentiment") == {
        "batches": 1,
        "mean_events": 5.0,
    }
    assert bc.scoring_batches(Metrics().render()[0].decode()) is None


def test_scoring_threads_shares_are_read_from_the_workers_metrics_and_summarised() -> None:
    metrics = Metrics()
    assert bc.scoring_thread_shares(metrics.render()[0].decode()) is None
    metrics.scoring_thread_time(ThreadTimes(wall=2.0, cpu=1.3, runqueue=0.3))
    metrics.scoring_thread_time(ThreadTimes(wall=2.0, cpu=1.3, runqueue=0.2))
    shares = bc.scoring_thread_shares(metrics.render()[0].decode())
    assert shares == pytest.approx({"cpu": 0.65, "runqueue": 0.125, "blocked": 0.225})
    runs: list[dict[str, Any]] = [
        {"rate": 1.0, "scoring_threads": shares},
        {"rate": 2.0, "scoring_threads": {"cpu": 0.75, "runqueue": 0.125, "blocked": 0.125}},
        {"rate": 3.0, "scoring_threads": None},  # a pass-through scores nothing
    ]
    summary = ps.summarise(runs)
    assert summary["scoring_threads"] == pytest.approx(
        {"cpu": 0.7, "runqueue": 0.125, "blocked": 0.175}
    )
    throughput = {"recstream-full": summary, "recstream-passthrough": {"rate": 3.0}}
    assert ps.scoring_threads_summary(throughput) == (
        "recstream-full cpu 70%, runqueue 12%, blocked 18%"
    )


def test_the_latency_table_shows_scoring_threads_busy_and_those_waiting_for_a_core() -> None:
    assert ps.busy_cell({"cpu": 0.7, "runqueue": 0.54, "blocked": 0.13}) == (
        "1.37 (0.54 in the run queue)"
    )
    assert ps.busy_cell(None) == "-"


def test_scoring_counts_are_the_batches_and_their_events_or_zeros() -> None:
    metrics = Metrics()
    assert bc.scoring_counts(metrics.render()[0].decode()) == {"batches": 0.0, "events": 0.0}
    metrics.scoring_batch("recs", 4, 0.01)
    metrics.scoring_batch("recs", 6, 0.01)
    metrics.scoring_batch("sentiment", 9, 0.01)
    text = metrics.render()[0].decode()
    assert bc.scoring_counts(text) == {"batches": 2.0, "events": 10.0}
    assert bc.scoring_counts(text, "sentiment") == {"batches": 1.0, "events": 9.0}


def test_clicks_read_are_counted_from_the_workers_metrics() -> None:
    metrics = Metrics()
    metrics.events_in("clicks", 7)
    metrics.events_in("reviews", 2)
    assert bc.events_in(metrics.render()[0].decode(), "clicks") == 7
    assert bc.events_in(Metrics().render()[0].decode(), "clicks") == 0


def test_each_further_worker_gets_its_own_port_and_data_folder(tmp_path: Path) -> None:
    env = {"RECSTREAM_WEB_PORT": "6066", "RECSTREAM_DATA_DIR": str(tmp_path), "X": "1"}
    target = ps.Target(
        "recstream-passthrough",
        "in",
        "out",
        "app",
        None,
        env,
        command=(sys.executable, "-c", "pass"),
    )
    group = ps.Workers(target)
    try:
        for _ in range(3):
            group.spawn()
        assert len(group.procs) == 3
        assert group.web_ports[0] == "6066" and len(set(group.web_ports)) == 3
        later = group.own_env()
        assert later["X"] == "1" and later["RECSTREAM_DATA_DIR"] != str(tmp_path)
        made = [Path(folder) for folder in group.data_dirs]
        assert len(made) == 3 and all(folder.is_dir() for folder in made)
    finally:
        group.stop()
    assert not any(folder.exists() for folder in made) and tmp_path.is_dir()
    plain = ps.Workers(ps.Target("faust-naive", "in", "out", "app", None, {}, command=("true",)))
    plain.spawn()
    plain.stop()
    assert plain.web_ports == []


def test_gc_summary_names_each_scenario_that_reported_pauses() -> None:
    throughput = {
        "quix-memory": {"rate": 10.0},
        "recstream-passthrough": {
            "gc_us_per_event": 1.25,
            "gc_collections": 4,
            "gc_longest_at_most_s": 0.25,
        },
    }
    assert ps.gc_summary(throughput) == (
        "recstream-passthrough 1.2 µs/ev in 4 collections (longest pause <= 0.25 s)"
    )
    assert ps.gc_summary({"quix-memory": {"rate": 10.0}}) == ""


def test_batch_summary_and_the_median_mean_batch_over_runs() -> None:
    runs: list[dict[str, Any]] = [
        {"rate": 10.0, "scoring_batches": {"batches": 2, "mean_events": 1_000.0}},
        {"rate": 12.0, "scoring_batches": {"batches": 4, "mean_events": 500.0}},
        {"rate": 11.0, "scoring_batches": None},
    ]
    summary = ps.summarise(runs)
    assert summary["events_per_batch"] == 750.0
    throughput = {"quix-memory": {"rate": 10.0}, "recstream-passthrough": summary}
    assert ps.batch_summary(throughput) == "recstream-passthrough 750 events"
    assert "events_per_batch" not in ps.summarise([{"rate": 1.0}])


def test_cpu_summary_gives_each_scenario_s_roles_and_the_idle_cpu() -> None:
    roles = ("app", "broker", "observer", "idle")
    runs: list[dict[str, Any]] = [
        {"rate": rate, "cpu_percent": dict(zip(roles, cpu, strict=True)), "app_cpu_us_per_event": 1}
        for rate, cpu in ((10.0, (150.0, 10.0, 8.0, 30.0)), (12.0, (160.0, 12.0, 8.0, 20.0)))
    ]
    throughput = {
        "quix-memory": {"rate": 10.0, "cpu_percent": {"app": 99.0, "idle": 1.0}},
        "recstream-full": ps.summarise(runs),
        "raw-produce": {"rate": 1.0, "cpu_percent": {"app": 80.0}},  # no idle: left out
    }
    assert ps.cpu_summary(throughput) == (
        "quix-memory app 99, idle 1; recstream-full app 155, broker 11, observer 8, idle 25"
    )


def test_round_ratios_pair_the_runs_of_each_round() -> None:
    throughput = {
        "recstream-passthrough": {"rates": [30.0, 40.0, 36.0]},
        "quix-memory": {"rates": [40.0, 40.0, 30.0]},
        "raw-decode": {"rates": [10.0]},  # not as many runs: no pairs
        "recstream-full": {"skipped": "no model"},
    }
    found = ps.round_ratios(throughput, "recstream-passthrough")
    assert found == {
        "recstream-passthrough/quix-memory": {"rounds": [0.75, 1.0, 1.2], "median": 1.0}
    }
    assert ps.round_ratios({"quix-memory": {"rates": [1.0]}}, "recstream-passthrough") == {}


def test_a_rerendered_result_gets_round_ratios_only_when_its_runs_took_turns(
    tmp_path: Path,
) -> None:
    kept = json.loads(
        (BENCH_DIR / "results" / "pipeline_speed_200k_2026-12-04-1703.json").read_text()
    )
    for in_turns in (True, False):
        results = json.loads(json.dumps(kept))
        results["meta"]["runs_in_turns"] = in_turns
        for out in results["brokers"].values():
            out.pop("round_ratios", None)
        path = tmp_path / f"turns_{in_turns}.json"
        path.write_text(json.dumps(results))
        assert ps.main(["--rerender", str(path)]) == 0
        again = json.loads(path.read_text())
        report = path.with_suffix(".md").read_text()
        tansu = again["brokers"]["tansu"]
        if in_turns:
            rounds = tansu["round_ratios"]["recstream-passthrough/quix-memory"]["rounds"]
            assert len(rounds) == 3 and "round by round" in report
        else:
            assert "round_ratios" not in tansu and "round by round" not in report


def test_scenarios_take_turns_and_the_main_one_runs_last_in_each_round() -> None:
    order = ps.turns(
        ["recstream-passthrough", "quix-memory", "raw-decode"], 3, "recstream-passthrough"
    )
    assert order == [
        (repeat, scenario)
        for repeat in range(3)
        for scenario in ("quix-memory", "raw-decode", "recstream-passthrough")
    ]
    assert order[-1] == (2, "recstream-passthrough")  # its workers stay up for the deep part
    assert ps.turns(["quix-memory"], 2, "recstream-passthrough") == [
        (0, "quix-memory"),
        (1, "quix-memory"),
    ]


def test_the_bare_model_is_timed_right_before_each_full_pipeline_run() -> None:
    """Goal 2's bound is measured in the same rounds as the pipeline it bounds, when the
    workers of the run before have stopped and those of the full pipeline not started."""
    order = ps.turns(["recstream-full", "quix-memory"], 2, "recstream-full", "recstream-full")
    assert order == [
        (repeat, scenario)
        for repeat in range(2)
        for scenario in ("quix-memory", ps.BARE_MODEL, "recstream-full")
    ]
    assert ps.turns(["quix-memory"], 1, "recstream-full", "recstream-full") == [
        (0, "quix-memory")  # no full pipeline, no bare model
    ]


def test_each_full_pipeline_run_follows_a_bare_model_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """:func:`ps.measure_throughput` with the backlog's lengths: the runs in the order of
    :func:`ps.turns`, the bare model's runs returned; without them, no bare model."""
    ran: list[str] = []

    async def app_throughput(
        broker: Any, scenario: str, backlog: Any, cfg: Any, **_: Any
    ) -> tuple[dict[str, Any], None]:
        ran.append(scenario)
        return {"rate": 100.0}, None

    def onnx_backlog(model_dir: Path, lengths: list[list[int]], seconds: float) -> dict[str, Any]:
        ran.append(ps.BARE_MODEL)
        assert (model_dir, lengths) == (tmp_path, [[1, 2]])
        return {"sequences_per_s": 1_000.0 + len(ran)}

    monkeypatch.setattr(ps, "app_throughput", app_throughput)
    monkeypatch.setattr(ps, "onnx_backlog", onnx_backlog)
    monkeypatch.setattr(ps, "skip_reason", lambda *_: None)
    broker: Any = dataclasses.make_dataclass("Broker", ["kind", "traits"])(
        "noida", dataclasses.make_dataclass("Traits", ["transactions"])(True)
    )
    cfg = dataclasses.replace(
        ps.QUICK, scenarios=("faust-naive", "recstream-full"), repeats=2, deep=False
    )
    entries, kept, model_runs = asyncio.run(
        ps.measure_throughput(broker, None, cfg, tmp_path, "recstream-full", [[1, 2]])  # type: ignore[arg-type]
    )
    assert ran == ["faust-naive", ps.BARE_MODEL, "recstream-full"] * 2
    assert [run["sequences_per_s"] for run in model_runs] == [1_002.0, 1_005.0]
    assert entries["recstream-full"]["rates"] == [100.0, 100.0] and kept is None
    ran.clear()
    asyncio.run(ps.measure_throughput(broker, None, cfg, tmp_path, "recstream-full"))  # type: ignore[arg-type]
    assert ps.BARE_MODEL not in ran


def test_the_bare_model_s_runs_in_turns_are_summarised_by_their_medians() -> None:
    runs = [
        {"sequences_per_s": rate, "cpu_us_per_sequence": cpu, "threads": 2, "intra_op_threads": 1}
        for rate, cpu in ((30_000.0, 50.0), (40_000.0, 45.0), (35_000.0, 60.0))
    ]
    summary = ps.summarise_model(runs)
    assert summary["sequences_per_s"] == 35_000.0 and summary["cpu_us_per_sequence"] == 50.0
    assert summary["rates"] == [30_000.0, 40_000.0, 35_000.0] and summary["threads"] == 2
    assert ps.summarise_model([]) == {}


def test_the_full_pipeline_share_is_over_the_model_timed_beside_it() -> None:
    """A broker's bare-model runs in turns with its full pipeline are the bound; the
    run's first measurement only where a broker has none (older results)."""
    throughput: dict[str, Any] = {
        "recstream-full": {"rate": 800.0, "us_per_event": 1_250.0},
        "recstream-passthrough": {"rate": 5_000.0, "us_per_event": 200.0},
    }
    in_turns = ps.summarise_model(
        [
            {
                "sequences_per_s": r,
                "cpu_us_per_sequence": 100.0,
                "threads": 2,
                "intra_op_threads": 1,
            }
            for r in (900.0, 1_100.0)
        ]
    )
    results: dict[str, Any] = {
        "meta": _render_meta(cpus=2),
        "onnx": {"backlog": {"sequences_per_s": 4_000.0}},
        "brokers": {
            "tansu": {"throughput": throughput, "bare_model": in_turns},
            "noida": {"throughput": dict(throughput)},
        },
    }
    ps.add_full_pipeline_shares(results)
    beside = results["brokers"]["tansu"]["full_pipeline_share"]
    assert beside["model_limit"] == 1_000.0 and beside["share"] == pytest.approx(0.8)
    assert beside["model_rates"] == [900.0, 1_100.0]
    first = results["brokers"]["noida"]["full_pipeline_share"]
    assert first["model_limit"] == 4_000.0 and "model_rates" not in first
    report = ps.render(results)
    assert "the bare model timed right before each full-pipeline run: 900 / 1,100" in report


def test_ratios_of_the_main_scenario() -> None:
    throughput = {
        "recstream-full": {"rate": 100.0, "app_cpu_us_per_event": 2_000.0},
        "faust-naive": {"rate": 200.0, "app_cpu_us_per_event": 1_000.0},
        "quix-memory": {"error": "broken"},
    }
    assert ps.ratios(throughput, "recstream-full") == {"recstream-full/faust-naive": 0.5}
    assert ps.ratios(throughput, "recstream-full", "app_cpu_us_per_event") == {
        "recstream-full/faust-naive": 2.0
    }
    assert ps.ratios(throughput, "missing") == {}


def test_the_cached_benchmark_models_are_rebuilt_when_their_code_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ps.MODEL_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(bc, "REPO", tmp_path)
    before = ps.model_sources_digest()
    assert ps.model_sources_digest() == before
    (tmp_path / "model/sasrec.py").write_text("changed")
    assert ps.model_sources_digest() != before


def test_the_backlog_s_histories_are_counted_batch_by_batch_as_the_worker_scores_them() -> None:
    backlog = bc.synthetic_clicks(2_500, users=20, items=100, seed=2)
    lengths = ps.backlog_history_lengths(backlog, partitions=4)
    settings = ps.Settings()
    assert [len(batch) for batch in lengths] == [1_024, 1_024, 452]  # RECSTREAM_BATCH_SIZE
    seen: dict[bytes, int] = {}
    expected = []
    for key, _ in backlog.records:  # one user's clicks in order, no session gap
        seen[key] = seen.get(key, 0) + 1
        expected.append(min(seen[key], settings.history_length))
    # each batch's histories in its order by partition, as the pipeline hands them over
    assert sorted(n for batch in lengths for n in batch) == sorted(expected)
    assert max(expected) == settings.history_length


def test_the_bare_model_runs_the_backlog_s_histories_in_the_scorer_s_parts(
    tmp_path: Path,
) -> None:
    from recstream.export.tiny import build_tiny_models

    build_tiny_models(tmp_path)
    lengths = [[1, 3, 5, 12, 40] * 4, [2] * 9]
    result = ps.onnx_backlog(tmp_path, lengths, seconds=0.5)
    assert result["batches"] > len(lengths)  # round and round until the time is up
    counted = [lengths[n % len(lengths)] for n in range(result["batches"])]
    assert result["sequences"] == sum(map(len, counted))
    assert result["sequences_per_s"] > 0
    import onnxruntime as ort

    meta = ort.InferenceSession(str(tmp_path / "recs.onnx")).get_modelmeta()
    max_len = int(meta.custom_metadata_map["recstream.max_len"])
    capped = [min(n, max_len) for batch in counted for n in batch]
    assert result["mean_length"] == pytest.approx(sum(capped) / len(capped))
    assert result["threads"] == 2 and result["intra_op_threads"] == 1  # the worker's defaults
    assert result["cpu_us_per_sequence"] > 0
    growing = [[1 + n] * 10 for n in range(24)]  # histories grow through a backlog
    stopped = ps.onnx_backlog(tmp_path, growing, seconds=0.0)  # at least one batch
    assert stopped["backlog_batches"] == 24 and stopped["batches"] in range(1, 25)
    assert stopped["sequences"] == 10 * stopped["batches"]
    first = [min(1 + n, max_len) for n in ps.spread_order(24)[: stopped["batches"]]]
    assert stopped["mean_length"] == pytest.approx(sum(first) / len(first))


def test_the_bare_model_runs_the_variant_the_workers_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recstream.export.tiny import build_tiny_models
    from recstream.streams.scoring import ModelLoadError

    build_tiny_models(tmp_path)
    # only a file named as the int8 variant: the fp32 one cannot be read by mistake
    (tmp_path / "recs.onnx").rename(tmp_path / "recs.int8.onnx")
    monkeypatch.setenv("RECSTREAM_MODEL_VARIANT", "int8")
    assert ps.recs_file(tmp_path) == tmp_path / "recs.int8.onnx"
    cfg = dataclasses.replace(ps.QUICK, onnx_batches=(1,), onnx_seconds=0.0)
    assert ps.onnx_bare(tmp_path, cfg)["model"]["file"] == "recs.int8.onnx"
    assert ps.onnx_backlog(tmp_path, [[3, 5]], seconds=0.0)["batches"] >= 1
    monkeypatch.delenv("RECSTREAM_MODEL_VARIANT")
    with pytest.raises(ModelLoadError, match=r"recs\.onnx"):
        ps.onnx_backlog(tmp_path, [[3, 5]], seconds=0.0)


def test_a_spread_order_s_prefixes_sample_the_whole_range() -> None:
    order = ps.spread_order(20, stride=4)
    assert sorted(order) == list(range(20))
    assert order[:5] == [0, 4, 8, 12, 16] and order[5:7] == [1, 5]
    assert ps.spread_order(3) == [0, 1, 2] and ps.spread_order(0) == []


def _render_meta(cpus: int) -> dict[str, Any]:
    """The run facts :func:`ps.render` needs, for results made up in a test."""
    return {
        "started_at": "now",
        "cpus": cpus,
        "mode": "quick",
        "events": 1,
        "partitions": 1,
        "backlog_source": "test",
        "repeats": 1,
        "load_average": [0.0],
    }


def test_the_full_pipeline_share_is_over_the_smaller_of_pass_through_and_model() -> None:
    throughput: dict[str, Any] = {
        "recstream-full": {"rate": 800.0},
        "recstream-passthrough": {"rate": 5_000.0},
    }
    share = ps.full_pipeline_share(throughput, {"sequences_per_s": 1_000.0})
    assert share["share"] == pytest.approx(0.8) and share["bound_by"] == "model"
    assert "cpu_efficiency" not in share  # no CPU figures
    wider = ps.full_pipeline_share(throughput, {"sequences_per_s": 10_000.0})
    assert wider["share"] == pytest.approx(0.16) and wider["bound_by"] == "passthrough"
    assert ps.full_pipeline_share(throughput, {}) == {}
    assert (
        ps.full_pipeline_share({"recstream-full": {"rate": 800.0}}, {"sequences_per_s": 1.0}) == {}
    )
    throughput["recstream-full"].update(app_cpu_us_per_event=250.0, us_per_event=1_250.0)
    throughput["recstream-passthrough"].update(app_cpu_us_per_event=25.0, us_per_event=200.0)
    results: dict[str, Any] = {
        "onnx": {"backlog": {"sequences_per_s": 1_000.0, "cpu_us_per_sequence": 200.0}},
        "brokers": {"tansu": {"throughput": throughput}},
    }
    ps.add_full_pipeline_shares(results)
    share = results["brokers"]["tansu"]["full_pipeline_share"]
    assert share["share"] == pytest.approx(0.8)
    assert share["cpu_efficiency"] == pytest.approx(0.9)  # (25 + 200) / 250
    results["meta"] = _render_meta(cpus=2)
    assert "CPU efficiency **0.90**" in ps.render(results)


def test_the_full_pipeline_share_states_the_most_the_machine_could_show() -> None:
    """A lossless worker costs the pass-through's plus the bare model's CPU per event:
    on 2 cores at 25 + 225 µs that is 8,000 events/s, 0.8 of a 10,000/s bound; with
    0.5 of a core taken by the broker and the load generator, 6,000 (0.6)."""
    throughput: dict[str, Any] = {
        "recstream-full": {
            "rate": 4_000.0,
            "us_per_event": 250.0,
            "app_cpu_us_per_event": 400.0,
            "cpu_percent": {"app": 160.0, "broker": 30.0, "observer": 20.0, "idle": -10.0},
        },
        "recstream-passthrough": {
            "rate": 40_000.0,
            "us_per_event": 25.0,
            "app_cpu_us_per_event": 25.0,
        },
    }
    model = {"sequences_per_s": 10_000.0, "cpu_us_per_sequence": 225.0}
    share = ps.full_pipeline_share(throughput, model, cores=2)
    assert share["share"] == pytest.approx(0.4) and share["bound_by"] == "model"
    ceiling = share["ceiling"]
    assert ceiling["on_cores"] == pytest.approx(0.8)
    assert ceiling["cores_left"] == pytest.approx(1.5)
    assert ceiling["beside_others"] == pytest.approx(0.6)
    assert "ceiling" not in ps.full_pipeline_share(throughput, model)  # cores unknown
    # A worker with 2 scoring threads runs on 3 cores at most, however many there are.
    big = ps.full_pipeline_share(throughput, {**model, "threads": 2}, cores=16)["ceiling"]
    assert big["cores"] == 3 and big["on_cores"] == pytest.approx(1.2)
    assert big["cores_left"] == 3 and big["beside_others"] == pytest.approx(1.2)
    results: dict[str, Any] = {
        "meta": _render_meta(cpus=2),
        "onnx": {"backlog": model},
        "brokers": {"tansu": {"throughput": throughput}},
    }
    ps.add_full_pipeline_shares(results)
    assert results["brokers"]["tansu"]["full_pipeline_share"]["ceiling"]["cores"] == 2
    assert "0.80 on 2 cores, 0.60 on the 1.50 the broker" in ps.render(results)


def test_gpu_rate_read_from_scorer_speed_rows(tmp_path: Path) -> None:
    path = tmp_path / "scorer_speed_gpu.json"
    rows = [
        {"engine": "ort-fp32-cpu", "batch": 32, "sequences_per_s": 900.0},
        {"engine": "ort-fp32-cuda", "batch": 512, "sequences_per_s": 250_000.0},
        {"engine": "ort-fp32-cuda", "batch": 32, "sequences_per_s": 24_000.0},
        {"engine": "ort-fp16-cuda", "batch": 32, "sequences_per_s": 32_000.0},
    ]
    path.write_text(json.dumps({"rows": rows}))
    assert capacity_guide.gpu_rate_from_scorer_results(path) == 32_000.0
    assert capacity_guide.gpu_rate_from_scorer_results(path, batch=512) == 250_000.0
    # Without a row at the batch asked for, the best CUDA row counts.
    assert capacity_guide.gpu_rate_from_scorer_results(path, batch=8) == 250_000.0
    path.write_text(json.dumps({"rows": rows[:1]}))
    assert capacity_guide.gpu_rate_from_scorer_results(path) is None
    assert capacity_guide.gpu_rate_from_scorer_results(tmp_path / "absent.json") is None


def test_inputs_from_results_without_figures() -> None:
    assert "error" in capacity_guide.inputs_from({"brokers": {}})


# ----------------------------------------------------------------------------
# A tiny end-to-end run (brokers, workers, every section of the JSON)
# ----------------------------------------------------------------------------

SCENARIOS = ("raw-decode", "raw-produce", "quix-memory", "recstream-passthrough")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _cpu_figure(value: Any) -> bool:
    """A figure a tiny run may not resolve: CPU clocks tick every 10 ms, and a fast
    scenario can finish the whole backlog within one fetch (rate 0.0)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_finished_runs_topics_are_deleted_and_no_others() -> None:
    async def scenario(bootstrap: str) -> set[str]:
        run = bc.unique_name("bench", "recstreamfull")
        names = [f"{run}.clicks", f"changelog__{run}--in--default", "bench-other-in"]
        await bc.create_topics(bootstrap, names, 2)
        await bc.delete_run_topics(bootstrap, run)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {name for name in await admin.list_topics() if "bench" in name}
        finally:
            await admin.close()

    broker = EmbeddedBroker("noida")
    broker.start()
    try:
        assert asyncio.run(scenario(broker.bootstrap_servers)) == {"bench-other-in"}
    finally:
        broker.stop()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_both_watchers_stop_when_outputs_stall() -> None:
    """Three outputs of ten, then none: each watcher stops after its ``stall_s`` with
    ``stalled`` set instead of waiting out its timeout (a stalled consumer group)."""

    async def scenario(bootstrap: str) -> list[tuple[int, bool]]:
        topic = bc.unique_name("bench", "stall")
        await bc.create_topics(bootstrap, [topic], 1)
        await bc.wait_for_topics(bootstrap, [topic])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n in range(3):
                await producer.send_and_wait(topic, b'{"n": %d}' % n)
        finally:
            await producer.stop()
        seen = []
        for watch_with in (bc.watch_end_offsets, bc.watch_output):
            watch = bc.OutputWatch(target=10, stall_s=1.0)
            await watch_with(bootstrap, topic, watch, 20.0)
            seen.append((watch.count, watch.stalled))
        return seen

    broker = EmbeddedBroker("noida")
    broker.start()
    try:
        seen = asyncio.run(scenario(broker.bootstrap_servers))
    finally:
        broker.stop()
    assert seen == [(3, True), (3, True)]


@pytest.mark.integration
@pytest.mark.timeout(170)
def test_tiny_run_writes_well_formed_results(tmp_path: Path) -> None:
    # noida: no JoinGroup hold, so the five worker start-ups fit in about a minute.
    output = tmp_path / "pipeline_speed.json"
    command = [
        sys.executable,
        str(BENCH_DIR / "pipeline_speed.py"),
        "--quick",
        "--brokers",
        "noida",
        "--scenarios",
        ",".join(SCENARIOS),
        "--events",
        # Enough for several 50 ms end-offset polls even at the tiny run's ~45k/s
        # (30 users); with 6000 a passthrough sometimes finished between two polls.
        "30000",
        "--users",
        "30",
        "--scale-workers",
        "2",
        "--latency-seconds",
        "1",
        "--no-models",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=160, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = orjson.loads(output.read_bytes())
    report = output.with_suffix(".md").read_text()
    assert "## Throughput" in report and "## Capacity guide" in report

    assert results["schema_version"] == ps.SCHEMA_VERSION
    meta = results["meta"]
    assert meta["mode"] == "quick" and meta["events"] == 30000
    assert meta["runs_in_turns"] and "the scenarios taking turns" in report
    assert meta["backlog_source"].startswith("recstream.model.shoplog")

    broker = results["brokers"]["noida"]
    for scenario in SCENARIOS:
        entry = broker["throughput"][scenario]
        assert "error" not in entry, entry.get("error")
        # a fast scenario can finish a small backlog within one fetch: rate 0.0
        assert _cpu_figure(entry["rate"]) and _cpu_figure(entry["us_per_event"])
        assert all(_cpu_figure(rate) for rate in entry["rates"])
        assert _cpu_figure(entry["cpu_percent"]["app"])
    assert _positive(broker["throughput"]["recstream-passthrough"]["rate"])
    assert _positive(broker["throughput"]["recstream-passthrough"]["cold_start_s"])
    passthrough = broker["throughput"]["recstream-passthrough"]
    assert _cpu_figure(passthrough["gc_us_per_event"]) and passthrough["gc_collections"] >= 0
    assert "Garbage collector on noida" in report
    assert passthrough["events_per_batch"] >= 1 and "Mean micro-batch on noida" in report
    assert "CPU on noida from the first output to the last" in report
    assert _cpu_figure(passthrough["cpu_percent"]["idle"])
    assert all(_cpu_figure(v) for v in broker["ratios"].values())
    for pair in broker["round_ratios"].values():
        assert len(pair["rounds"]) == 1 and pair["median"] == pair["rounds"][0]

    assert broker["deep_scenario"] == "recstream-passthrough"
    assert [p["load"] for p in broker["latency"]] == [0.25, 0.5, 0.8]
    for phase in broker["latency"]:
        assert "error" not in phase, phase
        assert phase["received"] > 0 and phase["sent"] >= phase["received"]
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["p999_ms"] <= phase["max_ms"]
        assert set(phase["cpu_percent"]) == set(ps.LATENCY_CPU_ROLES)
        assert all(_cpu_figure(v) for v in phase["cpu_percent"].values())
        busy = phase["scoring_threads_busy"]  # read from the worker's metrics
        assert busy is None or (set(busy) == {"cpu", "runqueue", "blocked"} and busy["cpu"] > 0)
    assert "load generator CPU %" in report and "idle CPU %" in report
    assert "scoring threads busy" in report

    state = broker["state"]
    assert "error" not in state, state
    assert _positive(state["bytes_per_user"]) and _positive(state["changelog_records"])
    assert _positive(state["restart_s"]) and state["recovery_s"] >= 0
    assert isinstance(state["state_recovered"], bool)

    assert [s["workers"] for s in broker["scale_out"]] == [2]
    for step in broker["scale_out"]:
        assert "error" not in step, step
        assert _positive(step["rate"])
        # two workers ran, and between them read every click (which got what is the broker's)
        assert len(step["events_in_by_worker"]) == 2
        assert sum(step["events_in_by_worker"]) >= 30000

    rebalance = broker["rebalance"]
    assert "error" not in rebalance, rebalance
    assert _positive(rebalance["baseline_max_gap_s"])
    assert [j["workers_after"] for j in rebalance["joins"]] == [2]
    assert _positive(rebalance["joins"][0]["max_gap_s"])
    # the joiner ran to the end (it had exited at once on the first one's port)
    assert len(rebalance["events_in_by_worker"]) == 2 and "clicks read by each" in report

    guide = results["capacity_guide"]
    assert "error" not in guide
    for example in guide["examples"]:
        assert isinstance(example["partitions"], int) and example["partitions"] >= 4
        assert isinstance(example["cpu_only"]["workers"], int)
        assert example["cpu_only"]["workers"] >= 1


def test_the_scoring_section_says_how_the_backlog_s_batches_were_run() -> None:
    backlog = {
        "sequences_per_s": 30_000.0,
        "sequences": 190_000,
        "mean_rows": 1_000.0,
        "mean_length": 12.5,
        "threads": 2,
        "intra_op_threads": 1,
        "backlog_batches": 30,
    }
    bare = {
        "batches": [{"batch": 32, "sequences_per_s": 20_000.0, "ms_per_batch": 1.6}],
        "model": {"items": 50_000, "max_len": 50},
        "threads": 2,
    }
    for batches, words in (
        (190, "190 batches, round and round its 30,"),
        (30, "its 30 batches"),
        (4, "4 of its 30 batches"),
    ):
        results = {"onnx": {**bare, "backlog": {**backlog, "batches": batches}}}
        assert f"own histories ({words} of 1,000 histories" in ps.onnx_table(results)
