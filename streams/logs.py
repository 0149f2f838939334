"""Worker logging: JSON lines (``RECSTREAM_LOG_JSON=1``) or plain text, secrets masked.

A JSON line holds ``ts``, ``level``, ``logger``, ``message``, the exception text when
there is one, and any of :data:`CONTEXT_FIELDS` passed through ``extra``::

    log.error("cannot score event", extra={"event_id": event_id, "topic": "clicks"})

Both formats replace the values of the secret settings (SASL and key passwords, the
user-id salt) by ``***`` wherever they would appear, exceptions included.  User ids
are personal data: do not pass them in ``extra``.

The Faust worker (``mode.Worker``) resets logging when it starts, so the worker passes
:func:`logging_config` as its ``logging_config`` argument; :func:`configure_logging`
applies the same configuration to any other process.
"""

from __future__ import annotations

import functools
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

import orjson

from recstream.streams.settings import Settings

#: ``extra`` keys copied into JSON log lines (and appended to plain ones).
CONTEXT_FIELDS: tuple[str, ...] = ("event_id", "topic", "partition", "offset", "reason", "model")

MASK = "***"


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The plain values of every secret setting that is set (never empty strings)."""
    secrets = (settings.sasl_password, settings.ssl_password, settings.user_id_salt)
    return tuple(s.get_secret_value() for s in secrets if s is not None and s.get_secret_value())


class _MaskingFormatter(logging.Formatter):
    """A formatter whose output never contains one of ``secrets``."""

    def __init__(self, secrets: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Longest first, so a secret containing another is masked whole.
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class PlainFormatter(_MaskingFormatter):
    """``time level logger: message [key=value ...]``."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if hasattr(record, key)
        )
        if context:
            head, sep, tail = text.partition("\n")
            text = f"{head} [{context}]{sep}{tail}"
        return self.mask(text)


class JsonFormatter(_MaskingFormatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        text = orjson.dumps(line, default=str).decode()
        # Masking after encoding also catches secrets inside the exception text; a secret
        # is replaced inside a JSON string, so the line stays valid JSON unless the secret
        # itself contains JSON escapes, which are then masked in their escaped form.
        return self.mask_json(text)

    def mask_json(self, text: str) -> str:
        """Mask secrets in both their raw and their JSON-escaped spelling."""
        for secret in self.secrets:
            escaped = orjson.dumps(secret).decode()[1:-1]
            text = text.replace(escaped, MASK)
        return text


def logging_config(settings: Settings) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` configuration for ``settings``."""
    secrets = secret_values(settings)
    formatter = JsonFormatter if settings.log_json else PlainFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"recstream": {"()": functools.partial(formatter, secrets)}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "recstream",
                # also on the handler: a library logger with its own lower level
                # (aiokafka, faust) must not print below the configured level
                "level": settings.log_level.upper(),
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["stderr"]},
    }


def configure_logging(settings: Settings) -> None:
    """Send every log record to stderr in the format ``settings`` asks for."""
    logging.config.dictConfig(logging_config(settings))
