"""Fixtures for tests that need a Kafka broker; every test in this folder is ``integration``.

By default one embedded broker (``RECSTREAM_TEST_BROKER``: ``noida`` or ``tansu``,
default ``noida``) runs on a free 127.0.0.1 port for the whole session.  Set
``RECSTREAM_BOOTSTRAP_SERVERS`` to run the tests against an existing Kafka instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from recstream.streams.broker import (
    BROKER_TRAITS,
    KINDS,
    BrokerKind,
    BrokerTraits,
    EmbeddedBroker,
    wait_until_ready,
)
from recstream.streams.settings import Settings

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder as ``integration``."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _external_servers() -> str | None:
    return os.environ.get("RECSTREAM_BOOTSTRAP_SERVERS") or None


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """``"external"`` when RECSTREAM_BOOTSTRAP_SERVERS is set, else the embedded kind."""
    if _external_servers():
        return "external"
    kind = os.environ.get("RECSTREAM_TEST_BROKER", "noida")
    if kind not in KINDS:
        raise pytest.UsageError(f"RECSTREAM_TEST_BROKER={kind!r}; expected one of {KINDS}")
    return kind


@pytest.fixture(scope="session")
def broker_traits(broker_kind: str) -> BrokerTraits | None:
    """What the session's broker supports (``None`` for an external Kafka: assume all)."""
    return BROKER_TRAITS.get(broker_kind)


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str) -> Iterator[str]:
    """Bootstrap servers of a ready broker, shared by the whole test session."""
    external = _external_servers()
    if external is not None:
        wait_until_ready(external, timeout=30.0)
        yield external
        return
    broker = EmbeddedBroker(kind=cast(BrokerKind, broker_kind))
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


def new_prefix() -> str:
    """A topic prefix no other test uses, e.g. ``t1a2b3c4d.``."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def unique_prefix() -> str:
    """A fresh topic prefix for this test, so tests sharing a broker never collide."""
    return new_prefix()


@pytest.fixture
def make_prefix() -> Callable[[], str]:
    """A factory of fresh topic prefixes, for tests that need several."""
    return new_prefix


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique_prefix: str) -> Settings:
    """Settings pointing at the test broker, with this test's own topic prefix and app id.

    Two partitions keep tests quick; tests needing other values build their own with
    ``kafka_settings.model_copy(update={...})``.
    """
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=unique_prefix,
        app_id=f"recstream-{unique_prefix.rstrip('.')}",
        partitions=2,
        security_protocol="PLAINTEXT",
    )
