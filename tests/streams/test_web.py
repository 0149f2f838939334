"""/metrics, /healthz and /readyz on a Faust web server bound to 127.0.0.1 (no broker).

Only the app's web service is started; the worker-level tests with a real consumer
are in tests/integration/test_worker_endpoints.py.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import aiohttp
import faust
import pytest
from faust.tables.manager import TableManager
from prometheus_client.parser import text_string_to_metric_families

from recstream.streams.broker import free_port
from recstream.streams.metrics import Metrics
from recstream.streams.settings import Settings
from recstream.streams.web import Readiness, probe, register_web


@dataclass
class Toggle:
    """A readiness check the test flips."""

    ready: bool = False
    reason: str = "not yet"

    def __call__(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, self.reason)


@dataclass
class Served:
    url: str
    port: int
    metrics: Metrics
    toggle: Toggle


def web_app(port: int) -> faust.App:
    return faust.App(
        f"web-test-{port}",
        broker="kafka://127.0.0.1:1",  # never contacted: only the web service runs
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=port,
    )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    port = free_port()
    app = web_app(port)
    metrics, toggle = Metrics(), Toggle()
    register_web(app, metrics, toggle)
    await app.web.start()
    try:
        yield Served(f"http://127.0.0.1:{port}", port, metrics, toggle)
    finally:
        await app.web.stop()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_healthz_answers_200_json(served: Served) -> None:
    status, content_type, body = await get(f"{served.url}/healthz")
    assert status == 200
    assert content_type.startswith("application/json")
    assert '"status":"ok"' in body


async def test_readyz_is_503_with_reason_then_200(served: Served) -> None:
    served.toggle.reason = "recovering table state"
    status, _, body = await get(f"{served.url}/readyz")
    assert status == 503
    assert "recovering table state" in body
    served.toggle.ready = True
    status, _, body = await get(f"{served.url}/readyz")
    assert status == 200
    assert '"ready":true' in body


async def test_metrics_serves_the_registry_in_text_format(served: Served) -> None:
    served.metrics.events_in("clicks", 7)
    served.metrics.model_loaded("recs", "v9", "CPUExecutionProvider")
    status, content_type, body = await get(f"{served.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("recstream_events_in_total", (("topic", "clicks"),))] == 7
    info_labels = (("kind", "recs"), ("provider", "CPUExecutionProvider"), ("version", "v9"))
    assert samples[("recstream_model_info", info_labels)] == 1


async def test_server_listens_on_loopback_only(served: Served) -> None:
    # Connecting through another local address must fail when bound to 127.0.0.1.
    with socket.socket() as sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", served.port))
        assert sock.getpeername()[0] == "127.0.0.1"
    other = _non_loopback_address()
    if other is not None:
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((other, served.port))


def _non_loopback_address() -> str | None:
    """An IPv4 address of this host other than 127.x, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1; UDP connect sends nothing
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_probe_is_the_image_healthcheck(served: Served) -> None:
    settings = Settings(web_port=served.port)
    assert await asyncio.to_thread(probe, settings) is True
    served.toggle.ready = False
    assert await asyncio.to_thread(probe, settings, "/readyz") is False
    assert await asyncio.to_thread(probe, Settings(web_port=free_port())) is False


def test_healthcheck_command_exit_codes() -> None:
    """``python -m recstream.streams.web`` exits 1 when nothing answers (the HEALTHCHECK)."""
    port = free_port()
    env = {"RECSTREAM_WEB_PORT": str(port), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "recstream.streams.web", "/healthz"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr


def test_readiness_follows_recovery_rebalancing_and_models() -> None:
    app = faust.App("readiness-test", broker="kafka://127.0.0.1:1")
    readiness = Readiness(app)
    ready, reason = readiness.check()
    assert not ready
    assert "table recovery" in reason

    # What Faust's recovery service does once the assigned partitions are recovered.
    cast(TableManager, app.tables).recovery.completed.set()
    assert readiness.check() == (False, "models not loaded yet")

    readiness.models_loaded()
    assert readiness.check() == (True, "ok")

    app.rebalancing = True
    assert readiness.check() == (False, "rebalancing")
    app.rebalancing = False
    app.in_recovery = True
    assert readiness.check() == (False, "recovering table state")
    app.in_recovery = False

    readiness.models_failed("recs.onnx: bad checksum")
    assert readiness.check() == (False, "models failed to load: recs.onnx: bad checksum")


def test_healthcheck_module_does_not_load_faust() -> None:
    """The image HEALTHCHECK runs every 15 s: importing Faust would cost ~3x the CPU."""
    code = "import sys, recstream.streams.web; sys.exit('faust' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert done.returncode == 0
