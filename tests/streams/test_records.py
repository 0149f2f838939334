"""Validation of input events and serialisation of output events."""

from __future__ import annotations

import base64
import dataclasses
import math
import random
from itertools import repeat

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recstream.streams import records
from recstream.streams.records import InvalidEvent, Reason, RecordBuilder, ScoredItem

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


_TEXT = st.text(max_size=12)
_NUMBER = st.floats(allow_nan=False, allow_infinity=False)
_OUTPUT_RECORDS = st.one_of(
    st.builds(
        records.Recommendation,
        _TEXT,
        _TEXT,
        _TEXT,
        st.lists(st.builds(ScoredItem, _TEXT, _NUMBER), max_size=4).map(tuple),
        _TEXT,
        _NUMBER,
        _NUMBER,
        st.booleans(),
    ),
    st.builds(
        records.Sentiment,
        _TEXT,
        _TEXT,
        _TEXT,
        st.sampled_from(records.LABELS),
        st.dictionaries(_TEXT, _NUMBER, max_size=3),
        _TEXT,
        st.lists(_TEXT, max_size=2).map(tuple),
    ),
    st.builds(
        records.SessionSummary,
        _TEXT,
        _TEXT,
        _NUMBER,
        _NUMBER,
        st.dictionaries(_TEXT, st.integers(0, 99), max_size=3),
        st.lists(_TEXT, max_size=3).map(tuple),
        st.lists(_TEXT, max_size=3).map(tuple),
    ),
    st.builds(
        records.DeadLetter, _TEXT, st.integers(0, 99), st.integers(0, 2**40), _TEXT, _TEXT, _NUMBER
    ),
)


@given(_OUTPUT_RECORDS)
def test_output_records_serialise_as_orjson_writes_their_dataclass(
    record: records.OutputRecord,
) -> None:
    """``to_json`` writes an output record through its ``json_object``: the very bytes
    orjson writes for the dataclass itself, so a field added to one and not the other
    fails here."""
    assert type(record) in records.OUTPUT_TYPES
    assert records.to_json(record) == orjson.dumps(record)


def _one_by_one(objs: list[object], now: float) -> list[records.Click] | None:
    """The record-by-record result, or None when any object is invalid (a non-object
    never reaches parse_click: ``loads`` turns it away)."""
    if not all(isinstance(obj, dict) for obj in objs):
        return None
    try:
        return [records.parse_click(obj, now=now) for obj in objs]  # type: ignore[arg-type]
    except InvalidEvent:
        return None


def test_parse_clicks_reads_a_common_batch_like_parse_click() -> None:
    objs = [_click(event_id=f"e{n}", user_id=f"u{n % 3}", ts=NOW - 100 + n) for n in range(20)] + [
        _click(event_id="x", price=0.0, category="shoes", session_id="s1", action="purchase")
    ]
    got = records.parse_clicks(objs, now=NOW)
    assert got is not None
    assert got == _one_by_one(objs, NOW)  # type: ignore[arg-type]
    assert records.parse_clicks([], now=NOW) == []


def test_parse_clicks_maps_user_ids() -> None:
    objs = [_click(user_id="alice"), _click(event_id="e2", user_id="bob")]
    got = records.parse_clicks(objs, now=NOW, user_ids=str.upper)
    assert got is not None
    assert [click.user_id for click in got] == ["ALICE", "BOB"]


#: One field changed to a value the common form does not take (valid or not).
_VARIANTS: list[dict[str, object]] = [
    {"ts": 1_750_000_000},  # int seconds: valid, not the common form
    {"ts": (NOW - 10) * 1000.0},  # milliseconds
    {"ts": "2025-06-15T10:00:00Z"},
    {"ts": NOW + 2 * 86_400.0},  # too far ahead
    {"ts": 100.0},
    {"ts": True},
    {"ts": None},
    {"event_id": 42},
    {"event_id": ""},
    {"event_id": "a\nb"},
    {"event_id": "e" * 257},
    {"user_id": None},
    {"user_id": 7},
    {"item_id": ["i"]},
    {"item_id": "i" * 256},  # the longest valid id
    {"action": "like"},
    {"action": None},
    {"action": 1},
    {"price": 3},
    {"price": -0.5},
    {"price": -0.0},
    {"price": True},
    {"price": "9.5"},
    {"category": ""},
    {"category": "c" * 300},
    {"category": 5},
    {"session_id": ""},
    {"session_id": 12},
    {"session_id": "s\x00"},
    {"extra": {"nested": [1, 2]}},
]


def _same(got: list[records.Click] | None, expected: list[records.Click] | None) -> bool:
    """Equal records with equal JSON (3 == 3.0, but the outputs would differ)."""
    return got == expected and orjson.dumps(got) == orjson.dumps(expected)


@pytest.mark.parametrize("variant", _VARIANTS, ids=repr)
def test_parse_clicks_with_one_uncommon_object(variant: dict[str, object]) -> None:
    objs = [_click(event_id=f"e{n}", price=1.5) for n in range(3)]
    odd = {k: v for k, v in {**_click(event_id="odd"), **variant}.items() if v is not None}
    got = records.parse_clicks([*objs, odd], now=NOW)
    expected = _one_by_one([*objs, odd], NOW)
    assert got is None or _same(got, expected)
    if expected is None:
        assert got is None


@pytest.mark.parametrize("seed", range(40))
def test_parse_clicks_accepts_only_what_parse_click_reads_the_same(seed: int) -> None:
    """Random batches with a few odd objects: the column path either returns None or
    exactly the records parse_click makes; it never accepts an invalid batch."""
    rng = random.Random(seed)
    objs: list[object] = []
    for n in range(rng.randint(1, 12)):
        obj = _click(event_id=f"e{n}", ts=NOW - rng.uniform(0, 1000))
        if rng.random() < 0.5:
            obj.update(price=rng.uniform(0, 100), category="c", session_id="s")
        if rng.random() < 0.3:
            obj.update(rng.choice(_VARIANTS))
            obj = {k: v for k, v in obj.items() if v is not None}
        if rng.random() < 0.05:
            objs.append(rng.choice([[obj], "text", 3, None]))
            continue
        if rng.random() < 0.05:
            del obj[rng.choice(["event_id", "user_id", "item_id", "action", "ts"])]
        objs.append(obj)
    got = records.parse_clicks(objs, now=NOW)  # type: ignore[arg-type]
    expected = _one_by_one(objs, NOW)
    if got is not None:
        assert _same(got, expected)
    if expected is not None and all(
        type(obj["ts"]) is float  # type: ignore[index]
        and type(obj.get("price", 0.0)) is float  # type: ignore[attr-defined]
        and obj.get("category", "c") != ""  # type: ignore[attr-defined]
        and len(obj.get("category", "")) <= records.MAX_ID_CHARS  # type: ignore[attr-defined]
        and type(obj.get("session_id", "")) is str  # type: ignore[attr-defined]
        and obj["ts"] < records.MILLIS_THRESHOLD  # type: ignore[index]
        for obj in objs
    ):
        assert _same(got, expected)  # the common form is never sent the slow way


def test_record_builder_makes_equal_frozen_records() -> None:
    built = RecordBuilder(ScoredItem).build(3, ["a", "b", "c"], [0.5, -1.0, 2.0])
    assert built == [ScoredItem("a", 0.5), ScoredItem("b", -1.0), ScoredItem("c", 2.0)]
    assert hash(built[0]) == hash(ScoredItem("a", 0.5))
    assert orjson.dumps(built) == orjson.dumps([ScoredItem("a", 0.5), *built[1:]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].score = 1.0  # type: ignore[misc]
    assert RecordBuilder(ScoredItem).build(2, ["x", "y"], repeat(0.0))[1] == ScoredItem("y", 0.0)
    with pytest.raises(TypeError):
        RecordBuilder(ScoredItem).build(1, ["only ids"])


def test_record_builder_refuses_classes_it_cannot_fill() -> None:
    @dataclasses.dataclass
    class NoSlots:
        a: int

    @dataclasses.dataclass(slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            self.a += 1

    for cls in (NoSlots, PostInit):
        with pytest.raises(TypeError):
            RecordBuilder(cls)
