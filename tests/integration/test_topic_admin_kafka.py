"""`create_topics` and `partition_counts` against a real broker."""

from __future__ import annotations

import argparse

import pytest

from recstream.streams import topic_admin
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, create_topics, partition_counts


async def test_create_topics_creates_all_with_settings_partitions(kafka_settings: Settings) -> None:
    settings = kafka_settings.model_copy(update={"partitions": 3})
    before = await partition_counts(settings)
    assert set(before.values()) == {None}

    created = await create_topics(settings)

    assert sorted(created) == sorted(settings.topic(name) for name in ALL_TOPICS)
    assert await partition_counts(settings) == {settings.topic(n): 3 for n in ALL_TOPICS}


async def test_create_topics_is_idempotent(kafka_settings: Settings) -> None:
    first = await create_topics(kafka_settings, ["clicks", "searches"])
    assert first == [kafka_settings.topic("clicks"), kafka_settings.topic("searches")]

    again = await create_topics(kafka_settings, ["clicks", "searches", "reviews"])

    assert again == [kafka_settings.topic("reviews")]
    assert await create_topics(kafka_settings, ["clicks", "searches", "reviews"]) == []
    counts = await partition_counts(kafka_settings, ["clicks", "searches", "reviews", "sessions"])
    assert counts == {
        kafka_settings.topic("clicks"): 2,
        kafka_settings.topic("searches"): 2,
        kafka_settings.topic("reviews"): 2,
        kafka_settings.topic("sessions"): None,
    }


async def test_existing_topic_keeps_its_partitions(kafka_settings: Settings) -> None:
    await create_topics(kafka_settings, ["deadletter"])
    more = kafka_settings.model_copy(update={"partitions": 5})
    assert await create_topics(more, ["deadletter"]) == []
    assert await partition_counts(more, ["deadletter"]) == {kafka_settings.topic("deadletter"): 2}


def test_cli_create_then_list(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(topic_admin, "get_settings", lambda: kafka_settings)
    parser = argparse.ArgumentParser()
    topic_admin.add_arguments(parser)

    assert topic_admin.run(parser.parse_args(["create", "--topics", "clicks,privacy"])) == 0
    assert topic_admin.run(parser.parse_args(["create", "--topics", "clicks"])) == 0
    assert topic_admin.run(parser.parse_args(["list", "--topics", "clicks,privacy,sessions"])) == 0

    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    prefix = kafka_settings.topic_prefix
    assert lines == [
        [f"{prefix}clicks", "created"],
        [f"{prefix}privacy", "created"],
        [f"{prefix}clicks", "exists"],
        [f"{prefix}clicks", "2", "partitions"],
        [f"{prefix}privacy", "2", "partitions"],
        [f"{prefix}sessions", "missing"],
    ]
