"""SkippedRecords against a real broker: holes after the committed offset are read again."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings
from recstream.streams.skipped_records import SkippedRecords
from recstream.streams.topic_admin import create_topics


async def _produce(settings: Settings, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings))
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=0)
    finally:
        await producer.stop()


async def _commit(settings: Settings, topic: str, offset: int) -> None:
    consumer = AIOKafkaConsumer(
        **aiokafka_kwargs(settings), group_id=settings.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def test_a_hole_after_the_committed_offset_is_read_again(kafka_settings: Settings) -> None:
    await create_topics(kafka_settings, ["clicks"])
    topic = kafka_settings.topic("clicks")
    await _produce(kafka_settings, topic, 10)
    await _commit(kafka_settings, topic, 3)
    skipped = SkippedRecords(kafka_settings, kafka_settings.app_id)
    try:
        # The consumer handed over offsets 7 and 8 first: 3-6 were skipped.
        records, repeated = await skipped.recover("clicks", [(topic, 0, 7), (topic, 0, 8)])
        assert repeated == []
        assert [(r.offset, r.value, r.key) for r in records] == [
            (i, f"v{i}".encode(), f"k{i}".encode()) for i in range(3, 7)
        ]
        assert {(r.kind, r.topic, r.partition) for r in records} == {("clicks", topic, 0)}
        # Contiguous from there on: nothing to read; partition 1 has no committed offset.
        assert await skipped.recover("clicks", [(topic, 0, 9), (topic, 1, 0)]) == ([], [])
        # Offset 5, re-read above, delivered again: processed already.
        assert await skipped.recover("clicks", [(topic, 0, 5), (topic, 0, 10)]) == ([], [0])
    finally:
        await skipped.close()
