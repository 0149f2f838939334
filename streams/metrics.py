"""Prometheus metrics of a worker, in their own registry, behind a small typed facade.

The agents never touch prometheus-client directly; they call :class:`Metrics`
methods whose label values are typed (``Literal`` topics and model kinds, the
``Reason`` enum for dead letters), so a typo fails type-checking instead of
creating a new time series.  The agents count what they emit (``events_out``);
what is consumed (``events_in``) and the per-partition read lag are measured by
:class:`KafkaSensor`, a Faust sensor that :func:`instrument` attaches to the app.

Exported series (every name is listed in :data:`METRIC_NAMES`)::

    recstream_events_in_total{topic}             messages consumed from a recstream topic
    recstream_events_out_total{topic}            messages produced to a recstream topic
    recstream_deadletters_total{reason}          records dead-lettered, by Reason
    recstream_scoring_batch_size{model}          histogram of micro-batch sizes
    recstream_scoring_latency_seconds{model}     histogram of one micro-batch's scoring time
    recstream_scoring_thread_seconds_total{state}  the scoring threads' time while scoring,
                                                 by state: cpu, runqueue, blocked (the GIL,
                                                 or the answers of model processes)
    recstream_end_to_end_latency_seconds         histogram: input event time -> output emitted
    recstream_input_delay_seconds                histogram: input event time -> its batch's
                                                 processing begins (producer, broker, fetch,
                                                 the micro-batch's gathering)
    recstream_session_table_users                users held in this worker's session table
    recstream_model_info{kind,version,provider}  1 for each loaded model
    recstream_consumer_lag{topic,partition}      highwater - next offset to read, per partition
    recstream_reread_records_total               input records the consumer skipped, read again
    recstream_repeated_records_total             input records handed over twice, dropped
    recstream_gc_pause_seconds{generation}       histogram of the garbage collector's pauses
    recstream_model_process_failures_total       model processes that could not start, died
                                                 or hung (their batch ran in its thread)
    recstream_event_loop_seconds_total{state}    the event loop's thread: cpu (on a core),
                                                 runqueue (runnable, waiting for a core);
                                                 Linux only

The consumer lag here is this worker's own view of the partitions it holds.  The
consumer-group lag that drives autoscaling comes from a Kafka exporter
(``kafka_consumergroup_lag``), which also sees partitions no worker holds.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from bisect import bisect_left
from collections import Counter as CountOf
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, repeat
from typing import Any, Final, Literal, get_args

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from recstream.streams.records import Reason
from recstream.streams.settings import Settings
from recstream.streams.thread_clock import STATES, ThreadTimes, thread_core_seconds

#: The topics recstream reads or writes (logical names, without the topic prefix).
Topic = Literal[
    "clicks",
    "searches",
    "reviews",
    "privacy",
    "recommendations",
    "sentiment",
    "sessions",
    "deadletter",
]
TOPICS: tuple[Topic, ...] = get_args(Topic)

#: The two models a worker scores with.
ModelKind = Literal["recs", "sentiment"]

#: Dead-letter reasons beyond :class:`Reason`: an exception while processing a valid record.
PROCESSING_ERROR: Final = "processing_error"
DeadLetterReason = Reason | Literal["processing_error"]

#: Every metric this module exports (histograms are exported as _bucket, _sum and _count).
METRIC_NAMES: tuple[str, ...] = (
    "recstream_events_in_total",
    "recstream_events_out_total",
    "recstream_deadletters_total",
    "recstream_scoring_batch_size",
    "recstream_scoring_latency_seconds",
    "recstream_scoring_thread_seconds_total",
    "recstream_end_to_end_latency_seconds",
    "recstream_input_delay_seconds",
    "recstream_session_table_users",
    "recstream_model_info",
    "recstream_consumer_lag",
    "recstream_reread_records_total",
    "recstream_repeated_records_total",
    "recstream_gc_pause_seconds",
    "recstream_model_process_failures_total",
    "recstream_event_loop_seconds_total",
)

#: A source of (topic, partition, lag) triples, read at every scrape.
LagSource = Callable[[], Iterable[tuple[str, int, int]]]
#: A source of (kind, version, provider) of the models serving now, read at every scrape.
ModelSource = Callable[[], Iterable[tuple[ModelKind, str, str]]]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_GC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class _LagCollector(Collector):
    """Reads the consumer lag from a :data:`LagSource` when Prometheus scrapes."""

    def __init__(self) -> None:
        self.source: LagSource | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "recstream_consumer_lag",
            "Messages between the partition's highwater and the next offset this worker reads.",
            labels=["topic", "partition"],
        )
        if self.source is not None:
            for topic, partition, lag in self.source():
                family.add_metric([topic, str(partition)], float(lag))
        yield family


class _ModelProcessFailures(Collector):
    """``recstream_model_process_failures_total``, read from a source when Prometheus
    scrapes (0 without one: a worker whose model runs in its threads)."""

    def __init__(self) -> None:
        self.source: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "recstream_model_process_failures",
            "Model processes that could not start, died or hung; the batch each was given "
            "ran in its scoring thread instead.",
        )
        family.add_metric([], float(self.source() if self.source is not None else 0))
        yield family


class _EventLoopTimes(Collector):
    """``recstream_event_loop_seconds_total``: how long the event loop's thread has run on
    a core and waited for one, read from its ``schedstat`` when Prometheus scrapes (no
    samples until a thread is watched, or where the kernel does not report them)."""

    def __init__(self) -> None:
        self.native_id: int | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "recstream_event_loop_seconds",
            "The worker's event-loop thread: seconds on a core (cpu) and runnable but "
            "waiting for a core (runqueue).  Every input batch, session update and output "
            "goes through this thread: a large runqueue share is latency the worker's "
            "own code does not explain.",
            labels=["state"],
        )
        seconds = None if self.native_id is None else thread_core_seconds(self.native_id)
        if seconds is not None:
            family.add_metric(["cpu"], seconds[0])
            family.add_metric(["runqueue"], seconds[1])
        yield family


def _cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (bound, count up to it) from counts per bucket."""
    return [
        (floatToGoString(bound), float(total))
        for bound, total in zip(bounds, accumulate(counts), strict=True)
    ]


def _skew_as_zero(seconds: Iterable[float]) -> list[float]:
    """Delays between two clocks, a negative one (the clocks disagree) as 0."""
    return [s if s > 0.0 else 0.0 for s in seconds]


class _BatchHistogram(Collector):
    """A histogram observed a batch of values per call (prometheus-client's takes one
    value per call, with its lock, ~1 us each: one per recommendation added up)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [*buckets, math.inf]
        self.counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: Iterable[float]) -> None:
        """Count each value in the first bucket whose bound is >= it."""
        values = list(values)
        where = CountOf(map(bisect_left, repeat(self.bounds), values))
        with self._lock:
            for index, count in where.items():
                self.counts[index] += count
            self.sum += math.fsum(values)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total_sum = list(self.counts), self.sum
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=_cumulative_buckets(self.bounds, counts),
            sum_value=total_sum,
        )


class _GcPauses(Collector):
    """``recstream_gc_pause_seconds``: how long each collection of the garbage collector
    held the interpreter, by generation, timed by a ``gc.callbacks`` hook.

    The hook runs inside the collection, in whichever thread triggered it: it takes no
    lock (the interpreter's lock already keeps collections one at a time, and a lock
    held by a scrape when a collection starts would never be released) and only adds to
    numbers; a scrape copies them, at worst one collection out of date.
    """

    def __init__(self) -> None:
        self.bounds = [*_GC_BUCKETS, math.inf]
        #: Per generation: collections per bucket (not cumulative), and their sum.
        self.counts = [[0] * len(self.bounds) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def hook(self, phase: str, info: dict[str, int]) -> None:
        """The ``gc.callbacks`` entry: note the start, count the pause at the stop."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation][bisect_left(self.bounds, seconds)] += 1
        self.sums[generation] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "recstream_gc_pause_seconds",
            "How long each collection of Python's garbage collector paused the worker, "
            "by generation (0 youngest, 2 full).",
            labels=["generation"],
        )
        for generation, (counts, total) in enumerate(zip(self.counts, self.sums, strict=True)):
            family.add_metric(
                [str(generation)], _cumulative_buckets(self.bounds, list(counts)), total
            )
        yield family


class _ModelInfoCollector(Collector):
    """``recstream_model_info``: the models set by ``model_loaded`` or read from a source."""

    def __init__(self) -> None:
        self.loaded: dict[ModelKind, tuple[str, str]] = {}
        self.source: ModelSource | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "recstream_model_info",
            "1 for each loaded model: its kind, version and onnxruntime provider.",
            labels=["kind", "version", "provider"],
        )
        if self.source is not None:
            rows = list(self.source())
        else:
            rows = [(kind, version, provider) for kind, (version, provider) in self.loaded.items()]
        for kind, version, provider in rows:
            family.add_metric([kind, version, provider], 1.0)
        yield family


class Metrics:
    """All of a worker's metrics, registered in one dedicated :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._events_in = Counter(
            "recstream_events_in",
            "Messages consumed from a recstream topic.",
            ["topic"],
            registry=reg,
        )
        self._events_out = Counter(
            "recstream_events_out",
            "Messages produced to a recstream topic.",
            ["topic"],
            registry=reg,
        )
        self._deadletters = Counter(
            "recstream_deadletters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=reg,
        )
        self._batch_size = Histogram(
            "recstream_scoring_batch_size",
            "Events scored together in one micro-batch.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self._scoring_latency = Histogram(
            "recstream_scoring_latency_seconds",
            "Wall time to score one micro-batch.",
            ["model"],
            buckets=_SCORING_BUCKETS,
            registry=reg,
        )
        self._scoring_threads = Counter(
            "recstream_scoring_thread_seconds",
            "The scoring threads' wall time while scoring micro-batches, by state: cpu (on "
            "a core), runqueue (runnable, waiting for a core; Linux only), blocked (waiting for "
            "the GIL, or for the model processes' answers where they run the model; includes "
            "the run-queue wait where it is not known).",
            ["state"],
            registry=reg,
        )
        self._end_to_end = _BatchHistogram(
            "recstream_end_to_end_latency_seconds",
            "Seconds from an input event's timestamp to the emission of its output.",
            _END_TO_END_BUCKETS,
        )
        reg.register(self._end_to_end)
        self._input_delay = _BatchHistogram(
            "recstream_input_delay_seconds",
            "Seconds from an input event's timestamp to the start of its batch's processing: "
            "the producer, the broker, the fetch and the micro-batch's gathering (the rest of "
            "the end-to-end latency is the worker's: sessions, scoring, outputs).",
            _END_TO_END_BUCKETS,
        )
        reg.register(self._input_delay)
        self._session_users = Gauge(
            "recstream_session_table_users",
            "Users with a session in this worker's session table.",
            registry=reg,
        )
        self._reread = Counter(
            "recstream_reread_records",
            "Input records the consumer skipped after a (re)assignment, read again and processed.",
            registry=reg,
        )
        self._repeated = Counter(
            "recstream_repeated_records",
            "Input records the consumer handed over again within one assignment, dropped "
            "because they were processed already.",
            registry=reg,
        )
        self._models = _ModelInfoCollector()
        reg.register(self._models)
        self._lag = _LagCollector()
        reg.register(self._lag)
        self._gc = _GcPauses()
        reg.register(self._gc)
        self._model_process_failures = _ModelProcessFailures()
        reg.register(self._model_process_failures)
        self._event_loop = _EventLoopTimes()
        reg.register(self._event_loop)
        # Every topic and model series exists from the start, so rate() sees the first event.
        for topic in TOPICS:
            self._events_in.labels(topic)
            self._events_out.labels(topic)
        for state in STATES:
            self._scoring_threads.labels(state)
        for reason in Reason:
            self._deadletters.labels(reason.value)
        self._deadletters.labels(PROCESSING_ERROR)

    # --- what the agents call -------------------------------------------------------
    def events_in(self, topic: Topic, n: int = 1) -> None:
        """Count ``n`` messages consumed from ``topic`` (done by :class:`KafkaSensor`)."""
        self._events_in.labels(topic).inc(n)

    def events_out(self, topic: Topic, n: int = 1) -> None:
        """Count ``n`` messages produced to ``topic`` (the agents call it as they emit)."""
        self._events_out.labels(topic).inc(n)

    def deadletter(self, reason: DeadLetterReason, n: int = 1) -> None:
        """Count ``n`` records dead-lettered for ``reason``."""
        label = reason.value if isinstance(reason, Reason) else reason
        self._deadletters.labels(label).inc(n)

    def scoring_batch(self, model: ModelKind, size: int, seconds: float) -> None:
        """Record one scored micro-batch: how many events, and how long scoring took."""
        self._batch_size.labels(model).observe(size)
        self._scoring_latency.labels(model).observe(seconds)

    def scoring_thread_time(self, times: ThreadTimes) -> None:
        """Add how a scoring thread spent one micro-batch's scoring (see :mod:`thread_clock`)."""
        self._scoring_threads.labels("cpu").inc(max(0.0, times.cpu))
        if times.runqueue is not None:
            self._scoring_threads.labels("runqueue").inc(max(0.0, times.runqueue))
        self._scoring_threads.labels("blocked").inc(times.blocked)

    def end_to_end(self, seconds: Iterable[float]) -> None:
        """Record the delays from input events' times to the emission of their outputs
        (negative ones, from clocks that disagree, as 0)."""
        self._end_to_end.observe(_skew_as_zero(seconds))

    def input_delay(self, seconds: Iterable[float]) -> None:
        """Record the delays from input events' times to the start of their batch's
        processing (negative ones, from clocks that disagree, as 0)."""
        self._input_delay.observe(_skew_as_zero(seconds))

    def reread(self, n: int) -> None:
        """Count ``n`` input records read again because the consumer skipped them."""
        self._reread.inc(n)

    def repeated(self, n: int) -> None:
        """Count ``n`` input records dropped because the consumer handed them over again."""
        self._repeated.inc(n)

    def session_users(self, n: int) -> None:
        """Set the number of users in this worker's session table."""
        self._session_users.set(n)

    def model_loaded(self, kind: ModelKind, version: str, provider: str) -> None:
        """Publish the model now serving ``kind`` (replaces the previous one of that kind)."""
        self._models.loaded[kind] = (version, provider)

    # --- what the worker wires --------------------------------------------------------
    def watch_lag(self, source: LagSource) -> None:
        """Read ``recstream_consumer_lag`` from ``source`` at every scrape."""
        self._lag.source = source

    def watch_models(self, source: ModelSource) -> None:
        """Read ``recstream_model_info`` from ``source`` at every scrape (instead of
        :meth:`model_loaded`), so a model the scorer hot-reloaded shows its new version."""
        self._models.source = source

    def watch_model_processes(self, failures: Callable[[], int]) -> None:
        """Read ``recstream_model_process_failures_total`` from ``failures`` at every scrape."""
        self._model_process_failures.source = failures

    def watch_event_loop(self) -> None:
        """Report the calling thread (the event loop's) as ``recstream_event_loop_seconds``."""
        self._event_loop.native_id = threading.get_native_id()

    def watch_gc(self) -> Callable[[], None]:
        """Time the garbage collector's pauses from now on; returns what stops it."""
        hook = self._gc.hook
        gc.callbacks.append(hook)
        return lambda: gc.callbacks.remove(hook)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format 0.0.4 (read by every Prometheus), its type."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class KafkaSensor(faust.Sensor):
    """Counts messages consumed from recstream's topics and tracks the read offsets.

    Topics are labelled by their logical name (the settings' topic prefix removed);
    changelog, repartition and other internal topics are not counted.
    """

    def __init__(self, metrics: Metrics, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        #: full topic name -> logical name, for the topics that are counted
        self.topics: dict[str, Topic] = {settings.topic(name): name for name in TOPICS}
        #: next offset to read, per (topic, partition) this worker has read from
        self.next_offsets: dict[tuple[str, int], int] = {}

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        """A message was consumed: count it and remember where reading stands."""
        name = self.topics.get(tp.topic)
        if name is None:
            return
        self.metrics.events_in(name)
        self.next_offsets[(tp.topic, tp.partition)] = offset + 1

    def on_messages_in(self, tp: Any, messages: Sequence[Any]) -> None:
        """A batch of messages (in offset order) was consumed: :meth:`on_message_in` for
        all of them at once (the consumer calls this for the topics it delivers in batches)."""
        name = self.topics.get(tp.topic)
        if name is None or not messages:
            return
        self.metrics.events_in(name, len(messages))
        self.next_offsets[(tp.topic, tp.partition)] = messages[-1].offset + 1

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        """Partitions may move: forget read positions until messages arrive again."""
        self.next_offsets.clear()
        return super().on_rebalance_start(app)


def consumer_lag(app: faust.App, sensor: KafkaSensor) -> list[tuple[str, int, int]]:
    """Lag of each input partition assigned to this worker, from the consumer's highwaters.

    Partitions not read from yet, or whose highwater the consumer does not know yet,
    are left out rather than guessed.
    """
    if not sensor.next_offsets:  # nothing read yet: there may be no consumer at all
        return []
    consumer = app.consumer
    rows: list[tuple[str, int, int]] = []
    try:
        assigned = sorted(consumer.assignment())
    except ConsumerNotStarted:
        return []
    for tp in assigned:
        name = sensor.topics.get(tp.topic)
        next_offset = sensor.next_offsets.get((tp.topic, tp.partition))
        if name is None or next_offset is None:
            continue
        try:
            highwater = consumer.highwater(tp)
        except (AssertionError, KafkaError, ConsumerNotStarted):  # revoked meanwhile
            continue
        if highwater is not None:
            rows.append((name, tp.partition, max(highwater - next_offset, 0)))
    return rows


def instrument(app: faust.App, metrics: Metrics, settings: Settings) -> KafkaSensor:
    """Attach a :class:`KafkaSensor` to ``app`` and feed the lag gauge from its consumer."""
    sensor = KafkaSensor(metrics, settings)
    app.sensors.add(sensor)
    metrics.watch_lag(lambda: consumer_lag(app, sensor))
    return sensor
