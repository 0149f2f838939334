"""The JSON Schemas shipped in ``recstream.streams/schemas`` agree with ``records.py``."""

from __future__ import annotations

import importlib.resources
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from recstream.model.features import ACTION_IDS
from recstream.streams import records
from recstream.streams.records import (
    PARSERS,
    Click,
    DeadLetter,
    Forget,
    InvalidEvent,
    Recommendation,
    Review,
    ScoredItem,
    Search,
    Sentiment,
    SessionSummary,
    event_to_dict,
    to_json,
)
from recstream.streams.topic_admin import ALL_TOPICS, INPUT_TOPICS

NOW = 1_750_000_000.0  # 2025-06-15
ISO_NOW = "2025-06-15T15:06:40Z"


def _load(topic: str) -> dict[str, Any]:
    resource = importlib.resources.files("recstream.streams").joinpath(f"schemas/{topic}.json")
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


SCHEMAS = {topic: _load(topic) for topic in ALL_TOPICS}
VALIDATORS = {topic: Draft202012Validator(schema) for topic, schema in SCHEMAS.items()}


def _schema_accepts(topic: str, obj: object) -> bool:
    return VALIDATORS[topic].is_valid(obj)


def _parser_accepts(topic: str, obj: object) -> bool:
    parse: Callable[..., object] = PARSERS[topic]
    try:
        parse(records.loads(orjson.dumps(obj), max_bytes=1 << 20), now=NOW)
    except InvalidEvent:
        return False
    return True


# ----------------------------------------------------------------------------
# The schemas themselves
# ----------------------------------------------------------------------------


def test_one_schema_per_topic_is_shipped() -> None:
    folder = importlib.resources.files("recstream.streams").joinpath("schemas")
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    assert shipped == sorted(f"{topic}.json" for topic in ALL_TOPICS)


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_schema_is_valid_draft_2020_12(topic: str) -> None:
    schema = SCHEMAS[topic]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:recstream:schema:{topic}"
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["required"]
    assert set(schema["required"]) <= set(schema["properties"])


def test_input_schemas_share_identical_definitions() -> None:
    seen: dict[str, Any] = {}
    for topic in INPUT_TOPICS:
        for name, definition in SCHEMAS[topic]["$defs"].items():
            assert seen.setdefault(name, definition) == definition, f"{topic}: $defs/{name}"
    assert {"id", "ts"} <= set(seen)


def test_output_schemas_list_exactly_the_dataclass_fields() -> None:
    classes: dict[str, type] = {
        "recommendations": Recommendation,
        "sentiment": Sentiment,
        "sessions": SessionSummary,
        "deadletter": DeadLetter,
    }
    for topic, cls in classes.items():
        names = [f.name for f in fields(cls)]
        assert SCHEMAS[topic]["required"] == names
        assert list(SCHEMAS[topic]["properties"]) == names
        assert SCHEMAS[topic]["additionalProperties"] is False


def test_input_schemas_list_exactly_the_dataclass_fields() -> None:
    classes: dict[str, type] = {
        "clicks": Click,
        "searches": Search,
        "reviews": Review,
        "privacy": Forget,
    }
    for topic, cls in classes.items():
        assert list(SCHEMAS[topic]["properties"]) == [f.name for f in fields(cls)]


# ----------------------------------------------------------------------------
# Output events built by records.py validate
# ----------------------------------------------------------------------------


def _session_counts() -> dict[str, int]:
    counts = dict.fromkeys(ACTION_IDS, 0)
    counts.update(view=3, purchase=1)
    return counts


def _dead_letter() -> DeadLetter:
    raw = b'{"event_id": "e1", "user_id": "u1"}'
    try:
        records.parse_click(records.loads(raw, 1024), now=NOW)
    except InvalidEvent as exc:
        return DeadLetter.of("shop1.clicks", 3, 1234, str(exc), raw)
    raise AssertionError("the click should be invalid")


OUTPUTS: list[tuple[str, Any]] = [
    (
        "recommendations",
        Recommendation(
            user_id="u1",
            session_id="u1-1750000000",
            trigger_event_id="e9",
            items=(ScoredItem("i1", 0.92), ScoredItem("i2", -1.5)),
            model_version="recs-20250615-abc123",
            event_ts=NOW - 1,
            emitted_at=NOW,
        ),
    ),
    (
        "recommendations",
        Recommendation("u1", "s", "e", (), "popular", NOW, NOW, fallback=True),
    ),
    (
        "sentiment",
        Sentiment(
            event_id="r1",
            user_id="u1",
            item_id="i1",
            label="positive",
            probs={"negative": 0.05, "neutral": 0.15, "positive": 0.8},
            model_version="sentiment-1",
        ),
    ),
    (
        "sentiment",
        Sentiment(
            "r2", "u1", "i1", "neutral", dict.fromkeys(records.LABELS, 1 / 3), "v", ("empty_text",)
        ),
    ),
    (
        "sessions",
        SessionSummary(
            user_id="u1",
            session_id="u1-1750000000",
            start_ts=NOW - 600,
            end_ts=NOW,
            counts=_session_counts(),
            items=("i1", "i2"),
            searches=("红色 连衣裙",),
        ),
    ),
    ("deadletter", _dead_letter()),
    ("deadletter", DeadLetter.of("clicks", 0, 0, "too_large: 70000 bytes > limit 65536", None)),
]


@pytest.mark.parametrize(("topic", "record"), OUTPUTS)
def test_output_records_validate(topic: str, record: Any) -> None:
    obj = orjson.loads(to_json(record))
    errors = [e.message for e in VALIDATORS[topic].iter_errors(obj)]
    assert errors == []


@pytest.mark.parametrize(
    ("topic", "change"),
    [
        ("recommendations", {"fallback": "no"}),
        ("recommendations", {"items": [{"item_id": "i1"}]}),
        ("recommendations", {"extra": 1}),
        ("sentiment", {"label": "mixed"}),
        ("sentiment", {"probs": {"negative": 0.2, "neutral": 0.3, "positive": 1.5}}),
        ("sessions", {"counts": {"view": 1}}),
        ("sessions", {"counts": {**_session_counts(), "view": -1}}),
        ("deadletter", {"payload": "not base64!"}),
        ("deadletter", {"error": "something broke"}),
        ("deadletter", {"offset": -1}),
    ],
)
def test_invalid_outputs_are_rejected(topic: str, change: dict[str, Any]) -> None:
    record = next(r for t, r in OUTPUTS if t == topic)
    obj = orjson.loads(to_json(record)) | change
    assert not _schema_accepts(topic, obj)


def test_every_dead_letter_reason_fits_the_error_pattern() -> None:
    pattern = re.compile(SCHEMAS["deadletter"]["properties"]["error"]["pattern"])
    for reason in records.Reason:
        assert pattern.match(str(InvalidEvent(reason, "detail")))
    assert pattern.match("processing_error: recommendation scoring failed twice: boom")


# ----------------------------------------------------------------------------
# Input events: the schema and the parser agree
# ----------------------------------------------------------------------------

CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": NOW - 10}
SEARCH = {"event_id": "e2", "user_id": "u1", "query": "red dress", "ts": ISO_NOW}
REVIEW = {"event_id": "e3", "user_id": "u1", "item_id": "i1", "text": "很好用!", "ts": NOW - 5}
FORGET = {"event_id": "e4", "user_id": "u1", "ts": (NOW - 1) * 1000}
BASE: dict[str, dict[str, Any]] = {
    "clicks": CLICK,
    "searches": SEARCH,
    "reviews": REVIEW,
    "privacy": FORGET,
}
DROP = object()

# (topic, change to the valid base object, accepted?)
INPUT_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("clicks", {}, True),
    ("clicks", {"action": "purchase", "price": 19.9, "category": "shoes", "session_id": "s"}, True),
    ("clicks", {"price": None, "category": None, "session_id": None, "unknown": [1]}, True),
    ("clicks", {"user_id": 12345, "item_id": -7}, True),
    ("clicks", {"ts": "2025-06-15T10:00:00+02:00"}, True),
    ("clicks", {"ts": "2025-06-15 10:00:00.123456789Z"}, True),
    ("clicks", {"ts": "2025-06-15T10:00Z"}, True),
    ("clicks", {"ts": 946_684_800}, True),
    ("clicks", {"ts": 946_684_800_000}, True),
    ("clicks", {"action": "refund"}, False),
    ("clicks", {"action": DROP}, False),
    ("clicks", {"action": 1}, False),
    ("clicks", {"item_id": DROP}, False),
    ("clicks", {"item_id": None}, False),
    ("clicks", {"item_id": ""}, False),
    ("clicks", {"item_id": "x" * 257}, False),
    ("clicks", {"item_id": "x" * 256}, True),
    ("clicks", {"item_id": "a\tb"}, False),
    ("clicks", {"item_id": "a\u200bb"}, False),
    ("clicks", {"item_id": "商品 42 ✓"}, True),
    ("clicks", {"item_id": True}, False),
    ("clicks", {"item_id": 4.5}, False),
    ("clicks", {"item_id": ["i1"]}, False),
    ("clicks", {"price": -1}, False),
    ("clicks", {"price": "9.99"}, False),
    ("clicks", {"price": True}, False),
    ("clicks", {"category": 3}, False),
    ("clicks", {"session_id": ""}, False),
    ("clicks", {"ts": DROP}, False),
    ("clicks", {"ts": None}, False),
    ("clicks", {"ts": True}, False),
    ("clicks", {"ts": "2025-06-15T10:00:00"}, False),
    ("clicks", {"ts": "2025-06-15"}, False),
    ("clicks", {"ts": "yesterday"}, False),
    ("clicks", {"ts": "1999-12-31T23:59:59Z"}, False),
    ("clicks", {"ts": 946_684_799}, False),
    ("clicks", {"ts": 99_999_999_999}, True),  # seconds: year 5138, beyond the parser's clock
    ("clicks", {"ts": 100_000_000_000}, False),  # milliseconds: 1973
    ("clicks", {"ts": -NOW}, False),
    ("clicks", {"ts": "2025-13-01T00:00:00Z"}, False),
    ("clicks", {"ts": "2025-06-15T24:00:00Z"}, False),
    ("searches", {}, True),
    ("searches", {"query": ""}, True),
    ("searches", {"query": "q" * 1024, "results": ["i1", 2, "i3"]}, True),
    ("searches", {"results": None}, True),
    ("searches", {"results": []}, True),
    ("searches", {"query": "q" * 1025}, False),
    ("searches", {"query": None}, False),
    ("searches", {"query": 42}, False),
    ("searches", {"results": "i1"}, False),
    ("searches", {"results": ["i1", None]}, False),
    ("searches", {"results": ["i1", ""]}, False),
    ("searches", {"results": [f"i{n}" for n in range(201)]}, False),
    ("searches", {"results": [f"i{n}" for n in range(200)]}, True),
    ("reviews", {}, True),
    ("reviews", {"rating": 5, "lang": "zh-CN"}, True),
    ("reviews", {"rating": 1.0}, True),
    ("reviews", {"rating": None, "lang": None, "text": ""}, True),
    ("reviews", {"text": "t" * 20_000}, True),
    ("reviews", {"text": "t" * 20_001}, False),
    ("reviews", {"rating": 0}, False),
    ("reviews", {"rating": 6}, False),
    ("reviews", {"rating": 4.5}, False),
    ("reviews", {"rating": "5"}, False),
    ("reviews", {"rating": True}, False),
    ("reviews", {"lang": "x" * 17}, False),
    ("reviews", {"lang": 1}, False),
    ("reviews", {"text": None}, False),
    ("privacy", {}, True),
    ("privacy", {"user_id": DROP}, False),
    ("privacy", {"event_id": "e\n"}, False),
    ("privacy", {"ts": ISO_NOW + "\n"}, False),
]


def _case(topic: str, change: dict[str, Any]) -> dict[str, Any]:
    obj = BASE[topic] | change
    return {k: v for k, v in obj.items() if v is not DROP}


@pytest.mark.parametrize(("topic", "change", "accepted"), INPUT_CASES)
def test_schema_and_parser_agree(topic: str, change: dict[str, Any], accepted: bool) -> None:
    obj = _case(topic, change)
    assert _schema_accepts(topic, obj) is accepted
    # The parser also checks the clock: a ts after now + skew is rejected by it alone.
    if change.get("ts") != 99_999_999_999:
        assert _parser_accepts(topic, obj) is accepted


def test_events_built_from_dataclasses_validate() -> None:
    events: list[Any] = [
        Click("e1", "u1", "i1", "add_to_cart", NOW, session_id="s1", price=3.0, category="c"),
        Search("e2", "u1", "跑步鞋", NOW, results=("i1", "i2")),
        Review("e3", "u1", "i1", "Terrible 👎", NOW, rating=1, lang="en"),
    ]
    for event in events:
        topic = records.topic_of(event)
        obj = event_to_dict(event)
        assert VALIDATORS[topic].is_valid(obj), obj
        assert PARSERS[topic](obj, now=NOW) == event
    forget = orjson.loads(to_json(Forget("e4", "u1", NOW)))
    assert _schema_accepts("privacy", forget) and _parser_accepts("privacy", forget)


def test_id_pattern_matches_str_isprintable_on_the_bmp() -> None:
    """Every assigned, non-surrogate BMP character: the schema's id pattern and
    ``str.isprintable`` (the parser's rule) give the same verdict."""
    id_string = SCHEMAS["clicks"]["$defs"]["id"]["anyOf"][0]
    forbidden = re.compile(id_string["not"]["pattern"])
    disagree = [
        hex(code)
        for code in range(0x10000)
        if unicodedata.category(chr(code)) not in ("Cn", "Cs")
        and bool(forbidden.search(chr(code))) == chr(code).isprintable()
    ]
    assert disagree == []


_ID_CHARS = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cn", "Cs"))
_ids = st.one_of(
    st.text(_ID_CHARS, max_size=260),
    st.integers(-(10**12), 10**12),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
)
# Numbers between now + skew and 1e11 are future epoch seconds: only the parser (with its
# clock) rejects those, so they are left out here.
_times = st.one_of(
    st.floats(-2e12, NOW * 1000, allow_nan=False).filter(lambda x: not NOW + 86_400 < x < 1e11),
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2025, 6, 1), timezones=st.just(UTC)
    ).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2025, 6, 1)).map(
        datetime.isoformat
    ),
    st.text(max_size=30),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    event_id=_ids,
    user_id=_ids,
    item_id=_ids,
    action=st.sampled_from(["view", "add_to_cart", "purchase", "VIEW", "", None]),
    ts=_times,
    price=st.one_of(st.none(), st.floats(-10, 1e6, allow_nan=False), st.text(max_size=3)),
)
def test_schema_and_parser_agree_on_random_clicks(
    event_id: object, user_id: object, item_id: object, action: object, ts: object, price: object
) -> None:
    obj = {
        "event_id": event_id,
        "user_id": user_id,
        "item_id": item_id,
        "action": action,
        "ts": ts,
        "price": price,
    }
    assert _schema_accepts("clicks", obj) is _parser_accepts("clicks", obj), obj
