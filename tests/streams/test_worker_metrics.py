"""The metrics facade, its own registry, the Kafka sensor and the lag gauge."""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import faust
import prometheus_client
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams.metrics import (
    METRIC_NAMES,
    PROCESSING_ERROR,
    TOPICS,
    KafkaSensor,
    Metrics,
    consumer_lag,
)
from recstream.streams.records import Reason
from recstream.streams.settings import Settings
from recstream.streams.thread_clock import ThreadTimes
from recstream.streams.topic_admin import ALL_TOPICS


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_declared_metric_is_exported_and_nothing_else() -> None:
    metrics = Metrics()
    metrics.watch_lag(lambda: [("clicks", 0, 5)])
    body, content_type = metrics.render()
    families = list(text_string_to_metric_families(body.decode()))
    # Families drop the counters' _total suffix (their samples keep it); the text format
    # shows counters' and histograms' creation times as separate *_created gauges.
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in families
        if not f.name.endswith("_created")
    }
    assert exported == set(METRIC_NAMES)
    assert content_type.startswith("text/plain; version=0.0.4")


def test_registry_is_private_to_each_instance() -> None:
    first, second = Metrics(), Metrics()
    first.events_in("clicks", 2)
    assert value(first, "recstream_events_in_total", topic="clicks") == 2
    assert value(second, "recstream_events_in_total", topic="clicks") == 0
    assert (
        prometheus_client.REGISTRY.get_sample_value(
            "recstream_events_in_total", {"topic": "clicks"}
        )
        is None
    )


def test_counters_exist_at_zero_before_the_first_event() -> None:
    metrics = Metrics()
    for topic in TOPICS:
        assert value(metrics, "recstream_events_in_total", topic=topic) == 0
        assert value(metrics, "recstream_events_out_total", topic=topic) == 0
    for reason in Reason:
        assert value(metrics, "recstream_deadletters_total", reason=reason.value) == 0


def test_topics_are_the_topic_admins_topics() -> None:
    assert set(TOPICS) == set(ALL_TOPICS)


def test_events_and_dead_letters_count() -> None:
    metrics = Metrics()
    metrics.events_in("clicks", 3)
    metrics.events_in("clicks")
    metrics.events_out("recommendations", 2)
    metrics.deadletter(Reason.BAD_JSON)
    metrics.deadletter(Reason.BAD_JSON, 2)
    metrics.deadletter(PROCESSING_ERROR)
    assert value(metrics, "recstream_events_in_total", topic="clicks") == 4
    assert value(metrics, "recstream_events_in_total", topic="searches") == 0
    assert value(metrics, "recstream_events_out_total", topic="recommendations") == 2
    assert value(metrics, "recstream_deadletters_total", reason="bad_json") == 3
    assert value(metrics, "recstream_deadletters_total", reason="processing_error") == 1


def test_scoring_batches_feed_both_histograms() -> None:
    metrics = Metrics()
    metrics.scoring_batch("recs", 100, 0.02)
    metrics.scoring_batch("recs", 3, 0.004)
    metrics.scoring_batch("sentiment", 7, 0.5)
    assert value(metrics, "recstream_scoring_batch_size_count", model="recs") == 2
    assert value(metrics, "recstream_scoring_batch_size_sum", model="recs") == 103
    assert value(metrics, "recstream_scoring_batch_size_bucket", model="recs", le="4.0") == 1
    assert value(metrics, "recstream_scoring_latency_seconds_sum", model="recs") == (
        pytest.approx(0.024)
    )
    assert value(metrics, "recstream_scoring_latency_seconds_count", model="sentiment") == 1


def test_scoring_thread_time_is_added_by_state() -> None:
    metrics = Metrics()
    metrics.scoring_thread_time(ThreadTimes(wall=1.0, cpu=0.6, runqueue=0.1))
    metrics.scoring_thread_time(ThreadTimes(wall=0.5, cpu=0.2, runqueue=None))  # not Linux
    assert value(metrics, "recstream_scoring_thread_seconds_total", state="cpu") == (
        pytest.approx(0.8)
    )
    assert value(metrics, "recstream_scoring_thread_seconds_total", state="runqueue") == (
        pytest.approx(0.1)
    )
    # 0.3 of the first batch, and all 0.3 of the second that was not on a core
    assert value(metrics, "recstream_scoring_thread_seconds_total", state="blocked") == (
        pytest.approx(0.6)
    )


@pytest.mark.skipif(sys.platform != "linux", reason="schedstat is read on Linux only")
def test_the_watched_event_loop_threads_core_time_is_read_at_each_scrape() -> None:
    metrics = Metrics()
    assert value(metrics, "recstream_event_loop_seconds_total", state="cpu") is None
    metrics.watch_event_loop()  # this thread
    before = value(metrics, "recstream_event_loop_seconds_total", state="cpu")
    until = time.thread_time() + 0.05
    while time.thread_time() < until:
        pass
    after = value(metrics, "recstream_event_loop_seconds_total", state="cpu")
    assert before is not None and after is not None and after - before >= 0.045
    runqueue = value(metrics, "recstream_event_loop_seconds_total", state="runqueue")
    assert runqueue is not None and runqueue >= 0.0


def test_input_delay_clamps_clock_skew_to_zero() -> None:
    metrics = Metrics()
    metrics.input_delay([0.02, 0.2])
    metrics.input_delay([-1.0])  # event stamped slightly in the future
    assert value(metrics, "recstream_input_delay_seconds_count") == 3
    assert value(metrics, "recstream_input_delay_seconds_sum") == pytest.approx(0.22)
    assert value(metrics, "recstream_input_delay_seconds_bucket", le="0.005") == 1
    assert value(metrics, "recstream_input_delay_seconds_bucket", le="0.025") == 2


def test_end_to_end_latency_clamps_clock_skew_to_zero() -> None:
    metrics = Metrics()
    metrics.end_to_end([0.3])
    metrics.end_to_end([-2.0])  # event stamped slightly in the future
    assert value(metrics, "recstream_end_to_end_latency_seconds_count") == 2
    assert value(metrics, "recstream_end_to_end_latency_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "recstream_end_to_end_latency_seconds_bucket", le="0.005") == 1


def test_end_to_end_latency_reads_like_a_prometheus_histogram() -> None:
    """The batch histogram exports what prometheus-client's own would, value by value."""
    values = [0.0, 0.005, 0.0051, 0.3, 1.0, 1, 59.9, 60.0, 61.0, 1e6, 0.02, 0.02]
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "recstream_end_to_end_latency_seconds",
        "reference",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        registry=reference_registry,
    )
    for seconds in values:
        reference.observe(seconds)
    metrics = Metrics()
    metrics.end_to_end(values[:5])
    metrics.end_to_end(iter(values[5:]))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("le", "")): sample.value
            for family in registry.collect()
            if family.name == "recstream_end_to_end_latency_seconds"
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    expected = samples(reference_registry)
    assert len(expected) == 16  # 14 buckets with +Inf, the sum and the count
    assert samples(metrics.registry) == pytest.approx(expected)


def test_reread_records_count() -> None:
    metrics = Metrics()
    assert value(metrics, "recstream_reread_records_total") == 0
    metrics.reread(3)
    metrics.reread(2)
    assert value(metrics, "recstream_reread_records_total") == 5


def test_repeated_records_count() -> None:
    metrics = Metrics()
    assert value(metrics, "recstream_repeated_records_total") == 0
    metrics.repeated(4)
    assert value(metrics, "recstream_repeated_records_total") == 4


def test_session_users_gauge() -> None:
    metrics = Metrics()
    metrics.session_users(42)
    metrics.session_users(40)
    assert value(metrics, "recstream_session_table_users") == 40


def test_model_info_keeps_only_the_current_version_per_kind() -> None:
    metrics = Metrics()
    metrics.model_loaded("recs", "v1", "CPUExecutionProvider")
    metrics.model_loaded("sentiment", "s1", "CPUExecutionProvider")
    metrics.model_loaded("recs", "v2", "CUDAExecutionProvider")
    info = "recstream_model_info"
    assert value(metrics, info, kind="recs", version="v1", provider="CPUExecutionProvider") is None
    assert value(metrics, info, kind="recs", version="v2", provider="CUDAExecutionProvider") == 1
    assert (
        value(metrics, info, kind="sentiment", version="s1", provider="CPUExecutionProvider") == 1
    )


def test_model_info_can_follow_hot_reloads() -> None:
    metrics = Metrics()
    metrics.model_loaded("recs", "v1", "CPUExecutionProvider")
    serving = {"recs": "v2"}
    metrics.watch_models(lambda: [("recs", serving["recs"], "CPUExecutionProvider")])
    info = "recstream_model_info"
    cpu = "CPUExecutionProvider"
    assert value(metrics, info, kind="recs", version="v2", provider=cpu) == 1
    assert value(metrics, info, kind="recs", version="v1", provider=cpu) is None
    serving["recs"] = "v3"  # the scorer swapped in a new file
    assert value(metrics, info, kind="recs", version="v3", provider=cpu) == 1
    assert value(metrics, info, kind="recs", version="v2", provider=cpu) is None


def test_lag_is_read_from_the_source_at_each_scrape() -> None:
    metrics = Metrics()
    assert value(metrics, "recstream_consumer_lag", topic="clicks", partition="0") is None
    rows = [("clicks", 0, 5), ("reviews", 3, 0)]
    metrics.watch_lag(lambda: rows)
    assert value(metrics, "recstream_consumer_lag", topic="clicks", partition="0") == 5
    rows[0] = ("clicks", 0, 1)
    assert value(metrics, "recstream_consumer_lag", topic="clicks", partition="0") == 1
    assert value(metrics, "recstream_consumer_lag", topic="reviews", partition="3") == 0


def test_model_process_failures_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    assert value(metrics, "recstream_model_process_failures_total") == 0
    failures = [3]
    metrics.watch_model_processes(lambda: failures[0])
    assert value(metrics, "recstream_model_process_failures_total") == 3
    failures[0] = 4
    assert value(metrics, "recstream_model_process_failures_total") == 4


def test_sensor_counts_recstream_topics_by_logical_name_only() -> None:
    metrics = Metrics()
    sensor = KafkaSensor(metrics, Settings(topic_prefix="shop1."))
    sensor.on_message_in(TP("shop1.clicks", 1), 41, None)
    sensor.on_message_in(TP("shop1.clicks", 1), 42, None)
    sensor.on_message_in(TP("shop1.reviews", 0), 7, None)
    sensor.on_message_in(TP("clicks", 0), 1, None)  # another prefix: not ours
    sensor.on_message_in(TP("recstream-users-changelog", 0), 9, None)
    assert value(metrics, "recstream_events_in_total", topic="clicks") == 2
    assert value(metrics, "recstream_events_in_total", topic="reviews") == 1
    assert sensor.next_offsets == {("shop1.clicks", 1): 43, ("shop1.reviews", 0): 8}
    batch = [SimpleNamespace(offset=offset) for offset in (43, 44, 45)]
    sensor.on_messages_in(TP("shop1.clicks", 1), batch)
    sensor.on_messages_in(TP("recstream-users-changelog", 0), batch)
    sensor.on_messages_in(TP("shop1.clicks", 1), [])
    assert value(metrics, "recstream_events_in_total", topic="clicks") == 5
    assert sensor.next_offsets[("shop1.clicks", 1)] == 46


@dataclass
class FakeConsumer:
    """The two consumer calls consumer_lag makes, over fixed highwaters."""

    highwaters: dict[TP, int | None]
    revoked: set[TP] = field(default_factory=set)

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        assert tp not in self.revoked, "Partition is not assigned"
        return self.highwaters[tp]


@dataclass
class FakeApp:
    consumer: FakeConsumer


def test_consumer_lag_from_highwater_and_next_offset() -> None:
    sensor = KafkaSensor(Metrics(), Settings())
    clicks0, clicks1, reviews0 = TP("clicks", 0), TP("clicks", 1), TP("reviews", 0)
    changelog, unknown_hw, revoked = (
        TP("recstream-users-changelog", 0),
        TP("searches", 0),
        TP("privacy", 0),
    )
    consumer = FakeConsumer(
        {clicks0: 100, clicks1: 10, reviews0: 50, changelog: 99, unknown_hw: None, revoked: 5},
        revoked={revoked},
    )
    app = cast(faust.App, FakeApp(consumer))
    assert consumer_lag(app, sensor) == []  # nothing read yet
    for tp, offset in ((clicks0, 89), (clicks1, 9), (unknown_hw, 3), (revoked, 1)):
        sensor.on_message_in(tp, offset, None)
    # reviews0 was never read from: left out, not guessed.
    assert consumer_lag(app, sensor) == [("clicks", 0, 10), ("clicks", 1, 0)]


def test_rebalance_forgets_read_positions() -> None:
    sensor = KafkaSensor(Metrics(), Settings())
    sensor.on_message_in(TP("clicks", 0), 5, None)
    app = faust.App("metrics-test", broker="kafka://127.0.0.1:1")
    sensor.on_rebalance_start(app)
    assert sensor.next_offsets == {}


def test_gc_pauses_are_timed_by_generation_while_watched() -> None:
    metrics = Metrics()
    gc.disable()  # only the collections asked for here
    stop = metrics.watch_gc()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        stop()
        gc.collect(1)  # not watched any more
        gc.enable()
    count = "recstream_gc_pause_seconds_count"
    assert value(metrics, count, generation="0") == 1
    assert value(metrics, count, generation="1") == 0
    assert value(metrics, count, generation="2") == 2
    full = value(metrics, "recstream_gc_pause_seconds_sum", generation="2")
    assert full is not None and full > 0
    # every pause is in a bucket at most as long as the +Inf one
    inf = value(metrics, "recstream_gc_pause_seconds_bucket", generation="2", le="+Inf")
    assert inf == 2


def test_gc_pause_buckets_are_cumulative() -> None:
    metrics = Metrics()
    hook = metrics._gc.hook
    for seconds in (0.0005, 0.003, 0.003, 2.0):
        hook("start", {"generation": 0})
        metrics._gc._started -= seconds  # as if the collection had started that long ago
        hook("stop", {"generation": 0})
    bucket = "recstream_gc_pause_seconds_bucket"
    assert value(metrics, bucket, generation="0", le="0.001") == 1
    assert value(metrics, bucket, generation="0", le="0.0025") == 1
    assert value(metrics, bucket, generation="0", le="0.005") == 3
    assert value(metrics, bucket, generation="0", le="1.0") == 3
    assert value(metrics, bucket, generation="0", le="+Inf") == 4
    total = value(metrics, "recstream_gc_pause_seconds_sum", generation="0")
    assert total is not None and total == pytest.approx(2.0065, abs=1e-3)
