"""Alert rules and the Prometheus config: structure, metrics that exist, promtool checks.

``promtool`` (Debian package ``prometheus``) checks the syntax and runs the rules' unit
tests in deploy/prometheus/alerts_test.yml, where every alert has a firing case and a
quiet case.  Without promtool those two tests are skipped; the others still run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstream.streams.metrics import Metrics

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
DASHBOARD = PROMETHEUS.parent / "grafana" / "dashboards" / "recstream.json"
EXPECTED = {
    "RecstreamWorkerDown",
    "RecstreamNoWorkers",
    "RecstreamConsumerLagGrowing",
    "RecstreamDeadLetterRateHigh",
    "RecstreamScoringOnCpu",
    "RecstreamEndToEndLatencyHigh",
    "RecstreamModelProcessesFailing",
}
EXTERNAL_SERIES = {"kafka_consumergroup_lag", "up"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def worker_series() -> dict[str, set[str]]:
    metrics = Metrics()
    metrics.watch_lag(lambda: [("clicks", 0, 1)])
    metrics.scoring_batch("recs", 1, 0.001)
    metrics.model_loaded("recs", "v1", "CPUExecutionProvider")
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_each_alert_is_explained() -> None:
    names = [rule["alert"] for rule in rules()]
    assert set(names) == EXPECTED
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["for"], rule["alert"]
        assert len(rule["annotations"]["summary"]) > 10
        assert len(rule["annotations"]["description"]) > 40


def test_alerts_use_only_existing_metrics_and_labels() -> None:
    series = worker_series()
    for rule in rules():
        expr = rule["expr"]
        for name in re.findall(r"\b(recstream_[a-z0-9_]+)", expr):
            assert name in series, f"{rule['alert']}: {name} is not exported"
        for name, matchers in re.findall(r"\b(recstream_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                allowed = series[name] | {"instance", "job", "accelerator"}
                assert label in allowed, f"{rule['alert']}: {name} has no {label}"
        for name in re.findall(r"\b(kafka_[a-z0-9_]+|up)\s*[{\[(]", expr):
            assert name in EXTERNAL_SERIES, f"{rule['alert']}: unknown series {name}"


def test_scoring_on_cpu_alert_label_is_set_by_every_scrape_job() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    accelerators = {}
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("recstream-worker"):
            (relabel,) = job["relabel_configs"]
            assert relabel["target_label"] == "accelerator"
            accelerators[job["job_name"]] = relabel["replacement"]
    assert accelerators == {"recstream-worker": "cpu", "recstream-worker-gpu": "gpu"}


def test_every_alert_has_unit_tests() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == EXPECTED
    # Lag and ScoringOnCpu have their quiet series inside the firing case (exp_alerts is
    # exhaustive: a draining lag or a CUDA worker there would make the case fail).
    assert quiet >= EXPECTED - {"RecstreamConsumerLagGrowing", "RecstreamScoringOnCpu"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return subprocess.run(
        [executable, *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_config_and_rules() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alerts() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (promtool parses it as a rule expression)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs = [e.replace("$consumergroup", "recstream") for e in exprs]
    rule_file = {
        "groups": [
            {
                "name": "q",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rule_file), encoding="utf-8")
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
