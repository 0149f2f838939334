"""The Faust application of the worker: broker, topics, the user-state table and agents."""

from __future__ import annotations

import socket
from typing import Any

import faust
from faust.types import TP

from recstream.streams.agents import BatchProcessor, register_agents
from recstream.streams.input_batches import BatchMonitor
from recstream.streams.kafka_config import aiokafka_kwargs, faust_broker_kwargs
from recstream.streams.metrics import Metrics
from recstream.streams.pipeline import Pipeline
from recstream.streams.scoring import RecsScorer, SentimentScorer
from recstream.streams.settings import Settings
from recstream.streams.skipped_records import SkippedRecords
from recstream.streams.state_store import (
    TableStateStore,
    declare_table,
    flush_changelog_before_commits,
)
from recstream.streams.storefront import declare_latest_table
from recstream.streams.topics import declare_topics
from recstream.streams.transactions import use_transactions

#: Consumer-group timing: a dead worker's partitions move after 10 s (also what the
#: tansu test broker needs); heartbeats run on the event loop, never blocked by scoring.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 1.0
PRODUCER_LINGER_S = 0.005


def advertised_host(settings: Settings) -> str:
    """The host other workers reach this one at: the bind address, or this machine's
    name when the worker binds every interface (containers, Kubernetes pods)."""
    if settings.web_advertised_host:
        return settings.web_advertised_host
    if settings.web_host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return settings.web_host


def faust_options(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments derived from ``settings``."""
    return {
        **faust_broker_kwargs(settings),
        "processing_guarantee": settings.processing_guarantee,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "autodiscover": False,
        "datadir": str(settings.data_dir),
        "store": "memory://",
        "web_enabled": True,
        # Faust binds web_bind (its default is 0.0.0.0) and advertises web_host to the
        # other workers, which route storefront requests there.
        "web_bind": settings.web_host,
        "web_host": advertised_host(settings),
        "web_port": settings.web_port,
        "broker_session_timeout": SESSION_TIMEOUT_S,
        "broker_heartbeat_interval": HEARTBEAT_INTERVAL_S,
        # records Faust sends one by one leave in a few produce requests instead of
        # one per burst (measured when exactly-once sent that way too, with the other
        # worker fixes: 23-31% less CPU per event); record_batches' batches do not linger
        "producer_linger": PRODUCER_LINGER_S,
        "producer_max_batch_size": settings.producer_max_batch_bytes,
        "consumer_auto_offset_reset": "earliest",
        "Monitor": BatchMonitor,
    }


def build_app(
    settings: Settings,
    recs: RecsScorer,
    sentiment: SentimentScorer,
    *,
    metrics: Metrics | None = None,
) -> faust.App:
    """A ready-to-run worker app; ``app.recstream`` is its :class:`BatchProcessor`."""
    app = faust.App(settings.app_id, **faust_options(settings))
    app.recstream_fetch_max_wait = settings.fetch_max_wait  # type: ignore[attr-defined]
    app.recstream_empty_fetch_pause = settings.empty_fetch_pause  # type: ignore[attr-defined]
    app.recstream_kafka = aiokafka_kwargs(settings)  # type: ignore[attr-defined]
    skipped = SkippedRecords(settings, app.conf.id)
    exactly_once = settings.processing_guarantee == "exactly_once"
    transactions = use_transactions(app, skipped.tracker.positions) if exactly_once else None
    if not exactly_once:
        flush_changelog_before_commits(app)
    topics = declare_topics(app, settings)
    table = declare_table(app, settings)
    declare_latest_table(app, settings)
    store = TableStateStore(table, defer_changelog=True, transactions=transactions)
    app.recstream_store = store  # type: ignore[attr-defined]
    pipeline = Pipeline(settings, recs, sentiment, partitions=settings.partitions)
    processor = BatchProcessor(
        app, pipeline, store, topics, metrics, transactions, settings.scoring_threads
    )
    register_agents(app, processor, topics, settings.batch_size, settings.batch_within)
    owned_topics = {topic.get_topic_name() for topic in topics.inputs.values()}
    owned_topics.add(topics.repartition.get_topic_name())

    @table.on_recover
    async def rebuild_sweep_index() -> None:
        actives = app.assignor.assigned_actives()
        processor.rebuild_index({tp.partition for tp in actives if tp.topic in owned_topics})

    processor.skipped = skipped

    # Faust's signals call handlers as (sender, *args, signal=..., **kwargs).
    async def forget_offsets(sender: Any, revoked: set[TP], **_: Any) -> None:
        # Held changelog records go out before another worker takes the partitions
        # (sent later, they could overwrite what the new owner writes).
        await store.flush()
        skipped.forget((tp.topic, tp.partition) for tp in revoked)
        if transactions is not None:
            transactions.revoke((tp.topic, tp.partition) for tp in revoked)

    async def take_transactions(sender: Any, assigned: set[TP], **_: Any) -> None:
        if transactions is not None:
            transactions.assign((tp.topic, tp.partition) for tp in assigned)

    async def close_readers(sender: Any, **_: Any) -> None:
        await skipped.close()

    app.on_partitions_revoked.connect(forget_offsets)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(take_transactions)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(close_readers)  # type: ignore[arg-type]

    app.recstream = processor  # type: ignore[attr-defined]
    return app
