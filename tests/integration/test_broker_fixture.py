"""The session broker fixture gives a broker that real Kafka clients can use."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from recstream.streams.broker import probe_metadata
from recstream.streams.settings import Settings


def test_fixture_broker_answers_metadata(kafka_bootstrap: str, broker_kind: str) -> None:
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    assert probe_metadata(host, int(port)) >= 1
    assert broker_kind in ("noida", "tansu", "external")


def test_unique_prefixes_differ(unique_prefix: str, make_prefix: object) -> None:
    assert unique_prefix.endswith(".")
    assert callable(make_prefix)
    assert make_prefix() != make_prefix() != unique_prefix


async def test_produce_and_consume_through_fixture(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("roundtrip")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b'{"x": 1}', key=b"u1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"u1", b'{"x": 1}', sent.offset)


def test_marked_integration(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None
