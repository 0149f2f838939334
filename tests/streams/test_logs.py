"""Worker logging: JSON lines with context fields, plain text, secrets never shown."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator

import orjson
import pytest
from pydantic import SecretStr

from recstream.streams.logs import JsonFormatter, PlainFormatter, logging_config
from recstream.streams.settings import Settings

SECRET = 's3cr"et\\pw'  # quote and backslash: escaped differently inside JSON


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(settings: Settings) -> tuple[logging.Logger, io.StringIO]:
    """Apply ``logging_config(settings)`` with its handler writing to a buffer."""
    config = logging_config(settings)
    logging.config.dictConfig(config)
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    return logging.getLogger("recstream.test"), buffer


def test_json_lines_carry_context_and_exception(restore_logging: None) -> None:
    log, buffer = capture(Settings(log_json=True))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("cannot score", extra={"event_id": "e-17", "topic": "clicks"})
    log.info("plain %s", "args")
    first, second = (orjson.loads(line) for line in buffer.getvalue().splitlines())
    assert first["level"] == "error"
    assert first["logger"] == "recstream.test"
    assert first["message"] == "cannot score"
    assert first["event_id"] == "e-17"
    assert first["topic"] == "clicks"
    assert "ValueError: boom" in first["exc"]
    assert first["ts"].endswith("+00:00")
    assert second["message"] == "plain args"
    assert "event_id" not in second


def test_level_setting_filters(restore_logging: None) -> None:
    log, buffer = capture(Settings(log_json=True, log_level="warning"))
    log.info("hidden")
    log.warning("shown")
    assert [orjson.loads(line)["message"] for line in buffer.getvalue().splitlines()] == ["shown"]


def test_plain_format_appends_context(restore_logging: None) -> None:
    log, buffer = capture(Settings(log_json=False))
    log.warning("late event", extra={"event_id": "e-1", "reason": "late"})
    line = buffer.getvalue().strip()
    assert "WARNING recstream.test: late event [event_id=e-1 reason=late]" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)


@pytest.mark.parametrize("log_json", [True, False])
def test_secrets_are_masked_everywhere(restore_logging: None, log_json: bool) -> None:
    settings = Settings(
        log_json=log_json,
        sasl_password=SecretStr(SECRET),
        user_id_salt=SecretStr("pepper-123"),
    )
    log, buffer = capture(settings)
    log.error("connecting with password %s", SECRET)
    log.error("salt is pepper-123", extra={"event_id": "pepper-123"})
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("kafka error")
    output = buffer.getvalue()
    assert SECRET not in output
    assert orjson.dumps(SECRET).decode()[1:-1] not in output
    assert "pepper-123" not in output
    assert output.count("***") >= 4
    if log_json:
        for line in output.splitlines():
            orjson.loads(line)  # masking keeps every line valid JSON


def test_formatters_without_secrets_change_nothing() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello ***", None, None)
    assert PlainFormatter().format(record).endswith("INFO x: hello ***")
    assert orjson.loads(JsonFormatter().format(record))["message"] == "hello ***"
