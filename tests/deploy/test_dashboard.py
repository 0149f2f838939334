"""The Grafana dashboard: valid JSON, the panels operators need, only metrics that exist.

Also defines how a PromQL expression is checked against the metrics module; the same
check runs on the alert rules in test_alerts.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstream.streams.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "recstream.json"

#: Series that come from outside the worker, and who exports them.
EXTERNAL_SERIES = {
    "kafka_consumergroup_lag": "kafka-exporter (docker-compose.yml service kafka-exporter)",
    "up": "Prometheus itself, per scrape target",
}
#: Labels Prometheus adds to every worker series (scrape target and relabelling).
TARGET_LABELS = {"instance", "job", "accelerator"}


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, as a worker's registry exports them."""
    metrics = Metrics()
    # Labelled series appear once used: use each label combination a worker uses.
    metrics.watch_lag(lambda: [("clicks", 0, 1)])
    metrics.scoring_batch("recs", 1, 0.001)
    metrics.scoring_batch("sentiment", 1, 0.001)
    metrics.model_loaded("recs", "v1", "CPUExecutionProvider")
    metrics.watch_event_loop()
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def check_expression(expr: str, series: dict[str, set[str]]) -> list[str]:
    """Problems with ``expr``: unknown recstream series, or labels they do not have."""
    problems = []
    for name in set(re.findall(r"\b(recstream_[a-z0-9_]+)", expr)):
        if name not in series:
            problems.append(f"{name} is not exported by recstream.streams.metrics")
    for name, matchers in re.findall(r"\b(recstream_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in series.get(name, set()) | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    for name in set(re.findall(r"\b(kafka_[a-z0-9_]+|up)\s*[{\[(]", expr)):
        if name not in EXTERNAL_SERIES:
            problems.append(f"{name} is neither a recstream metric nor a known external one")
    for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in (g.strip() for g in grouping.split(",")):
            known = set().union(*series.values()) | TARGET_LABELS | {"consumergroup", "topic"}
            if label not in known:
                problems.append(f"grouping by unknown label {label!r}")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_identity_and_datasource(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "recstream"
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid


def test_panels_cover_what_operators_watch(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Events in per topic",
        "Events out per topic",
        "Dead letters by reason",
        "Scoring batch size",
        "Scoring latency",
        "End-to-end latency",
        "Consumer lag per topic",
        "Session table size",
        "Models: version and provider per worker",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        columns, rows = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in columns for y in rows}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_query_uses_existing_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    problems = [
        f"{title}: {problem}"
        for title, expr in targets(dashboard)
        for problem in check_expression(expr, series)
    ]
    assert not problems
    used = {name for _, expr in targets(dashboard) for name in re.findall(r"recstream_\w+", expr)}
    for metric in (
        "recstream_events_in_total",
        "recstream_events_out_total",
        "recstream_deadletters_total",
        "recstream_scoring_batch_size_bucket",
        "recstream_scoring_latency_seconds_bucket",
        "recstream_end_to_end_latency_seconds_bucket",
        "recstream_input_delay_seconds_bucket",
        "recstream_session_table_users",
        "recstream_model_info",
        "recstream_consumer_lag",
        "recstream_reread_records_total",
        "recstream_repeated_records_total",
        "recstream_scoring_thread_seconds_total",
        "recstream_event_loop_seconds_total",
    ):
        assert metric in used, f"no panel shows {metric}"


def test_expression_check_catches_mistakes() -> None:
    """Negative control for check_expression."""
    series = exported_series()
    assert check_expression("sum by (topic) (rate(recstream_events_in_total[1m]))", series) == []
    assert check_expression("rate(recstream_event_in_total[1m])", series)
    assert check_expression('recstream_events_in_total{reason="x"}', series)
    assert check_expression("sum by (colour) (recstream_session_table_users)", series)
    assert check_expression("kafka_topic_partitions{}", series)
