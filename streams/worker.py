"""Run a stream worker: sessions, recommendations and sentiment from Kafka to Kafka."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import TYPE_CHECKING, Final

from recstream.streams.settings import Settings, get_settings

if TYPE_CHECKING:
    from recstream.streams.scoring import RecsScorer, SentimentScorer

log = logging.getLogger("recstream.worker")

#: Faust's log level names (it rejects ``warning``).
FAUST_LOG_LEVELS: Final = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}
EXIT_BAD_MODEL: Final = 2
EXIT_BAD_CONFIG: Final = 2
#: Seconds the start-up partition check waits for the brokers.
PARTITION_CHECK_TIMEOUT_S: Final = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker takes its configuration from ``RECSTREAM_*`` variables (see settings)."""
    parser.description = (
        "Consume clicks, searches, reviews and privacy requests; produce recommendations, "
        "sentiment, closed sessions and dead letters. Configured by RECSTREAM_* variables; "
        "the web server (metrics, /healthz, /readyz) binds RECSTREAM_WEB_HOST "
        "(default 127.0.0.1):RECSTREAM_WEB_PORT."
    )


def run(args: argparse.Namespace) -> int:
    """Load the models (stopping with a clear message if they are unusable), then serve."""
    settings = get_settings()
    return serve(settings)


def check_transactions(settings: Settings) -> str | None:
    """Why the brokers cannot run the transactions ``exactly_once`` needs, or ``None``."""
    import asyncio

    from recstream.streams.transactions import probe_transactions

    return asyncio.run(probe_transactions(settings))


def check_partitions(settings: Settings) -> str | None:
    """Why the input topics cannot be used (missing, or not ``settings.partitions``
    partitions), or ``None`` when they are right.

    Each user's state lives on the partition their user id hashes to modulo
    ``RECSTREAM_PARTITIONS``, so another partition count would place it wrongly.
    """
    import asyncio

    from recstream.streams.topic_admin import INPUT_TOPICS, partition_counts

    try:
        counts = asyncio.run(
            asyncio.wait_for(
                partition_counts(settings, INPUT_TOPICS), timeout=PARTITION_CHECK_TIMEOUT_S
            )
        )
    except Exception as exc:  # broker unreachable, refused, timed out
        return (
            f"cannot check the input topics at {settings.bootstrap_servers}: "
            f"{type(exc).__name__}: {exc}"
        )
    missing = sorted(name for name, count in counts.items() if count is None)
    wrong = {
        name: count for name, count in counts.items() if count not in (None, settings.partitions)
    }
    if not missing and not wrong:
        return None
    parts = []
    if missing:
        parts.append(f"missing input topics {', '.join(missing)}")
    if wrong:
        found = ", ".join(f"{name} has {count}" for name, count in sorted(wrong.items()))
        parts.append(f"wrong partition counts ({found})")
    return (
        f"{'; '.join(parts)}: every input topic must have RECSTREAM_PARTITIONS="
        f"{settings.partitions} partitions (user state is placed by user id modulo that "
        "count). Create them with `recstream topics`, or set RECSTREAM_PARTITIONS to "
        "the topics' partition count."
    )


def prepare_garbage_collector(young_threshold: int) -> int:
    """Move everything allocated so far (modules, Faust, the models' vocabularies) out of
    the garbage collector's reach, and collect the youngest generation every
    ``young_threshold`` allocations (0: Python's default); returns how many objects
    were frozen.

    A full collection walks every tracked object: with a 50k-item model loaded it paused
    the worker for 68-102 ms (four collections measured), 6-15 ms once frozen.  These
    objects live as long as the process anyway.  A batch of 1,024 clicks leaves
    thousands of short-lived objects to the collector at a time; at Python's threshold
    (700) it ran ~15 times per batch (measured on the benchmark backlog: 13.5 young, 1.2
    middle, 0.1 full collections) and promoted objects that died a moment later.
    """
    gc.collect()
    gc.freeze()
    if young_threshold:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])
    return gc.get_freeze_count()


def serve(settings: Settings, scorers: tuple[RecsScorer, SentimentScorer] | None = None) -> int:
    """Run the worker for ``settings`` until it is stopped; returns the exit code.

    ``scorers`` replaces the models of ``settings.model_dir`` (the pass-through
    benchmark runs the whole worker with scorers that return at once).
    """
    import faust

    from recstream.streams.app import build_app
    from recstream.streams.kafka_config import describe
    from recstream.streams.logs import configure_logging, logging_config
    from recstream.streams.metrics import Metrics, instrument
    from recstream.streams.model_process import failures as model_process_failures
    from recstream.streams.state_store import TABLE_NAME
    from recstream.streams.storefront import TABLE_NAME as STOREFRONT_TABLE
    from recstream.streams.storefront import load_catalog, popular_items, register_storefront
    from recstream.streams.web import Readiness, register_web

    configure_logging(settings)
    try:
        from recstream.streams.scoring import load_scorers

        recs, sentiment = scorers or load_scorers(settings)
    except Exception as exc:  # any model problem stops the worker before it joins the group
        print(
            f"recstream worker: cannot load the models from {settings.model_dir}: "
            f"{type(exc).__name__}: {exc}\n"
            "Export them first (`recstream export`) or set RECSTREAM_MODEL_DIR.",
            file=sys.stderr,
        )
        return EXIT_BAD_MODEL
    problem = check_partitions(settings)
    if problem is not None:
        print(f"recstream worker: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if settings.processing_guarantee == "exactly_once":
        why = check_transactions(settings)
        if why is not None:
            print(
                "recstream worker: RECSTREAM_PROCESSING_GUARANTEE=exactly_once needs Kafka "
                f"transactions, and the brokers at {settings.bootstrap_servers} refused "
                f"them ({why}). Use at_least_once with this broker.",
                file=sys.stderr,
            )
            return EXIT_BAD_CONFIG
    metrics = Metrics()
    metrics.watch_model_processes(model_process_failures)
    for kind, scorer in (("recs", recs), ("sentiment", sentiment)):
        providers = getattr(scorer, "providers", None)
        provider = providers[0] if providers else "unknown"
        metrics.model_loaded(kind, scorer.model_version, provider)  # type: ignore[arg-type]
        log.info("model %s %s on %s", kind, scorer.model_version, providers or provider)
    app = build_app(settings, recs, sentiment, metrics=metrics)
    readiness = Readiness(app)
    instrument(app, metrics, settings)
    register_web(app, metrics, readiness)
    app.recstream.latest = register_storefront(  # type: ignore[attr-defined]
        app,
        settings,
        app.tables[STOREFRONT_TABLE],  # type: ignore[arg-type]
        app.tables[TABLE_NAME],  # type: ignore[arg-type]
        popular_items(recs),
        readiness,
        catalog=load_catalog(settings.catalog_path) if settings.catalog_path else None,
    )
    readiness.models_loaded()
    log.info(
        "worker %s: %s, topics prefix %r, %d partitions, web %s:%d",
        settings.app_id,
        describe(settings),
        settings.topic_prefix,
        settings.partitions,
        settings.web_host,
        settings.web_port,
    )
    worker = faust.Worker(
        app,
        loglevel=FAUST_LOG_LEVELS[settings.log_level],
        logging_config=logging_config(settings),
        redirect_stdouts=False,
        quiet=True,
    )
    # Faust's terminal spinner sets the root logger to DEBUG (at warn/error) so that it
    # spins on every record: every debug call on the hot path would build a record.
    worker.spinner = None
    prepare_garbage_collector(settings.gc_young_threshold)
    stop_watching_gc = metrics.watch_gc()  # after start-up: the pauses of serving
    metrics.watch_event_loop()  # execute_from_commandline runs the loop in this thread
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        stop_watching_gc()
        app.recstream.close()  # type: ignore[attr-defined]
    return 0
