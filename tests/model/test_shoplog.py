"""The shop log generator: determinism, valid events, sentiment that follows experience."""

from __future__ import annotations

import argparse
import gzip
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.model import shoplog
from recstream.model.adapters import read_events
from recstream.model.shoplog import (
    CATEGORIES,
    REVIEW_TEMPLATES,
    build_catalog,
    generate,
    write_log,
)
from recstream.streams.records import Click, Review, Search

USERS, ITEMS, DAYS, SEED = 120, 80, 6.0, 11


@pytest.fixture(scope="module")
def log() -> list[dict[str, Any]]:
    return list(generate(USERS, ITEMS, DAYS, SEED))


def test_same_seed_same_log(log: list[dict[str, Any]]) -> None:
    assert list(generate(USERS, ITEMS, DAYS, SEED)) == log
    assert list(generate(USERS, ITEMS, DAYS, SEED + 1)) != log


def test_every_line_is_a_valid_event(tmp_path: Path, log: list[dict[str, Any]]) -> None:
    path = tmp_path / "shop.jsonl.gz"
    assert write_log(path, iter(log)) == len(log)
    events = list(read_events(path, "jsonl"))  # strict: any invalid line raises
    assert len(events) == len(log) > 1_000
    kinds = {type(e) for e in events}
    assert kinds == {Click, Search, Review}
    assert {e.action for e in events if isinstance(e, Click)} == {"view", "add_to_cart", "purchase"}
    assert len({e.event_id for e in events}) == len(events)


def test_time_order_and_period(log: list[dict[str, Any]]) -> None:
    times = [e["ts"] for e in log]
    assert times == sorted(times)
    assert (
        times[0] >= shoplog.DEFAULT_START_TS
        and times[-1] < shoplog.DEFAULT_START_TS + DAYS * 86_400
    )
    last: dict[str, float] = {}
    for event in log:
        assert event["ts"] > last.get(event["user_id"], 0.0)
        last[event["user_id"]] = event["ts"]


def _label_of(rating: int) -> str:
    return "negative" if rating <= 2 else "neutral" if rating == 3 else "positive"


def _matches(text: str, lang: str, label: str) -> bool:
    for template in REVIEW_TEMPLATES[lang][label]:
        pattern = re.escape(template).replace(r"\{noun\}", ".+").replace(r"\{brand\}", ".+")
        if re.fullmatch(pattern, text):
            return True
    return False


def test_review_text_follows_rating(log: list[dict[str, Any]]) -> None:
    reviews = [e for e in log if "text" in e]
    rated = [r for r in reviews if "rating" in r]
    assert len(rated) >= 20 and len(rated) < len(reviews)  # some carry text only
    for review in rated:
        assert _matches(review["text"], review["lang"], _label_of(review["rating"])), review
    assert {_label_of(r["rating"]) for r in rated} == {"negative", "neutral", "positive"}


def test_ratings_follow_hidden_quality() -> None:
    users, items, seed = 600, 60, 4
    catalog = build_catalog(items, np.random.default_rng(seed))  # generate() draws it first
    by_item: dict[int, list[int]] = defaultdict(list)
    for event in generate(users, items, 10.0, seed):
        if "rating" in event:
            by_item[int(event["item_id"][1:])].append(event["rating"])
    good = [r for i, rs in by_item.items() if catalog.quality[i] > 0.7 for r in rs]
    poor = [r for i, rs in by_item.items() if catalog.quality[i] < 0.4 for r in rs]
    assert len(good) > 20 and len(poor) > 5
    assert np.mean(good) - np.mean(poor) > 1.0


def test_chinese_reviews_and_queries(log: list[dict[str, Any]]) -> None:
    han = re.compile(r"[\u4e00-\u9fff]")
    zh_reviews = [e for e in log if e.get("lang") == "zh"]
    assert zh_reviews and all(han.search(e["text"]) for e in zh_reviews)
    assert any(e.get("lang") == "en" for e in log)
    assert any(han.search(e["query"]) for e in log if "query" in e)


def test_sessions_follow_categories_and_accessories(log: list[dict[str, Any]]) -> None:
    nouns = [c[0] for c in CATEGORIES]
    accessory_of = {c[0]: nouns[c[2]] for c in CATEGORIES if c[2] >= 0}
    last_view: dict[str, dict[str, Any]] = {}
    same = pairs = accessory_after_main = 0
    for event in log:
        if event.get("action") != "view":
            continue
        previous = last_view.get(event["user_id"])
        if previous and previous["session_id"] == event["session_id"]:
            pairs += 1
            same += previous["category"] == event["category"]
            accessory_after_main += accessory_of.get(previous["category"]) == event["category"]
        last_view[event["user_id"]] = event
    assert pairs > 200
    assert same / pairs > 0.5  # sessions stay in a category ...
    assert accessory_after_main / pairs > 0.05  # ... with accessories after main products


def test_search_words_describe_the_next_view(log: list[dict[str, Any]]) -> None:
    chinese = {c[1]: c[0] for c in CATEGORIES}
    pending: dict[str, str] = {}
    hits = total = 0
    for event in log:
        if "query" in event:
            noun = event["query"].split()[-1]
            pending[event["user_id"]] = chinese.get(noun, noun)
        elif event.get("action") == "view" and event["user_id"] in pending:
            total += 1
            hits += event["category"].endswith(pending.pop(event["user_id"]).split()[-1])
    assert total > 50 and hits == total


def test_command_writes_a_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    shoplog.add_arguments(parser)
    out = tmp_path / "log.jsonl.gz"
    args = parser.parse_args(["--users", "20", "--items", "30", "--days", "2", "--out", str(out)])
    assert shoplog.run(args) == 0
    lines = gzip.decompress(out.read_bytes()).splitlines()
    assert [orjson.loads(line) for line in lines] == list(generate(20, 30, 2.0, 0))


def test_too_small_catalog_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        list(generate(10, 5, 1.0, 0))
