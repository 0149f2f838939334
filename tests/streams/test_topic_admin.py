"""Topic names and the `recstream topics` command line (no broker needed)."""

from __future__ import annotations

import argparse

import pytest

from recstream.streams import topic_admin
from recstream.streams.broker import free_port
from recstream.streams.settings import Settings
from recstream.streams.topic_admin import ALL_TOPICS, INPUT_TOPICS, OUTPUT_TOPICS, full_names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    topic_admin.add_arguments(parser)
    return parser


def test_topic_lists() -> None:
    assert INPUT_TOPICS == ("clicks", "searches", "reviews", "privacy")
    assert OUTPUT_TOPICS == ("recommendations", "sentiment", "sessions", "deadletter")
    assert ALL_TOPICS == INPUT_TOPICS + OUTPUT_TOPICS


def test_full_names_apply_the_prefix() -> None:
    settings = Settings(topic_prefix="shop1.")
    assert full_names(settings, ["clicks", "deadletter"]) == ["shop1.clicks", "shop1.deadletter"]


@pytest.mark.parametrize("prefix", ["shop 1.", "shop/1.", "ä.", "x" * 250])
def test_illegal_prefix_is_a_clear_error(prefix: str) -> None:
    with pytest.raises(ValueError, match="RECSTREAM_TOPIC_PREFIX"):
        full_names(Settings(topic_prefix=prefix), ["clicks"])


def test_cli_parses_a_topic_subset() -> None:
    args = _parser().parse_args(["create", "--topics", "clicks, reviews"])
    assert (args.action, args.topics) == ("create", ("clicks", "reviews"))
    assert _parser().parse_args(["list"]).topics == ALL_TOPICS


def test_cli_rejects_unknown_topics(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["create", "--topics", "clicks,orders"])
    assert "unknown topic(s) orders" in capsys.readouterr().err


def test_cli_reports_an_unreachable_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setattr(topic_admin, "get_settings", lambda: Settings())
    args = _parser().parse_args(["create", "--bootstrap-servers", f"127.0.0.1:{port}"])
    assert topic_admin.run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(port) in err
