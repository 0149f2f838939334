"""Create and list recstream's Kafka topics (inputs and outputs) before workers start.

Faust creates only its own internal topics (changelogs, repartitions); the input and
output topics below must exist first, with ``RECSTREAM_PARTITIONS`` partitions,
because a worker or producer that touches a missing topic may get it auto-created by
the broker with the broker's default partition count.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from recstream.streams.kafka_config import aiokafka_kwargs
from recstream.streams.settings import Settings, get_settings

INPUT_TOPICS: Final = ("clicks", "searches", "reviews", "privacy")
OUTPUT_TOPICS: Final = ("recommendations", "sentiment", "sessions", "deadletter")
ALL_TOPICS: Final = INPUT_TOPICS + OUTPUT_TOPICS

_TOPIC_ALREADY_EXISTS: Final = 36
_LEGAL_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")

log = logging.getLogger(__name__)


class TopicAdminError(RuntimeError):
    """The broker refused to create a topic."""


def full_names(settings: Settings, names: Sequence[str]) -> list[str]:
    """The prefixed topic names, checked against Kafka's naming rule."""
    out = []
    for name in names:
        full = settings.topic(name)
        if not _LEGAL_NAME.fullmatch(full) or full in (".", ".."):
            raise ValueError(
                f"topic name {full!r} is not legal in Kafka (1-249 of A-Z a-z 0-9 . _ -); "
                "check RECSTREAM_TOPIC_PREFIX"
            )
        out.append(full)
    return out


async def create_topics(settings: Settings, names: Sequence[str] = ALL_TOPICS) -> list[str]:
    """Create the missing ones of ``names`` (unprefixed); returns the full names created.

    Topics that already exist are left as they are (their partition count is not
    changed); creating the same topic concurrently elsewhere is not an error either.
    """
    wanted = full_names(settings, names)
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(wanted) if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(name, settings.partitions, settings.replication_factor) for name in missing]
        )
    finally:
        await admin.close()
    created, failures = [], []
    for result in response.to_object()["topic_errors"]:
        code = result["error_code"]
        if code == 0:
            created.append(result["topic"])
        elif code != _TOPIC_ALREADY_EXISTS:
            message = result.get("error_message") or for_code(code).__name__
            failures.append(f"{result['topic']}: {message}")
    if failures:
        raise TopicAdminError("could not create topics: " + "; ".join(failures))
    for name in created:
        log.info(
            "created topic %s (%d partitions, replication factor %d)",
            name,
            settings.partitions,
            settings.replication_factor,
        )
    return created


async def partition_counts(
    settings: Settings, names: Sequence[str] = ALL_TOPICS
) -> dict[str, int | None]:
    """Partition count of each (prefixed) topic, ``None`` where it does not exist.

    Only existing topics are described: a Metadata request for a missing topic can make
    the broker auto-create it.
    """
    wanted = full_names(settings, names)
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [name for name in wanted if name in existing]
        described = await admin.describe_topics(present) if present else []
    finally:
        await admin.close()
    counts: dict[str, int | None] = dict.fromkeys(wanted)
    for topic in described:
        counts[topic["topic"]] = len(topic["partitions"])
    return counts


# ----------------------------------------------------------------------------
# `recstream topics create|list`
# ----------------------------------------------------------------------------


def _topic_names(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [name for name in names if name not in ALL_TOPICS]
    if unknown or not names:
        shown = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown topic(s) {shown}; choose from {', '.join(ALL_TOPICS)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream topics``."""
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create the missing recstream topics")
    listing = sub.add_parser("list", help="show recstream's topics and their partition counts")
    for each in (create, listing):
        each.add_argument(
            "--topics",
            type=_topic_names,
            default=ALL_TOPICS,
            help="comma-separated subset (default: all)",
        )
        each.add_argument(
            "--bootstrap-servers", help="override RECSTREAM_BOOTSTRAP_SERVERS for this command"
        )


def run(args: argparse.Namespace) -> int:
    """Create or list the topics named by the settings (``RECSTREAM_TOPIC_PREFIX`` etc.)."""
    settings = get_settings()
    if args.bootstrap_servers:
        settings = settings.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    try:
        if args.action == "create":
            created = asyncio.run(create_topics(settings, args.topics))
            wanted = full_names(settings, args.topics)
            for name in wanted:
                print(f"{name:<40} {'created' if name in created else 'exists'}")
        else:
            counts = asyncio.run(partition_counts(settings, args.topics))
            for name, count in counts.items():
                print(f"{name:<40} {'missing' if count is None else f'{count} partitions'}")
    except (ValueError, TopicAdminError, KafkaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
