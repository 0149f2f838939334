"""Log adapters: every format on tiny files written here, malformed lines, real files."""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from recstream.model.adapters import (
    FORMATS,
    SASREC_BASE_TS,
    AdapterError,
    AdapterStats,
    read_events,
    read_located,
)
from recstream.streams.records import Click, Review, Search, event_to_dict

DATA_ROOT = Path(
    os.environ.get("RECSTREAM_DATA_ROOT")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)

CANONICAL = [
    {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": 1700000000.0},
    {
        "event_id": "e2",
        "user_id": "u1",
        "item_id": "i2",
        "action": "purchase",
        "ts": 1700000060.5,
        "session_id": "s1",
        "price": 19.99,
        "category": "shoes",
    },
    {
        "event_id": "e3",
        "user_id": "u2",
        "query": "red running shoes",
        "ts": 1700000100.0,
        "results": ["i1", "i2"],
    },
    {"event_id": "e4", "user_id": "u2", "query": "跑鞋", "ts": 1700000200.0},
    {
        "event_id": "e5",
        "user_id": "u2",
        "item_id": "i2",
        "text": "质量很好，非常满意",
        "ts": 1700000300.0,
        "rating": 5,
        "lang": "zh",
    },
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_round_trip_is_identical(tmp_path: Path) -> None:
    original = b"".join(orjson.dumps(obj) + b"\n" for obj in CANONICAL)
    path = tmp_path / "log.jsonl"
    path.write_bytes(original)
    events = list(read_events(path, "jsonl"))
    assert [type(e) for e in events] == [Click, Click, Search, Search, Review]
    again = b"".join(orjson.dumps(event_to_dict(e)) + b"\n" for e in events)
    assert again == original


def test_gzip_and_stdin_read_the_same_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = b"".join(orjson.dumps(obj) + b"\n" for obj in CANONICAL)
    plain = tmp_path / "log.jsonl"
    plain.write_bytes(raw)
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(raw))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    from_stdin = list(read_events("-", "jsonl"))
    assert list(read_events(packed, "jsonl")) == list(read_events(plain, "jsonl")) == from_stdin


def test_sasrec_synthesises_increasing_times(tmp_path: Path) -> None:
    path = _write(tmp_path / "Games.txt", "1 10\n1 11\n2 10\n2 12\n2 13\n")
    located = list(read_located(path, "sasrec"))
    events = [loc.event for loc in located]
    assert all(isinstance(e, Click) and e.action == "view" for e in events)
    assert [e.ts for e in events] == [SASREC_BASE_TS + 60.0 * i for i in range(5)]
    assert [(e.user_id, getattr(e, "item_id", None)) for e in events][2] == ("2", "10")
    assert [loc.line for loc in located] == [1, 2, 3, 4, 5]
    assert events[0].event_id == "Games.txt:1"


def test_diginetica_users_times_and_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "1;NA;100;5000;2016-05-09\n"
        "1;NA;101;1000;2016-05-09\n"
        "2;;102;0;2016-05-08\n"
        "3;NA;103;0;2016-05-10\n"
        "3;77;104;2000;2016-05-10\n",
    )
    events = [e for e in read_events(path, "diginetica") if isinstance(e, Click)]
    day = 1_462_752_000.0  # 2016-05-09T00:00:00Z
    assert [e.item_id for e in events] == ["102", "101", "100", "103", "104"]
    assert events[1].ts == day + 1.0 and events[2].ts == day + 5.0
    assert events[0].user_id == "session-2" and events[1].user_id == "session-1"
    # Session 3 logs in part-way: its anonymous row belongs to the user too.
    assert {e.user_id for e in events[3:]} == {"77"}
    assert events[3].session_id == "3"


def test_rees46_actions_and_skips(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "oct.csv",
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1\n"
        "2019-10-01 00:00:05 UTC,cart,44600062,2103807459595387724,,shiseido,35.79,541312140,s1\n"
        "2019-10-01 00:00:07 UTC,remove_from_cart,44600062,21038,,shiseido,35.79,541312140,s1\n"
        "2019-10-01 00:01:00 UTC,purchase,3900821,2053013552326770905,appliances.water,aqua,"
        "33.20,541312140,s1\n",
    )
    stats = AdapterStats()
    events = [e for e in read_events(path, "rees46", stats=stats) if isinstance(e, Click)]
    assert [e.action for e in events] == ["view", "add_to_cart", "purchase"]
    assert events[0].ts == 1_569_888_000.0  # 2019-10-01T00:00:00Z
    assert events[0].price == 35.79 and events[0].session_id == "s1"
    assert events[0].category == "2103807459595387724"  # no category_code: the id
    assert events[2].category == "appliances.water"
    assert sum(stats.skipped.values()) == 1 and stats.events == 3


def _ubi_lines(*pairs: tuple[dict[str, object], dict[str, object]]) -> str:
    return "".join(
        orjson.dumps(a).decode() + "\n" + orjson.dumps(d).decode() + "\n" for a, d in pairs
    )


def test_ubi_queries_clicks_and_impressions(tmp_path: Path) -> None:
    asin = {"object": {"object_id": "B07CVR21VN", "object_id_field": "asin"}}
    text = _ubi_lines(
        (
            {"index": {"_index": "ubi_queries", "_id": "q1"}},
            {
                "client_id": "c1",
                "user_query": "futon frames",
                "query_id": "qid",
                "timestamp": "2024-12-10T00:01:29.378Z",
                "query_response_hit_ids": ["B07CVR21VN", "B000000001"],
            },
        ),
        (
            {"index": {"_index": "ubi_events", "_id": "ev1"}},
            {
                "action_name": "impression",
                "client_id": "c1",
                "timestamp": "2024-12-10T00:01:29.400Z",
                "event_attributes": asin,
            },
        ),
        (
            {"index": {"_index": "ubi_events", "_id": "ev2"}},
            {
                "action_name": "add_to_cart",
                "client_id": "c1",
                "user_id": "",
                "session_id": "S1",
                "timestamp": 1733788895000,
                "event_attributes": asin,
            },
        ),
        (
            {"index": {"_index": "ubi_events", "_id": "ev0"}},
            {
                "action_name": "click",
                "client_id": "c1",
                "user_id": "alice",
                "timestamp": "2024-12-10T00:01:30.000+0000",
                "event_attributes": asin,
            },
        ),
    )
    stats = AdapterStats()
    events = list(read_events(_write(tmp_path / "ubi.ndjson", text), "ubi", stats=stats))
    assert [type(e) for e in events] == [Search, Click, Click]  # time order, not file order
    search, click, cart = events
    assert isinstance(search, Search) and isinstance(click, Click) and isinstance(cart, Click)
    assert search.query == "futon frames" and search.results == ("B07CVR21VN", "B000000001")
    assert search.event_id == "q1" and search.user_id == "c1"
    assert click.action == "view" and click.user_id == "alice" and click.item_id == "B07CVR21VN"
    assert cart.action == "add_to_cart" and cart.user_id == "c1" and cart.session_id == "S1"
    assert cart.ts == 1_733_788_895.0
    assert stats.skipped == Counter({"ubi impression (shown, not interacted with)": 1})


def test_strict_mode_names_file_and_line(tmp_path: Path) -> None:
    lines = [orjson.dumps(CANONICAL[0]).decode(), "{not json", orjson.dumps(CANONICAL[2]).decode()]
    path = _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(AdapterError) as caught:
        list(read_events(path, "jsonl"))
    assert caught.value.line == 2
    assert str(caught.value).startswith(f"{path}:2: ")


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        (
            "jsonl",
            '{"event_id": "x", "user_id": "u", "item_id": "i", "action": "fly", "ts": 1.7e9}',
            "unknown_action",
        ),
        (
            "jsonl",
            '{"event_id": "x", "user_id": "u", "query": "q", "ts": "yesterday"}',
            "bad_timestamp",
        ),
        ("jsonl", '{"event_id": "x", "user_id": "u"}', "unknown_kind"),
        ("jsonl", "[1, 2]", "not_object"),
        ("sasrec", "1 2 3", "bad_columns"),
        ("ubi", '{"index": {"_index": "ubi_events"}}\n{"client_id": "c"}', "missing_field"),
    ],
)
def test_lenient_mode_counts_bad_lines(tmp_path: Path, fmt: str, text: str, reason: str) -> None:
    good = {"jsonl": orjson.dumps(CANONICAL[0]).decode(), "sasrec": "1 5"}.get(fmt, "")
    path = _write(tmp_path / "log.txt", f"{good}\n{text}\n{good}\n")
    stats = AdapterStats()
    events = list(read_events(path, fmt, strict=False, stats=stats))
    assert stats.malformed == Counter({reason: 1})
    assert len(events) == (2 if good else 0)
    assert stats.errors[0].startswith(f"{path}:")
    with pytest.raises(AdapterError):
        list(read_events(path, fmt))


def test_invalid_utf8_is_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"1 5\n\xff\xfe 7\n1 6\n")
    stats = AdapterStats()
    assert len(list(read_events(path, "sasrec", strict=False, stats=stats))) == 2
    assert stats.malformed == Counter({"not_utf8": 1})


def test_wrong_header_always_fails(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(AdapterError, match="expected header"):
        list(read_events(path, "rees46", strict=False))


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        list(read_events(tmp_path / "x", "parquet"))
    assert "jsonl" in FORMATS


# ----------------------------------------------------------------------------
# The real files in ../shared/data (skipped when absent)
# ----------------------------------------------------------------------------

REAL_FILES = {
    "sasrec": "sasrec_games/Video.txt",
    "diginetica": "diginetica_sample/sample_train-item-views.csv",
    "rees46": "rees46_sample/2019-Oct-sample.csv",
    "ubi": "esci_ubi_search/ubi_queries_events.ndjson",
}


def _real(fmt: str) -> tuple[list[Click | Search | Review], AdapterStats]:
    path = DATA_ROOT / REAL_FILES[fmt]
    if not path.exists():
        pytest.skip(f"{REAL_FILES[fmt]}: ../shared/data not found")
    stats = AdapterStats()
    return list(read_events(path, fmt, stats=stats)), stats


def _users_in_time_order(events: list[Click | Search | Review]) -> bool:
    last: dict[str, float] = {}
    for event in events:
        if event.ts < last.get(event.user_id, 0.0):
            return False
        last[event.user_id] = event.ts
    return True


@pytest.mark.slow  # 287,107 lines: 3-20 s depending on the machine's load
def test_real_sasrec_games() -> None:
    events, stats = _real("sasrec")
    clicks = [e for e in events if isinstance(e, Click)]
    assert len(clicks) == len(events) == 287_107 and not stats.malformed
    assert len({e.user_id for e in clicks}) == 31_013
    assert len({e.item_id for e in clicks}) == 23_715
    assert _users_in_time_order(events)


def test_real_diginetica_sample() -> None:
    events, stats = _real("diginetica")
    clicks = [e for e in events if isinstance(e, Click)]
    assert len(clicks) == len(events) == 12_391 and not stats.malformed
    assert len({e.session_id for e in clicks}) == 2_986
    assert len({e.item_id for e in clicks}) == 7_139
    assert _users_in_time_order(events)


def test_real_rees46_sample() -> None:
    events, stats = _real("rees46")
    actions = Counter(e.action for e in events if isinstance(e, Click))
    assert actions == Counter({"view": 987, "purchase": 10, "add_to_cart": 3})
    assert not stats.malformed and _users_in_time_order(events)


def test_real_ubi_search() -> None:
    events, stats = _real("ubi")
    searches = [e for e in events if isinstance(e, Search)]
    clicks = [e for e in events if isinstance(e, Click)]
    assert len(searches) == 467 and all(s.query.strip() for s in searches)
    assert stats.skipped["ubi query with an empty user_query"] == 6
    assert any(s.results for s in searches)
    assert len(clicks) == 538 and {c.action for c in clicks} == {"view", "add_to_cart", "purchase"}
    assert stats.skipped["ubi impression (shown, not interacted with)"] == 1_999
    assert not stats.malformed and _users_in_time_order(events)
