"""Clients built by `kafka_config` against a real broker."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import create_topics

PASSWORD = "s3cr3t-Pa55word-xyzzy"


async def test_plaintext_clients_round_trip(kafka_settings: Settings) -> None:
    await create_topics(kafka_settings, ["clicks"])
    topic = kafka_settings.topic("clicks")
    producer = AIOKafkaProducer(**aiokafka_kwargs(kafka_settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"a": 1}', key=b"u")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest", **aiokafka_kwargs(kafka_settings)
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"u", b'{"a": 1}')


async def test_sasl_password_not_in_debug_logs(
    kafka_settings: Settings, broker_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    if broker_kind != "noida":
        pytest.skip("needs a broker with SASL/PLAIN on its listener (noida accepts any login)")
    settings = kafka_settings.model_copy(
        update={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "shop",
            "sasl_password": Settings(sasl_password=PASSWORD).sasl_password,
        }
    )
    caplog.set_level(logging.DEBUG)
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("sasl"), b"authenticated")
    finally:
        await producer.stop()
    assert "SaslAuthenticateRequest" in caplog.text  # the exchange was logged ...
    assert PASSWORD not in caplog.text  # ... without the password
