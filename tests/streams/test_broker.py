"""The embedded brokers: start, serve real Kafka clients, stop, fail clearly.

Each test starts its own broker (both kinds), so these are ``integration`` tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from recstream.streams.broker import (
    BROKER_CAVEATS,
    BROKER_TRAITS,
    KINDS,
    BrokerError,
    BrokerKind,
    BrokerNotReady,
    EmbeddedBroker,
    find_binary,
    probe_metadata,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

ALL_KINDS: tuple[BrokerKind, ...] = get_args(BrokerKind)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(params=ALL_KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(kind=request.param) as running:
        yield running


async def _produce(servers: str, topic: str, values: list[bytes], **kwargs: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, **kwargs)
    try:
        await producer.start()
        for value in values:
            await producer.send_and_wait(topic, value, key=b"user-1")
    finally:
        await producer.stop()


async def _consume(servers: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < count:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
            assert record.value is not None
            values.append(record.value)
        return values
    finally:
        await consumer.stop()


def test_kinds_and_caveats_cover_each_other() -> None:
    assert set(KINDS) == set(BROKER_TRAITS) == set(BROKER_CAVEATS)
    assert "ListOffsets" in BROKER_CAVEATS["tansu"]
    assert "long-polled" in BROKER_CAVEATS["noida"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_binary_is_found_and_executable(kind: BrokerKind) -> None:
    binary = find_binary(kind)
    assert binary.is_file() and os.access(binary, os.X_OK)


async def test_produce_and_consume(broker: EmbeddedBroker) -> None:
    servers = broker.bootstrap_servers
    assert servers == f"127.0.0.1:{broker.port}" and broker.port > 0
    await _produce(servers, "roundtrip", [b'{"n": 1}', "点击 ✓".encode()])
    assert await _consume(servers, "roundtrip", 2) == [b'{"n": 1}', "点击 ✓".encode()]


def test_listens_on_loopback_only(broker: EmbeddedBroker) -> None:
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    port_hex = f"{broker.port:04X}"
    local = {line.split()[1] for line in listening if line.split()[3] == "0A"}  # 0A = LISTEN
    ours = {addr for addr in local if addr.endswith(f":{port_hex}")}
    assert ours == {f"0100007F:{port_hex}"}  # 127.0.0.1 in /proc's little-endian hex


def test_stop_ends_the_process_and_frees_the_port(broker: EmbeddedBroker) -> None:
    pid, port = broker.pid, broker.port
    assert pid is not None and broker.running
    broker.stop()
    assert not broker.running and broker.pid is None
    assert not _alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    broker.stop()  # a second stop is harmless


def test_temporary_data_dir_is_removed_but_a_given_one_kept(tmp_path: Path) -> None:
    with EmbeddedBroker("noida") as temporary:
        assert temporary.log_path is not None
        temp_dir = temporary.log_path.parent
        assert temp_dir.is_dir()
    assert not temp_dir.exists()

    with EmbeddedBroker("noida", data_dir=tmp_path / "kept") as kept:
        assert kept.log_path == tmp_path / "kept" / "broker.log"
    assert (tmp_path / "kept" / "broker.log").read_text().strip()


def test_two_brokers_get_different_free_ports() -> None:
    with EmbeddedBroker("noida") as one, EmbeddedBroker("tansu") as two:
        assert one.port != two.port
        assert probe_metadata("127.0.0.1", one.port) == 1
        assert probe_metadata("127.0.0.1", two.port) == 1


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_taken_port_gives_a_clear_error_with_the_log(kind: BrokerKind) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(kind, port=port)
        with pytest.raises(BrokerError, match=r"(?s)exited with code .*in use"):
            broker.start(timeout=20)
        assert not broker.running


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(BrokerError, match="data dir"):
        EmbeddedBroker("noida", data_dir=not_a_dir / "sub").start()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        EmbeddedBroker("kafka")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        EmbeddedBroker(port=70000)
    with pytest.raises(BrokerError, match="start"):
        _ = EmbeddedBroker().bootstrap_servers


def test_wait_until_ready_times_out_without_a_broker() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = reserved.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerNotReady, match=f"127.0.0.1:{port}"):
            wait_until_ready(f"127.0.0.1:{port}", timeout=1.0)
        assert time.monotonic() - started < 10


def test_wait_until_ready_rejects_a_server_that_is_not_kafka() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # The connection is accepted by the backlog but never answered.
        with pytest.raises(BrokerNotReady):
            wait_until_ready(f"127.0.0.1:{port}", timeout=1.0)


def test_wait_until_ready_tries_every_bootstrap_server(broker: EmbeddedBroker) -> None:
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        wait_until_ready(f"127.0.0.1:{dead_port}, {broker.bootstrap_servers}", timeout=10)
    with pytest.raises(ValueError, match="host:port"):
        wait_until_ready("localhost", timeout=1)


# ----------------------------------------------------------------------------
# The child never outlives us
# ----------------------------------------------------------------------------

_CHILD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from recstream.streams.broker import EmbeddedBroker
    broker = EmbeddedBroker(sys.argv[1])
    broker.start()
    print(broker.pid, broker.log_path.parent, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
    """
)


def _run_child(kind: str, mode: str) -> tuple[subprocess.Popen[str], int, Path]:
    """A Python process that starts a broker; returns it, the broker's pid and data dir."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT, kind, mode], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert len(line) == 2 and line[0].isdigit(), f"child printed {line!r}"
    return child, int(line[0]), Path(line[1])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_broker_stopped_at_interpreter_exit(kind: str) -> None:
    child, broker_pid, data_dir = _run_child(kind, "exit")
    assert child.wait(timeout=30) == 0
    assert _wait_gone(broker_pid), "broker outlived a normal interpreter exit"
    assert not data_dir.exists(), "temporary data dir left behind"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_broker_killed_with_its_parent(kind: str) -> None:
    child, broker_pid, data_dir = _run_child(kind, "hang")
    try:
        assert _alive(broker_pid)
        child.send_signal(signal.SIGKILL)  # no atexit, no finalizer: only PDEATHSIG helps
        child.wait(timeout=10)
        assert _wait_gone(broker_pid), "broker outlived its SIGKILLed parent"
    finally:
        if _alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
        shutil.rmtree(data_dir)  # nobody was left to remove the temporary data dir


# ----------------------------------------------------------------------------
# The declared traits match what each broker really does
# ----------------------------------------------------------------------------


async def _idempotent_send_works(servers: str) -> bool:
    try:
        await asyncio.wait_for(_produce(servers, "idem", [b"x"], enable_idempotence=True), 20)
    except KafkaError:
        return False
    return True


async def _transaction_works(servers: str) -> bool:
    producer = AIOKafkaProducer(bootstrap_servers=servers, transactional_id="recstream-test")
    try:
        await asyncio.wait_for(producer.start(), 20)
        async with producer.transaction():
            await producer.send("txn", b"committed", key=b"k")
    except KafkaError:
        return False
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "txn",
        bootstrap_servers=servers,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    return record.value == b"committed"


async def _end_offset_after_one_batch(servers: str, size: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(size):
            assert batch.append(key=None, value=b"%d" % i, timestamp=None) is not None
        await (await producer.send_batch(batch, "batched", partition=0))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers)
    await consumer.start()
    try:
        tp = TopicPartition("batched", 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_traits_match_the_broker(broker: EmbeddedBroker) -> None:
    traits = broker.traits
    servers = broker.bootstrap_servers
    assert await _idempotent_send_works(servers) is traits.idempotent_producer
    assert await _transaction_works(servers) is traits.transactions
    assert (await _end_offset_after_one_batch(servers, 3) == 3) is traits.exact_end_offsets


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_durability_across_a_restart(kind: BrokerKind, tmp_path: Path) -> None:
    with EmbeddedBroker(kind, data_dir=tmp_path) as first:
        await _produce(first.bootstrap_servers, "kept", [b"before restart"])
    with EmbeddedBroker(kind, data_dir=tmp_path) as second:
        consumer = AIOKafkaConsumer(bootstrap_servers=second.bootstrap_servers)
        await consumer.start()
        try:
            topics = await consumer.topics()
        finally:
            await consumer.stop()
        assert ("kept" in topics) is BROKER_TRAITS[kind].durable
        if BROKER_TRAITS[kind].durable:
            assert await _consume(second.bootstrap_servers, "kept", 1) == [b"before restart"]


# ----------------------------------------------------------------------------
# `recstream broker`
# ----------------------------------------------------------------------------

_CLI_SCRIPT = textwrap.dedent(
    """
    import argparse, sys
    from recstream.streams import broker
    parser = argparse.ArgumentParser()
    broker.add_arguments(parser)
    sys.exit(broker.run(parser.parse_args(sys.argv[1:])))
    """
)


@pytest.mark.parametrize(
    ("kind", "stop_signal"), [("noida", signal.SIGTERM), ("tansu", signal.SIGINT)]
)
def test_cli_runs_until_signalled(kind: str, stop_signal: int, tmp_path: Path) -> None:
    command = [sys.executable, "-c", _CLI_SCRIPT, "--kind", kind, "--port", "0"]
    cli = subprocess.Popen(
        [*command, "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert cli.stdout is not None
    first = cli.stdout.readline()
    assert first.startswith(f"{kind} broker ready at 127.0.0.1:"), first
    servers = first.split()[4]
    wait_until_ready(servers, timeout=5)
    broker_pids = [
        int(p) for p in Path(f"/proc/{cli.pid}/task/{cli.pid}/children").read_text().split()
    ]
    assert len(broker_pids) == 1
    cli.send_signal(stop_signal)
    out, _ = cli.communicate(timeout=30)
    assert cli.returncode == 0
    assert out.rstrip().endswith("broker stopped")
    assert not _alive(broker_pids[0])
    assert (tmp_path / "broker.log").read_text().strip()


def test_cli_reports_a_broker_that_cannot_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = subprocess.run(
            [sys.executable, "-c", _CLI_SCRIPT, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert cli.returncode == 1
    assert cli.stderr.startswith("error: noida broker exited") and "in use" in cli.stderr
