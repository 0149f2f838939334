"""Kafka client options from :class:`Settings`: the one place every client gets them.

* :func:`aiokafka_kwargs` for aiokafka producers, consumers and admin clients (replay,
  topic admin, tests).
* :func:`faust_broker_kwargs` for ``faust.App(...)`` (the worker).

Secrets stay :class:`pydantic.SecretStr` until a client needs them: the SASL password
is unwrapped into the returned kwargs, and the TLS key password is handed to OpenSSL
as a callback.  The returned mappings print with secrets masked, so logging them is safe,
and aiokafka's DEBUG log of the SASL exchange (which shows the PLAIN password) is redacted.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiokafka.helpers import create_ssl_context

from recstream.streams.settings import Settings

#: Keys whose values are never shown by :class:`ClientKwargs`'s repr.
SECRET_KEYS: Final = frozenset({"sasl_plain_password", "password", "ssl_password"})
MASK: Final = "**********"


class KafkaConfigError(ValueError):
    """The security settings do not describe a usable client configuration."""


class ClientKwargs(dict[str, Any]):
    """Client keyword arguments whose ``repr``/``str`` masks secrets (safe to log)."""

    def __repr__(self) -> str:
        shown = {k: (MASK if k in SECRET_KEYS and v is not None else v) for k, v in self.items()}
        return f"{type(self).__name__}({shown!r})"


class _RedactSaslExchange(logging.Filter):
    """Hides SaslAuthenticate requests/responses in aiokafka's per-request DEBUG log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(map(_is_sasl_message, record.args)):
            record.args = tuple(
                f"{type(arg).__name__}(<redacted>)" if _is_sasl_message(arg) else arg
                for arg in record.args
            )
        return True


def _is_sasl_message(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


_SASL_REDACTOR: Final = _RedactSaslExchange()


def guard_client_logs() -> None:
    """Make aiokafka's connection log safe to show (idempotent; done by every builder here)."""
    logger = logging.getLogger("aiokafka.conn")
    if _SASL_REDACTOR not in logger.filters:
        logger.addFilter(_SASL_REDACTOR)


def uses_ssl(settings: Settings) -> bool:
    """Whether the clients talk TLS to the brokers."""
    return settings.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    """Whether the clients authenticate with SASL."""
    return settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _key_password(settings: Settings) -> Callable[[], str]:
    """An OpenSSL password callback; never lets OpenSSL prompt on the terminal."""
    secret = settings.ssl_password

    def password() -> str:
        if secret is None:
            raise KafkaConfigError(
                f"{settings.ssl_keyfile or settings.ssl_certfile} holds an encrypted private "
                "key; set RECSTREAM_SSL_PASSWORD"
            )
        return secret.get_secret_value()

    return password


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: verifies the brokers (``ssl_cafile`` or the system CAs) and
    presents a client certificate when ``ssl_certfile`` is set (mutual TLS)."""
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise KafkaConfigError("RECSTREAM_SSL_KEYFILE needs RECSTREAM_SSL_CERTFILE as well")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise KafkaConfigError(f"RECSTREAM_{name.upper()}={path} is not a file")
    try:
        return create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
            password=_key_password(settings),
        )
    except ssl.SSLError as exc:
        raise KafkaConfigError(f"cannot load the TLS certificates or key: {exc}") from exc


def _sasl_login(settings: Settings) -> tuple[str, str]:
    if not settings.sasl_username or settings.sasl_password is None:
        raise KafkaConfigError(
            f"security protocol {settings.security_protocol} needs RECSTREAM_SASL_USERNAME "
            "and RECSTREAM_SASL_PASSWORD"
        )
    return settings.sasl_username, settings.sasl_password.get_secret_value()


def aiokafka_kwargs(settings: Settings) -> ClientKwargs:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    guard_client_logs()
    kwargs = ClientKwargs(
        bootstrap_servers=settings.bootstrap_servers,
        security_protocol=settings.security_protocol,
    )
    if uses_sasl(settings):
        username, password = _sasl_login(settings)
        kwargs.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    if uses_ssl(settings):
        kwargs["ssl_context"] = ssl_context(settings)
    return kwargs


def faust_broker_url(settings: Settings) -> str:
    """Faust's broker URL: ``kafka://host1:port1;host2:port2``."""
    hosts = [part.strip() for part in settings.bootstrap_servers.split(",") if part.strip()]
    if not hosts:
        raise KafkaConfigError("RECSTREAM_BOOTSTRAP_SERVERS is empty")
    return "kafka://" + ";".join(hosts)


def faust_broker_kwargs(settings: Settings) -> ClientKwargs:
    """``broker`` and ``broker_credentials`` keyword arguments for ``faust.App``."""
    import faust  # the worker imports Faust anyway; keep this module cheap for other clients

    guard_client_logs()
    credentials: faust.SASLCredentials | faust.SSLCredentials | None = None
    if uses_sasl(settings):
        username, password = _sasl_login(settings)
        credentials = faust.SASLCredentials(
            username=username,
            password=password,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context(settings) if uses_ssl(settings) else None,
        )
    elif uses_ssl(settings):
        credentials = faust.SSLCredentials(ssl_context(settings))
    return ClientKwargs(broker=faust_broker_url(settings), broker_credentials=credentials)


def describe(settings: Settings) -> str:
    """A one-line, secret-free summary of how clients connect (for startup logs)."""
    parts = [f"bootstrap={settings.bootstrap_servers}", f"protocol={settings.security_protocol}"]
    if uses_sasl(settings):
        parts.append(f"sasl={settings.sasl_mechanism} user={settings.sasl_username}")
    if uses_ssl(settings):
        parts.append(f"ca={settings.ssl_cafile or 'system'}")
        if settings.ssl_certfile is not None:
            parts.append(f"client_cert={settings.ssl_certfile}")
    return " ".join(parts)
