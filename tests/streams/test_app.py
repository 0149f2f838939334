"""The Faust app: what build_app configures (no broker needed to build it)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from faust.types import TP

from recstream.streams import worker
from recstream.streams.app import build_app
from recstream.streams.input_batches import FedBatch, feeds_of
from recstream.streams.pipeline import RawRecord
from recstream.streams.scoring import FakeRecsScorer, FakeSentimentScorer
from recstream.streams.settings import Settings


def test_app_binds_loopback_and_declares_topics_table_and_agents() -> None:
    settings = Settings(
        app_id="shop-a", topic_prefix="p.", partitions=3, web_port=7001,
        bootstrap_servers="127.0.0.1:1",
    )  # fmt: skip
    app = build_app(settings, FakeRecsScorer(["a", "b"]), FakeSentimentScorer())
    conf = app.conf
    assert conf.web_bind == "127.0.0.1" and conf.web_port == 7001
    assert conf.processing_guarantee.value == "at_least_once"
    assert conf.topic_partitions == 3
    fed = {"p.clicks", "p.searches", "p.reviews", "p.privacy", "shop-a-events-repartition"}
    assert set(feeds_of(app)) == fed  # one agent each, fed whole fetched batches
    assert fed <= {name for topic in app.topics for name in topic.topics}  # subscribed
    table = app.tables["user-state"]
    assert table.changelog_topic.get_topic_name() == "shop-a-user-state-changelog"
    assert table.partitions == 3


def test_producer_batch_size_setting_reaches_faust() -> None:
    default = build_app(Settings(bootstrap_servers="127.0.0.1:1"), FakeRecsScorer(["a"]),
                        FakeSentimentScorer())  # fmt: skip
    assert default.conf.producer_max_batch_size == 262_144
    settings = Settings(producer_max_batch_bytes=1, bootstrap_servers="127.0.0.1:1")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    assert app.conf.producer_max_batch_size == 1


def test_web_host_setting_is_honoured() -> None:
    settings = Settings(web_host="0.0.0.0", bootstrap_servers="127.0.0.1:1")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    assert app.conf.web_bind == "0.0.0.0"


def test_worker_command_has_help_and_faust_log_levels() -> None:
    parser = argparse.ArgumentParser()
    worker.add_arguments(parser)
    assert "RECSTREAM_WEB_HOST" in (parser.description or "")
    assert worker.FAUST_LOG_LEVELS["warning"] == "warn"


def test_worker_refuses_exactly_once_when_the_broker_refuses_transactions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from recstream.streams import logs, scoring

    fakes = (FakeRecsScorer(["a"]), FakeSentimentScorer())
    # (the worker's log handler would hold pytest's captured stderr after the test)
    monkeypatch.setattr(logs, "configure_logging", lambda settings: None)
    monkeypatch.setattr(scoring, "load_scorers", lambda settings: fakes)
    monkeypatch.setattr(worker, "check_partitions", lambda settings: None)
    settings = Settings(processing_guarantee="exactly_once", bootstrap_servers="127.0.0.1:1")
    assert worker.serve(settings) == worker.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "exactly_once needs Kafka transactions" in err and "KafkaConnectionError" in err


def test_exactly_once_apps_commit_through_their_transactions() -> None:
    from faust.types import TP

    from recstream.streams.transactions import Transactions

    settings = Settings(processing_guarantee="exactly_once", bootstrap_servers="127.0.0.1:1")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    processor = app.recstream  # type: ignore[attr-defined]
    transactions = processor.transactions
    assert isinstance(transactions, Transactions)
    assert processor.store.transactions is transactions
    assert app.recstream_transactions is transactions  # type: ignore[attr-defined]
    assert type(app.transport).__name__ == "_GatedTransport"
    assert transactions.processed() == processor.skipped.tracker.positions()
    # revoked partitions' transactions are not committed until they come back
    transactions.transactional_id = lambda topic, partition: f"t{partition}"
    await_signal = app.on_partitions_revoked.send({TP("p.clicks", 1)})
    asyncio.run(await_signal)
    assert transactions._revoked == {"t1"}
    asyncio.run(app.on_partitions_assigned.send({TP("p.clicks", 1)}))
    assert transactions._revoked == set()
    plain = build_app(Settings(bootstrap_servers="127.0.0.1:1"), *(FakeRecsScorer(["a"]),
                      FakeSentimentScorer()))  # fmt: skip
    assert plain.recstream.transactions is None  # type: ignore[attr-defined]


async def test_revoked_partitions_are_checked_again_from_their_committed_offset() -> None:
    from faust.types import TP

    from recstream.streams.skipped_records import OffsetTracker

    settings = Settings(app_id="shop-b", topic_prefix="p.", bootstrap_servers="127.0.0.1:1")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    skipped = app.recstream.skipped  # type: ignore[attr-defined]
    assert skipped.group_id == app.conf.id
    asked: list[list[tuple[str, int]]] = []

    async def committed(partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        asked.append(list(partitions))
        return dict.fromkeys(partitions, 0)

    skipped.tracker = OffsetTracker(committed)
    assert (await skipped.tracker.check([("p.clicks", 0, 0)])).repeated == []
    await app.on_partitions_revoked.send({TP("p.clicks", 0)})
    assert (await skipped.tracker.check([("p.clicks", 0, 0)])).repeated == []
    assert asked == [[("p.clicks", 0)], [("p.clicks", 0)]]


def test_a_failing_batch_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust restarts a crashed agent past its batch; recstream stops the worker instead."""
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    app = build_app(settings, FakeRecsScorer(["a"]), FakeSentimentScorer())
    failure = ConnectionError("broker gone")

    async def process(kind: str, taken: object) -> None:
        raise failure

    monkeypatch.setattr(app.recstream, "process", process)  # type: ignore[attr-defined]
    app.flow_control.resume()
    topic = settings.topic("clicks")
    records = [RawRecord("clicks", topic, 0, 0, b"{}")]
    fed = FedBatch(records, TP(topic, 0), app.consumer_generation_id)
    feeds_of(app)[topic].queue.put_nowait(fed)
    clicks_agent = next(t for t in app._app_tasks if t.__name__ == "recstream_clicks")

    async def run_agent() -> None:
        await clicks_agent()

    with pytest.raises(ConnectionError):
        asyncio.run(run_agent())
    assert app.crash_reason is failure


async def test_at_least_once_commits_flush_the_held_changelog_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The offsets Faust commits must never run ahead of the state changes behind them."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    app = build_app(Settings(bootstrap_servers="127.0.0.1:1"), FakeRecsScorer(["a"]),
                    FakeSentimentScorer())  # fmt: skip
    store = app.recstream.store  # type: ignore[attr-defined]
    assert app.recstream_store is store  # type: ignore[attr-defined]
    calls: list[str] = []

    async def flush() -> None:
        calls.append(f"flush {store.held}")

    async def commit_offsets(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        calls.append(f"commit {dict(offsets)}")
        return True

    store.put("u1", b"state", 0)
    await store.publish(store.seal())
    monkeypatch.setattr(store, "flush", flush)
    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit_offsets", commit_offsets)
    tp = TP("clicks", 0)
    consumer: Any = app.consumer
    assert await consumer._commit_offsets({tp: 5}) is True
    assert calls == ["flush 1", f"commit { {tp: 5} }"]
    exactly_once = Settings(processing_guarantee="exactly_once", bootstrap_servers="127.0.0.1:1")
    eos_app = build_app(exactly_once, FakeRecsScorer(["a"]), FakeSentimentScorer())
    assert type(eos_app.transport).__name__ == "_GatedTransport"  # transactions instead
