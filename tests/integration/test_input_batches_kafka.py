"""`input_batches.fetch_state` on a live aiokafka consumer (its internals as read)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport.consumer import Consumer
from faust.types import TP

from recstream.streams.input_batches import fetch_state
from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import create_topics


async def test_the_fetch_state_of_a_live_consumer(kafka_settings: Settings) -> None:
    await create_topics(kafka_settings, ["clicks"])
    topic = kafka_settings.topic("clicks")
    producer = AIOKafkaProducer(**aiokafka_kwargs(kafka_settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=b"u", partition=0)
    finally:
        await producer.stop()
    faust_side = SimpleNamespace(  # what fetch_state reads of Faust's consumer
        _active_partitions={TP(topic, 0)},
        _paused_partitions=set(),
        _buffered_partitions=set(),
        _read_offset={},
        flow_active=True,
    )
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(group_id=None, **aiokafka_kwargs(kafka_settings))
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        await asyncio.wait_for(consumer.getmany(tp, timeout_ms=10_000), 30)
        consumer.pause(tp)
        told = fetch_state(cast(Consumer, faust_side), consumer, TP(topic, 0))
        other = fetch_state(cast(Consumer, faust_side), consumer, TP(topic, 1))
    finally:
        await consumer.stop()
    assert "Faust: active=True paused=False buffered=False read_offset=None" in told
    assert "Status=PartitionStatus.CONSUMING position=1" in told and "paused=True" in told
    assert "fetch_routine_done=False" in told
    assert other.endswith("aiokafka: not assigned")
