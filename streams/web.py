"""The worker's operational HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

They are Faust web views served by the worker's own web server (``RECSTREAM_WEB_HOST``,
``RECSTREAM_WEB_PORT``).  Faust starts that server before the consumer, on the
worker's event loop, so:

* ``/healthz`` answering at all proves the event loop runs (liveness);
* ``/readyz`` answers 503 with a reason until the partitions assigned to this worker
  have recovered their table state and the models are loaded, then 200 (readiness);
* ``/metrics`` serves the :class:`~recstream.streams.metrics.Metrics` registry.

``python -m recstream.streams.web [PATH]`` asks this container's own worker for PATH
(default ``/healthz``) and exits 0 on HTTP 200: the images' ``HEALTHCHECK``.

Wiring (done once by the worker, before it starts)::

    metrics = Metrics()
    readiness = Readiness(app)
    instrument(app, metrics, settings)   # Kafka traffic and lag
    register_web(app, metrics, readiness)
    ...
    readiness.models_loaded()            # after load_scorers() succeeded
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from recstream.streams.settings import Settings

if TYPE_CHECKING:  # only types: the HEALTHCHECK runs this module without loading Faust
    import faust
    from faust.tables.manager import TableManager
    from faust.web import Request, Response, View

    from recstream.streams.metrics import Metrics

#: A readiness probe: (ready, reason).  ``reason`` is ``"ok"`` when ready.
ReadinessCheck = Callable[[], tuple[bool, str]]


class Readiness:
    """Whether a worker can serve: its partitions recovered and its models loaded."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._models: str | None = "models not loaded yet"

    def models_loaded(self) -> None:
        """Declare the scorers loaded (called once ``load_scorers`` has returned)."""
        self._models = None

    def models_failed(self, why: str) -> None:
        """Declare the models unusable; ``/readyz`` reports ``why`` until they load."""
        self._models = f"models failed to load: {why}"

    def check(self) -> tuple[bool, str]:
        """(ready, reason): the first unmet condition, or ``(True, "ok")``."""
        app = self.app
        if app.rebalancing:
            return False, "rebalancing"
        if not cast("TableManager", app.tables).recovery.completed.is_set():
            return False, "waiting for partition assignment and table recovery"
        if app.in_recovery:
            return False, "recovering table state"
        if self._models is not None:
            return False, self._models
        return True, "ok"


def register_web(app: faust.App, metrics: Metrics, readiness: Readiness | ReadinessCheck) -> None:
    """Add ``/metrics``, ``/healthz`` and ``/readyz`` to ``app``'s web server."""
    check: ReadinessCheck = readiness.check if isinstance(readiness, Readiness) else readiness
    started = time.monotonic()

    async def metrics_view(view: View, request: Request) -> Response:
        """Prometheus text format of the worker's metrics."""
        body, content_type = metrics.render()
        return view.bytes(body, headers={"Content-Type": content_type})

    async def healthz_view(view: View, request: Request) -> Response:
        """Liveness: this answer ran on the worker's event loop."""
        return view.json({"status": "ok", "uptime_s": round(time.monotonic() - started, 3)})

    async def readyz_view(view: View, request: Request) -> Response:
        """Readiness: 200 once partitions recovered and models loaded, else 503 and why."""
        ready, reason = check()
        return view.json({"ready": ready, "reason": reason}, status=200 if ready else 503)

    app.page("/metrics", name="recstream_metrics")(metrics_view)
    app.page("/healthz", name="recstream_healthz")(healthz_view)
    app.page("/readyz", name="recstream_readyz")(readyz_view)


def probe(settings: Settings, path: str = "/healthz", timeout: float = 3.0) -> bool:
    """True when the worker on this host answers ``path`` with HTTP 200."""
    url = f"http://127.0.0.1:{settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(0 if probe(Settings(), sys.argv[1] if len(sys.argv) > 1 else "/healthz") else 1)
