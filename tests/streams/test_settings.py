"""The settings object reads RECSTREAM_* variables and refuses bad values."""

from __future__ import annotations

import pydantic
import pytest

from recstream.streams.settings import Settings


def test_defaults_bind_loopback_and_prefer_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECSTREAM_WEB_HOST", "RECSTREAM_PROVIDERS", "RECSTREAM_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.web_host == "127.0.0.1"
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("RECSTREAM_SESSION_GAP", "60")
    monkeypatch.setenv("RECSTREAM_TOPIC_PREFIX", "shop1.")
    monkeypatch.setenv("RECSTREAM_SASL_PASSWORD", "hunter2")
    settings = Settings()
    assert settings.providers == ("CPUExecutionProvider",)
    assert settings.session_gap == 60.0
    assert settings.topic("clicks") == "shop1.clicks"
    assert "hunter2" not in repr(settings)
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == "hunter2"


def test_connection_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        bootstrap_servers="127.0.0.1:19092",
        topic_prefix="shop1.",
        app_id="rs-test",
        partitions=3,
        web_port=6123,
    )
    for name, value in settings.connection_env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    fields = ("bootstrap_servers", "topic_prefix", "app_id", "partitions", "web_port")
    assert {f: getattr(child, f) for f in fields} == {f: getattr(settings, f) for f in fields}


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [("RECSTREAM_PARTITIONS", "0"), ("RECSTREAM_PROCESSING_GUARANTEE", "maybe")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()
