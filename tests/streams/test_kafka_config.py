"""Client options built from Settings: each security protocol, and secrets never shown."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from recstream.streams.broker import free_port
from recstream.streams.kafka_config import (
    MASK,
    KafkaConfigError,
    aiokafka_kwargs,
    describe,
    faust_broker_kwargs,
    faust_broker_url,
)
from recstream.streams.settings import Settings

PASSWORD = "s3cr3t-Pa55word-xyzzy"
KEY_PASSWORD = "k3y-Pa55word-plugh"


# ----------------------------------------------------------------------------
# A throw-away PKI: CA, server certificate for 127.0.0.1, client certificate
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD


def _common_name(cert: Any) -> str:
    """The common name in the subject of a certificate dict from the ssl module."""
    return str(next(value for rdn in cert["subject"] for key, value in rdn if key == "commonName"))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("recstream test CA", ca_key, "recstream test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _certificate("127.0.0.1", server_key, "recstream test CA", ca_key)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("recstream client", client_key, "recstream test CA", ca_key).sign(
        ca_key, hashes.SHA256()
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=_write_key(folder / "server.key", server_key, None),
        client_cert=folder / "client.pem",
        client_key=_write_key(folder / "client.key", client_key, KEY_PASSWORD),
    )


def _mtls_settings(pki: Pki, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": "127.0.0.1:9093",
        "security_protocol": "SSL",
        "ssl_cafile": pki.ca,
        "ssl_certfile": pki.client_cert,
        "ssl_keyfile": pki.client_key,
        "ssl_password": KEY_PASSWORD,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def mtls_server(pki: Pki) -> Iterator[tuple[int, list[str]]]:
    """A TLS server on 127.0.0.1 that requires a client certificate signed by the test CA.

    Yields its port and the list of client certificate subjects it accepted.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    accepted: list[str] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                accepted.append(_common_name(tls.getpeercert()))
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        thread.join(10)


# ----------------------------------------------------------------------------
# aiokafka
# ----------------------------------------------------------------------------


def _clients(kwargs: dict[str, Any]) -> list[Any]:
    """Every kind of aiokafka client, built (not started) from the kwargs."""
    return [AIOKafkaProducer(**kwargs), AIOKafkaConsumer(**kwargs), AIOKafkaAdminClient(**kwargs)]


async def _close(client: Any) -> None:
    await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def _client_options(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The connection options each kind of aiokafka client ends up with."""
    options = []
    for client in _clients(kwargs):
        inner = client.client if isinstance(client, AIOKafkaProducer) else client._client
        options.append(
            {
                "security_protocol": inner._security_protocol,
                "ssl_context": inner._ssl_context,
                "sasl_mechanism": inner._sasl_mechanism,
                "sasl_plain_username": inner._sasl_plain_username,
                "sasl_plain_password": inner._sasl_plain_password,
            }
        )
        await _close(client)
    return options


async def test_plaintext() -> None:
    settings = Settings(bootstrap_servers="k1:9092,k2:9092")
    kwargs = aiokafka_kwargs(settings)
    assert dict(kwargs) == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
    }
    for options in await _client_options(kwargs):
        assert options["security_protocol"] == "PLAINTEXT"
        assert options["ssl_context"] is None
        assert options["sasl_plain_password"] is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_plaintext(mechanism: str) -> None:
    settings = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username="shop",
        sasl_password=PASSWORD,
    )
    for options in await _client_options(aiokafka_kwargs(settings)):
        assert options == {
            "security_protocol": "SASL_PLAINTEXT",
            "ssl_context": None,
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "shop",
            "sasl_plain_password": PASSWORD,
        }


async def test_ssl_with_client_certificate(pki: Pki) -> None:
    kwargs = aiokafka_kwargs(_mtls_settings(pki))
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [_common_name(cert) for cert in context.get_ca_certs()] == ["recstream test CA"]
    for options in await _client_options(kwargs):
        assert options["security_protocol"] == "SSL"
        assert options["ssl_context"] is context
        assert options["sasl_plain_password"] is None


async def test_sasl_ssl(pki: Pki) -> None:
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="shop",
        sasl_password=PASSWORD,
        ssl_cafile=pki.ca,
    )
    for options in await _client_options(aiokafka_kwargs(settings)):
        assert options["security_protocol"] == "SASL_SSL"
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert (options["sasl_mechanism"], options["sasl_plain_password"]) == (
            "SCRAM-SHA-512",
            PASSWORD,
        )


def test_ssl_context_completes_mutual_tls(pki: Pki, mtls_server: tuple[int, list[str]]) -> None:
    port, accepted = mtls_server
    context = aiokafka_kwargs(_mtls_settings(pki))["ssl_context"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    assert accepted == ["recstream client"]


def test_ssl_without_client_certificate_uses_only_the_ca(
    pki: Pki, mtls_server: tuple[int, list[str]]
) -> None:
    port, accepted = mtls_server
    settings = Settings(security_protocol="SSL", ssl_cafile=pki.ca)
    context = aiokafka_kwargs(settings)["ssl_context"]
    # The server requires a client certificate, so this handshake must fail.
    with (
        pytest.raises((ssl.SSLError, OSError)),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.recv(2)
    assert accepted == []


def test_encrypted_key_without_password_is_a_clear_error(pki: Pki) -> None:
    settings = _mtls_settings(pki, ssl_password=None)
    with pytest.raises(KafkaConfigError, match="RECSTREAM_SSL_PASSWORD"):
        aiokafka_kwargs(settings)


def test_wrong_key_password_is_a_clear_error(pki: Pki) -> None:
    with pytest.raises(KafkaConfigError, match="certificates or key"):
        aiokafka_kwargs(_mtls_settings(pki, ssl_password="wrong"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ssl_cafile": Path("/nonexistent/ca.pem")}, "RECSTREAM_SSL_CAFILE"),
        ({"ssl_certfile": None}, "RECSTREAM_SSL_CERTFILE"),
    ],
)
def test_bad_ssl_files_are_clear_errors(pki: Pki, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        aiokafka_kwargs(_mtls_settings(pki, **extra))


@pytest.mark.parametrize(
    "login", [{}, {"sasl_username": "shop"}, {"sasl_password": PASSWORD}, {"sasl_username": ""}]
)
def test_sasl_needs_username_and_password(login: dict[str, Any]) -> None:
    settings = Settings(security_protocol="SASL_PLAINTEXT", **login)
    with pytest.raises(KafkaConfigError, match="RECSTREAM_SASL_USERNAME"):
        aiokafka_kwargs(settings)
    with pytest.raises(KafkaConfigError, match="RECSTREAM_SASL_USERNAME"):
        faust_broker_kwargs(settings)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RECSTREAM_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("RECSTREAM_SASL_USERNAME", "env-user")
    monkeypatch.setenv("RECSTREAM_SASL_PASSWORD", PASSWORD)
    kwargs = aiokafka_kwargs(Settings())
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == (
        "SCRAM-SHA-256",
        "env-user",
    )
    assert kwargs["sasl_plain_password"] == PASSWORD


# ----------------------------------------------------------------------------
# Faust
# ----------------------------------------------------------------------------


def test_faust_broker_url() -> None:
    assert faust_broker_url(Settings(bootstrap_servers="k1:9092, k2:9093")) == (
        "kafka://k1:9092;k2:9093"
    )
    with pytest.raises(KafkaConfigError, match="empty"):
        faust_broker_url(Settings(bootstrap_servers=" , "))


def _faust_app_auth(kwargs: dict[str, Any]) -> tuple[faust.App, dict[str, Any]]:
    app = faust.App("recstream-config-test", **kwargs)
    return app, dict(credentials_to_aiokafka_auth(app.conf.broker_credentials))


def test_faust_plaintext() -> None:
    kwargs = faust_broker_kwargs(Settings(bootstrap_servers="k1:9092,k2:9092"))
    assert kwargs["broker_credentials"] is None
    app, auth = _faust_app_auth(kwargs)
    assert [str(url) for url in app.conf.broker] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert auth == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_faust_sasl(mechanism: str) -> None:
    settings = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username="shop",
        sasl_password=PASSWORD,
    )
    _, auth = _faust_app_auth(faust_broker_kwargs(settings))
    assert auth == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "shop",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }


def test_faust_ssl_and_sasl_ssl(pki: Pki) -> None:
    _, auth = _faust_app_auth(faust_broker_kwargs(_mtls_settings(pki)))
    assert auth["security_protocol"] == "SSL"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)

    settings = _mtls_settings(
        pki, security_protocol="SASL_SSL", sasl_username="shop", sasl_password=PASSWORD
    )
    _, auth = _faust_app_auth(faust_broker_kwargs(settings))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "PLAIN" and auth["sasl_plain_password"] == PASSWORD
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


# ----------------------------------------------------------------------------
# Secrets never shown
# ----------------------------------------------------------------------------


def test_secrets_are_masked_in_every_repr(pki: Pki) -> None:
    settings = _mtls_settings(
        pki, security_protocol="SASL_SSL", sasl_username="shop", sasl_password=PASSWORD
    )
    aio = aiokafka_kwargs(settings)
    fst = faust_broker_kwargs(settings)
    shown = [repr(settings), str(settings), repr(aio), str(aio), f"{aio}", repr(fst), str(fst)]
    shown += [repr(fst["broker_credentials"]), describe(settings)]
    for text in shown:
        assert PASSWORD not in text and KEY_PASSWORD not in text, text
    assert f"'sasl_plain_password': '{MASK}'" in repr(aio)
    assert "user=shop" in describe(settings) and "protocol=SASL_SSL" in describe(settings)


async def test_password_never_logged_by_failing_clients(caplog: pytest.LogCaptureFixture) -> None:
    """Clients that cannot connect log plenty at DEBUG; none of it shows the password."""
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        security_protocol="SASL_PLAINTEXT",
        sasl_username="shop",
        sasl_password=PASSWORD,
    )
    caplog.set_level(logging.DEBUG)
    logging.getLogger(__name__).info("client config: %s", aiokafka_kwargs(settings))
    for client in _clients(aiokafka_kwargs(settings)):
        with pytest.raises(KafkaError):
            await asyncio.wait_for(client.start(), 30)
        await _close(client)
    assert "client config" in caplog.text and caplog.records
    assert PASSWORD not in caplog.text
