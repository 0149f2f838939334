"""Validation of input events and serialisation of output events."""

from __future__ import annotations

import base64
import math

import orjson
import pytest

from recstream.streams import records
from recstream.streams.records import InvalidEvent, Reason

NOW = 1_750_000_000.0


def _click(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "action": "view",
        "ts": NOW - 10,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _reason(call: object) -> Reason:
    with pytest.raises(InvalidEvent) as info:
        assert callable(call)
        call()
    return info.value.reason


def test_valid_click_with_optional_fields() -> None:
    click = records.parse_click(_click(price=9.5, category="shoes", session_id="s1"), now=NOW)
    assert click == records.Click("e1", "u1", "i1", "view", NOW - 10, "s1", 9.5, "shoes")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-15T12:00:00Z", 1_749_988_800.0),
        ("2025-06-15T14:00:00+02:00", 1_749_988_800.0),
        (1_749_988_800, 1_749_988_800.0),
        (1_749_988_800_000, 1_749_988_800.0),
        (1_749_988_800.5, 1_749_988_800.5),
    ],
)
def test_timestamp_rule(value: object, expected: float) -> None:
    assert records.parse_ts(value, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    ["2025-06-15T12:00:00", "yesterday", 12.0, NOW + 10 * 86_400, True, None, [], math.inf],
)
def test_absurd_or_ambiguous_timestamps_are_rejected(value: object) -> None:
    assert _reason(lambda: records.parse_ts(value, now=NOW)) is Reason.BAD_TIMESTAMP


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"user_id": None}, Reason.MISSING_FIELD),
        ({"ts": None}, Reason.MISSING_FIELD),
        ({"item_id": ["x"]}, Reason.WRONG_TYPE),
        ({"user_id": ""}, Reason.BAD_VALUE),
        ({"user_id": "a\x00b"}, Reason.BAD_VALUE),
        ({"user_id": "u" * 1000}, Reason.BAD_VALUE),
        ({"action": "like"}, Reason.UNKNOWN_ACTION),
        ({"action": 3}, Reason.WRONG_TYPE),
        ({"price": -1}, Reason.BAD_VALUE),
        ({"price": "cheap"}, Reason.WRONG_TYPE),
    ],
)
def test_bad_clicks_name_their_reason(over: dict[str, object], reason: Reason) -> None:
    obj = _click(**over)
    if over.get("ts", 0) is None:
        obj.pop("ts", None)
    assert _reason(lambda: records.parse_click(obj, now=NOW)) is reason


def test_numeric_ids_are_read_as_strings() -> None:
    click = records.parse_click(_click(user_id=42, item_id=7), now=NOW)
    assert (click.user_id, click.item_id) == ("42", "7")


def test_search_and_review() -> None:
    search = records.parse_search(
        {"event_id": "s", "user_id": "u", "query": "红色 shoes", "ts": NOW, "results": ["a", 2]},
        now=NOW,
    )
    assert search.results == ("a", "2")
    review = records.parse_review(
        {"event_id": "r", "user_id": "u", "item_id": "i", "text": "很好", "ts": NOW, "rating": 5},
        now=NOW,
    )
    assert review.rating == 5
    bad = {"event_id": "r", "user_id": "u", "item_id": "i", "text": "x", "ts": NOW, "rating": 6}
    assert _reason(lambda: records.parse_review(bad, now=NOW)) is Reason.BAD_VALUE


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", Reason.BAD_JSON),
        (b"\xff\xfe{}", Reason.NOT_UTF8),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b'{"x": NaN}', Reason.BAD_JSON),
        (b"[" * 5000 + b"]" * 5000, Reason.BAD_JSON),
        (None, Reason.BAD_JSON),
        (b'{"x": "' + b"a" * 70_000 + b'"}', Reason.TOO_LARGE),
    ],
)
def test_loads_rejects_bad_payloads(raw: bytes | None, reason: Reason) -> None:
    assert _reason(lambda: records.loads(raw, 65_536)) is reason


def test_kind_of_canonical_lines() -> None:
    assert records.kind_of(_click()) == "clicks"
    assert records.kind_of({"query": "q"}) == "searches"
    assert records.kind_of({"text": "t"}) == "reviews"
    assert _reason(lambda: records.kind_of({"event_id": "x"})) is Reason.MISSING_FIELD


def test_event_round_trip_through_canonical_json() -> None:
    click = records.parse_click(_click(category="shoes"), now=NOW)
    obj = orjson.loads(orjson.dumps(records.event_to_dict(click)))
    assert records.parse_click(obj, now=NOW) == click
    assert records.topic_of(click) == "clicks"


def test_output_records_serialise() -> None:
    rec = records.Recommendation(
        user_id="u",
        session_id="u:1",
        trigger_event_id="e1",
        items=(records.ScoredItem("a", 0.9), records.ScoredItem("b", 0.1)),
        model_version="v1",
        event_ts=NOW,
        emitted_at=NOW + 0.01,
    )
    obj = orjson.loads(records.to_json(rec))
    assert obj["items"] == [{"item_id": "a", "score": 0.9}, {"item_id": "b", "score": 0.1}]
    assert obj["fallback"] is False
    dead = records.DeadLetter.of("clicks", 3, 17, "bad_json: x", b"\xff")
    assert base64.b64decode(orjson.loads(records.to_json(dead))["payload"]) == b"\xff"
