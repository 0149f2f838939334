"""Faust declarations of recstream's topics: raw bytes in, decoded in bulk by the pipeline.

Input topics and the internal repartition topic carry raw bytes (``raw``
serializers, no per-record model), so a whole micro-batch is decoded and validated
at once by :mod:`recstream.streams.pipeline`.  Outputs are produced by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from recstream.streams.settings import Settings


@dataclass(frozen=True)
class Topics:
    """The Faust topics the agents read and the names of the topics they write."""

    inputs: dict[str, faust.TopicT]
    repartition: faust.TopicT
    recommendations: str
    sentiment: str
    sessions: str
    deadletter: str


def repartition_topic_name(settings: Settings) -> str:
    """The internal topic that moves events to the partition owning their user's state."""
    return f"{settings.app_id}-events-repartition"


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """Declare every topic on ``app``; input topics must already exist (``recstream topics``)."""
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    inputs = {
        kind: app.topic(settings.topic(kind), **raw)  # type: ignore[arg-type]
        for kind in ("clicks", "searches", "reviews", "privacy")
    }
    repartition = app.topic(
        repartition_topic_name(settings),
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        internal=True,
        **raw,  # type: ignore[arg-type]
    )
    return Topics(
        inputs=inputs,
        repartition=repartition,
        recommendations=settings.topic("recommendations"),
        sentiment=settings.topic("sentiment"),
        sessions=settings.topic("sessions"),
        deadletter=settings.topic("deadletter"),
    )
