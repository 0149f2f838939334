"""The storefront views on a Faust web server bound to 127.0.0.1 (no broker).

Only the app's web service runs; the partition assignment a broker would give is
set on the assignor directly, and producing is replaced by a recorder.  Routing
between real workers on a broker is in tests/integration/test_storefront_routing.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import faust
import jsonschema
import orjson
import pytest
from faust.types import TableT

from recstream.streams import sessions
from recstream.streams.broker import free_port
from recstream.streams.pipeline import home_partition
from recstream.streams.records import Recommendation, ScoredItem, Sentiment
from recstream.streams.scoring import FakeRecsScorer
from recstream.streams.settings import Settings
from recstream.streams.state_store import TableStateStore, declare_table
from recstream.streams.storefront import (
    MAX_REVIEWS,
    ROUTED_FROM,
    SERVED_BY,
    BadRequest,
    LatestRecommendations,
    Product,
    UserKeys,
    catalog_from_events,
    check_k,
    check_user_id,
    declare_latest_table,
    load_catalog,
    popular_items,
    read_page_file,
    register_storefront,
    storefront_url,
)

CATALOGUE = [f"p{i}" for i in range(30)]
OPENAPI: dict[str, Any] = json.loads(read_page_file("openapi.json"))


@dataclass
class Toggle:
    ready: bool = True
    reason: str = "recovering table state"

    def __call__(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, self.reason)


@dataclass
class Worker:
    """One web-only worker: app, tables, writer and what it produced."""

    app: faust.App
    settings: Settings
    url: str
    latest: LatestRecommendations
    user_state: TableT
    toggle: Toggle
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    changelog: list[tuple[int | None, bytes, bytes | None]] = field(default_factory=list)


def make_worker(port: int, partitions: int = 2) -> Worker:
    settings = Settings(
        app_id="storefront-unit",
        partitions=partitions,
        web_port=port,
        top_k=5,
        bootstrap_servers="127.0.0.1:1",  # never contacted: only the web service runs
    )
    app = faust.App(
        "storefront-unit",  # one app id, as in a consumer group
        broker="kafka://127.0.0.1:1",
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=port,
        store="memory://",
    )
    user_state = declare_table(app, settings)
    latest_table = declare_latest_table(app, settings)
    toggle = Toggle()
    latest = register_storefront(
        app,
        settings,
        latest_table,
        user_state,
        popular_items(FakeRecsScorer(CATALOGUE, version="fake-v1")),
        toggle,
        catalog={"p1": Product("p1", "camera", 450.0)},
    )
    worker = Worker(app, settings, f"http://127.0.0.1:{port}", latest, user_state, toggle)

    def record_changelog(
        partition: int | None, key: bytes, value: bytes | None, *args: Any, **kw: Any
    ) -> None:
        worker.changelog.append((partition, key, value))

    for table in (user_state, latest_table):
        table.send_changelog = record_changelog  # type: ignore[method-assign,assignment]
    return worker


def assign(workers: list[Worker], owner_of: Callable[[int], int]) -> None:
    """Give every worker the same table assignment: partition p -> workers[owner_of(p)]."""
    changelog = workers[0].latest.table.changelog_topic.get_topic_name()
    distribution: dict[str, dict[str, list[int]]] = {w.url: {changelog: []} for w in workers}
    for p in range(workers[0].settings.partitions):
        distribution[workers[owner_of(p)].url][changelog].append(p)
    for w in workers:
        w.app.assignor.changelog_distribution = distribution  # type: ignore[attr-defined]
    for index, w in enumerate(workers):
        owned = {p for p in range(w.settings.partitions) if owner_of(p) == index}
        w.latest._owns = owned.__contains__


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = make_worker(free_port())
    assign([w], lambda p: 0)
    await w.app.web.start()
    try:
        yield w
    finally:
        await w.app.web.stop()
        await w.app.http_client.close()


def rec(user: str, event_ts: float, items: list[str], trigger: str = "e1") -> Recommendation:
    return Recommendation(
        user_id=user,
        session_id=f"{user}:1",
        trigger_event_id=trigger,
        items=tuple(ScoredItem(item, 1.0 - i / 10) for i, item in enumerate(items)),
        model_version="fake-v1",
        event_ts=event_ts,
        emitted_at=event_ts + 0.01,
    )


def put_state(w: Worker, user: str, steps: list[tuple[float, int, str]]) -> None:
    """Store the state of ``user`` after ``steps`` (time, action code, item id or query)."""
    rules = sessions.SessionRules.from_settings(w.settings)
    state: sessions.UserState | None = None
    for i, (ts, code, text) in enumerate(steps):
        step = (ts, sessions.history_step(code, text))
        state = sessions.apply(state, user, f"{user}-{i}", step, rules).state
    assert state is not None
    TableStateStore(w.user_state).put(
        user, state.to_bytes(), home_partition(user, w.settings.partitions)
    )


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON schema the OpenAPI document gives one response, resolvable on its own."""
    schema = OPENAPI["paths"][path][method]["responses"][str(status)]["content"]
    return {**schema["application/json"]["schema"], "components": OPENAPI["components"]}


async def call(
    url: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body) as response,
    ):
        raw = await response.read()
        parsed = json.loads(raw) if response.content_type == "application/json" else raw
        return response.status, dict(response.headers), parsed


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "x" * 257, "bad\x01id", "tab\tid"])
def test_invalid_user_ids_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest, match="user_id"):
        check_user_id(bad)


def test_k_must_be_an_integer_from_1_to_100() -> None:
    assert check_k(None, 10) == 10
    assert check_k("3", 10) == 3
    for bad in ("0", "101", "three", "2.5"):
        with pytest.raises(BadRequest):
            check_k(bad, 10)


def test_catalog_from_events_reads_clicks_only(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = [
        {"action": "view", "item_id": "p1", "category": "camera", "price": 10},
        {"query": "camera", "user_id": "u"},
        {"action": "purchase", "item_id": "p1", "category": "other"},
    ]
    assert catalog_from_events(events) == {"p1": Product("p1", "camera", 10.0)}
    log = tmp_path / "shop.jsonl.gz"
    with gzip.open(log, "wb") as out:
        out.write(b"".join(json.dumps(e).encode() + b"\n" for e in events))
    assert load_catalog(log) == {"p1": Product("p1", "camera", 10.0)}


def test_storefront_url_points_at_the_page() -> None:
    assert storefront_url(Settings(web_port=7000)) == "http://127.0.0.1:7000/storefront/"
    wide = Settings(web_host="0.0.0.0", web_port=7001)
    assert storefront_url(wide) == "http://127.0.0.1:7001/storefront/"


def test_salted_ids_use_the_user_state_partition() -> None:
    settings = Settings(partitions=4, user_id_salt="s3cret")
    app = faust.App("storefront-salt", broker="kafka://127.0.0.1:1", store="memory://")
    table = declare_table(app, settings)
    keys = UserKeys(settings, table)
    stored = keys.pseudonym("alice")
    assert stored != "alice"
    assert keys.home_of_stored(stored) is None  # no state yet: unknown
    table.send_changelog = lambda *a, **kw: None  # type: ignore[method-assign,assignment]
    TableStateStore(table).put(stored, b"x", keys.home("alice"))
    assert keys.home_of_stored(stored) == home_partition("alice", 4)


# --- the table writer -----------------------------------------------------------------


async def test_record_writes_each_users_newest_once_per_batch(worker: Worker) -> None:
    batch = [rec("u1", 100.0, ["p1"], "a"), rec("u2", 50.0, ["p2"]), rec("u1", 101.0, ["p3"], "b")]
    assert worker.latest.record(batch) == 2
    assert [key for _, key, _ in worker.changelog] == [b"u1", b"u2"]
    assert [p for p, _, _ in worker.changelog] == [home_partition("u1", 2), home_partition("u2", 2)]
    assert worker.latest.read("u1")["recommendation"] == orjson.loads(
        orjson.dumps(dataclasses.asdict(batch[2]))  # every field, items as objects
    )
    # An answer to an older (late) event never replaces a newer one.
    assert worker.latest.record([rec("u1", 99.0, ["p9"], "late")]) == 0
    assert worker.latest.read("u1")["recommendation"]["trigger_event_id"] == "b"


async def test_record_embeds_the_output_json_it_is_given(worker: Worker) -> None:
    """The row holds the bytes written for the output topic, not a second encoding."""
    batch = [rec("u1", 100.0, ["p1"], "a"), rec("u2", 50.0, ["p2"], "b")]
    written = [orjson.dumps({"marker": n}) for n in range(2)]  # told apart from to_json
    assert worker.latest.record(batch, written) == 2
    assert worker.latest.read("u1")["recommendation"] == {"marker": 0}
    assert worker.latest.read("u2")["recommendation"] == {"marker": 1}
    with pytest.raises(ValueError):
        worker.latest.record(batch, written[:1])


async def test_record_skips_users_of_partitions_owned_elsewhere(worker: Worker) -> None:
    asked: list[int] = []

    def owns(partition: int) -> bool:
        asked.append(partition)
        return False

    worker.latest._owns = owns
    users = [f"u{n}" for n in range(20)]
    assert worker.latest.record([rec(user, 1e9, ["p1"]) for user in users]) == 0
    assert worker.latest.skipped == 20
    assert worker.changelog == []
    assert sorted(asked) == sorted({home_partition(user, 2) for user in users})  # once each


async def test_rows_the_writer_wrote_are_not_parsed_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the table holds the bytes :meth:`record` wrote, the next write takes the row
    and its answer's event time from the writer's cache; the late-answer rule holds."""
    parsed: list[bytes | None] = []
    parse = LatestRecommendations._parse

    def counted(raw: bytes | None) -> dict[str, Any]:
        parsed.append(raw)
        return parse(raw)

    monkeypatch.setattr(LatestRecommendations, "_parse", staticmethod(counted))
    assert worker.latest.record([rec("u1", 100.0, ["p1"], "a"), rec("u2", 50.0, ["p2"])]) == 2
    assert parsed == [None, None]  # no rows yet
    assert worker.latest.record([rec("u1", 101.0, ["p3"], "b"), rec("u2", 49.0, ["p9"])]) == 1
    assert worker.latest.record([rec("u1", 100.5, ["p9"], "late")]) == 0
    assert parsed == [None, None]
    assert worker.latest.read("u1")["recommendation"]["trigger_event_id"] == "b"
    assert worker.latest.read("u2")["recommendation"]["event_ts"] == 50.0


async def test_a_kept_row_holds_no_oversized_json_buffer(worker: Worker) -> None:
    """The writer keeps each user's row for the next write.  orjson's output holds a
    buffer of ~4 KiB whatever its length, so the kept row takes an exact-size copy of
    the answer's JSON: the memory left behind per row stays well under that."""
    users = 2 * worker.settings.partitions * 100
    recs = [rec(f"u{n}", 100.0, ["p1", "p2"], f"e{n}") for n in range(users)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert worker.latest.record(recs) == users
        per_row = (tracemalloc.get_traced_memory()[0] - before) / users
    finally:
        tracemalloc.stop()
    assert per_row < 2_500


async def test_rows_changed_behind_the_writer_are_read_from_the_table(worker: Worker) -> None:
    """A review label written meanwhile is kept, and a newer answer the table got by
    another way (a changelog recovery) is not replaced by an older one."""
    worker.latest.record([rec("u1", 100.0, ["p1"], "a")])
    worker.latest.record_sentiments([Sentiment("r1", "u1", "p1", "positive", {}, "s-v1")])
    assert worker.latest.record([rec("u1", 101.0, ["p2"], "b")]) == 1
    row = worker.latest.read("u1")
    assert row["recommendation"]["trigger_event_id"] == "b"
    assert [review["event_id"] for review in row["reviews"]] == ["r1"]
    recovered = orjson.dumps({"recommendation": {"event_ts": 500.0}, "reviews": []})
    worker.latest.table.data[b"u1"] = recovered
    assert worker.latest.record([rec("u1", 102.0, ["p3"], "c")]) == 0
    assert worker.latest.table.data[b"u1"] is recovered


async def test_the_writers_cache_is_bounded_and_forgets_users(worker: Worker) -> None:
    worker.latest._cache_users = 2
    worker.latest.record([rec(f"u{n}", 100.0, ["p1"]) for n in range(5)])
    assert list(worker.latest._written) == ["u3", "u4"]  # the last written
    worker.latest.forget(["u4"])
    assert list(worker.latest._written) == ["u3"]  # no copy of a forgotten user's row


async def test_sentiment_labels_keep_the_last_ten(worker: Worker) -> None:
    labels = [
        Sentiment(f"r{i}", "u1", f"p{i}", "positive" if i % 2 else "negative", {}, "s-v1")
        for i in range(MAX_REVIEWS + 3)
    ]
    assert worker.latest.record_sentiments(labels) == 1
    reviews = worker.latest.read("u1")["reviews"]
    assert [r["event_id"] for r in reviews] == [f"r{i}" for i in range(3, MAX_REVIEWS + 3)]
    worker.latest.forget(["u1"])
    assert worker.latest.read("u1") == {"recommendation": None, "reviews": []}
    assert worker.changelog[-1] == (home_partition("u1", 2), b"u1", None)


# --- HTTP -----------------------------------------------------------------------------


async def test_known_user_gets_the_latest_recommendation_cut_to_k(worker: Worker) -> None:
    put_state(worker, "u1", [(1e9, 1, "p1")])
    worker.latest.record([rec("u1", 1e9, ["p1", "p2", "p3", "p4"])])
    path = "/v1/users/{user_id}/recommendations"
    status, headers, body = await call(f"{worker.url}/v1/users/u1/recommendations?k=2")
    assert status == 200
    jsonschema.validate(body, response_schema(path, "get", 200))
    assert [i["item_id"] for i in body["items"]] == ["p1", "p2"]
    assert body["fallback"] is False
    assert body["trigger_event_id"] == "e1"
    assert headers[SERVED_BY] == worker.url


async def test_unknown_user_gets_popular_items_as_fallback(worker: Worker) -> None:
    status, _, body = await call(f"{worker.url}/v1/users/nobody/recommendations")
    assert status == 200
    jsonschema.validate(body, response_schema("/v1/users/{user_id}/recommendations", "get", 200))
    assert body["fallback"] is True
    assert [i["item_id"] for i in body["items"]] == CATALOGUE[:5]  # top_k = 5
    assert body["model_version"] == "fake-v1"


async def test_expired_user_is_unknown_again(worker: Worker) -> None:
    # The user's state is gone (expired or forgotten): the stale answer is not served.
    worker.latest.record([rec("u1", 1e9, ["p7"])])
    _, _, body = await call(f"{worker.url}/v1/users/u1/recommendations")
    assert body["fallback"] is True


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/v1/users/bad%01id/recommendations", "control characters"),
        (f"/v1/users/{'x' * 300}/recommendations", "1..256"),
        ("/v1/users/u1/recommendations?k=0", "k must be"),
        ("/v1/users/bad%7Fid/session", "control characters"),
    ],
)
async def test_invalid_requests_get_400_with_a_reason(worker: Worker, path: str, why: str) -> None:
    status, _, body = await call(worker.url + path)
    assert status == 400
    assert why in body["error"]
    jsonschema.validate(body, response_schema("/v1/users/{user_id}/session", "get", 400))


async def test_recovering_worker_answers_503_with_retry_after(worker: Worker) -> None:
    put_state(worker, "u1", [(1e9, 1, "p1")])
    worker.latest.record([rec("u1", 1e9, ["p1"])])
    worker.toggle.ready = False
    for what in ("recommendations", "session"):
        status, headers, body = await call(f"{worker.url}/v1/users/u1/{what}")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert "recovering table state" in body["error"]
        jsonschema.validate(body, response_schema(f"/v1/users/{{user_id}}/{what}", "get", 503))


async def test_session_view_shows_the_open_session_and_review_labels(worker: Worker) -> None:
    put_state(worker, "u1", [(1e9, 1, "p1"), (1e9 + 5, 4, "red shoes"), (1e9 + 9, 2, "p2")])
    worker.latest.record_sentiments([Sentiment("r1", "u1", "p1", "positive", {}, "s-v1")])
    status, _, body = await call(f"{worker.url}/v1/users/u1/session")
    assert status == 200
    jsonschema.validate(body, response_schema("/v1/users/{user_id}/session", "get", 200))
    session = body["session"]
    assert session["counts"] == {"view": 1, "add_to_cart": 1, "purchase": 0, "search": 1}
    assert session["items"] == ["p1", "p2"]
    assert session["searches"] == ["red shoes"]
    assert [(e["action"], e["item_id"], e["query"]) for e in body["recent"]] == [
        ("view", "p1", None),
        ("search", None, "red shoes"),
        ("add_to_cart", "p2", None),
    ]
    assert body["reviews"][0]["label"] == "positive"
    _, _, empty = await call(f"{worker.url}/v1/users/stranger/session")
    assert empty["known"] is False and empty["session"] is None
    jsonschema.validate(empty, response_schema("/v1/users/{user_id}/session", "get", 200))


async def test_posted_events_are_validated_then_produced_keyed_by_user(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclass
    class Meta:
        partition: int
        offset: int

    async def send_and_wait(topic: str, key: bytes, value: bytes, *args: Any) -> Meta:
        worker.sent.append((topic, key, value))
        return Meta(1, len(worker.sent) - 1)

    monkeypatch.setattr(worker.app.producer, "send_and_wait", send_and_wait)
    click = {"event_id": "c1", "user_id": "u1", "item_id": "p1", "action": "view", "ts": 1.7e9}
    status, _, body = await call(
        f"{worker.url}/v1/events/clicks", "POST", json.dumps(click).encode()
    )
    assert status == 202
    jsonschema.validate(body, response_schema("/v1/events/clicks", "post", 202))
    assert worker.sent == [("clicks", b"u1", json.dumps(click, separators=(",", ":")).encode())]
    search = {"event_id": "s1", "user_id": "u2", "query": "tent", "ts": "2025-01-01T00:00:00Z"}
    status, _, body = await call(
        f"{worker.url}/v1/events/searches", "POST", json.dumps(search).encode()
    )
    assert status == 202
    assert body["event"]["ts"] == 1735689600.0
    assert worker.sent[-1][:2] == ("searches", b"u2")

    bad_requests = [
        ("clicks", b"not json", "bad_json"),
        ("clicks", json.dumps({**click, "action": "like"}).encode(), "unknown_action"),
        ("clicks", json.dumps({**click, "user_id": ""}).encode(), "bad_value"),
        ("searches", json.dumps({**search, "ts": 12}).encode(), "bad_timestamp"),
        ("searches", b"[]", "not_object"),
    ]
    for kind, raw, reason in bad_requests:
        status, _, body = await call(f"{worker.url}/v1/events/{kind}", "POST", raw)
        assert status == 400, raw
        assert body["error"].startswith(f"{reason}: ")
        jsonschema.validate(body, response_schema(f"/v1/events/{kind}", "post", 400))
    assert len(worker.sent) == 2


async def test_page_catalog_and_openapi_are_served(worker: Worker) -> None:
    for path in ("/", "/storefront/"):
        status, headers, body = await call(worker.url + path)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"storefront.js" in body
    status, headers, body = await call(f"{worker.url}/storefront/storefront.js")
    assert status == 200 and headers["Content-Type"].startswith("application/javascript")
    status, _, _ = await call(f"{worker.url}/storefront/secret.txt")
    assert status == 404
    status, _, body = await call(f"{worker.url}/v1/catalog")
    assert body == {"items": [{"item_id": "p1", "category": "camera", "price": 450.0}]}
    jsonschema.validate(body, response_schema("/v1/catalog", "get", 200))
    status, _, body = await call(f"{worker.url}/v1/openapi.json")
    assert status == 200 and body == OPENAPI


def test_openapi_document_is_valid_3_1_and_lists_every_endpoint() -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    OpenAPIV31SpecValidator(OPENAPI).validate()  # raises on any error
    assert set(OPENAPI["paths"]) == {
        "/v1/users/{user_id}/recommendations",
        "/v1/users/{user_id}/session",
        "/v1/events/clicks",
        "/v1/events/searches",
        "/v1/catalog",
        "/v1/openapi.json",
    }
    for schema in OPENAPI["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises, naming the error


async def test_request_for_a_user_owned_elsewhere_is_answered_by_the_owner() -> None:
    a, b = make_worker(free_port()), make_worker(free_port())
    assign([a, b], lambda p: p % 2)  # a owns partition 0, b owns partition 1
    for w in (a, b):
        await w.app.web.start()
    try:
        user = next(u for u in (f"user-{i}" for i in range(100)) if home_partition(u, 2) == 1)
        put_state(b, user, [(1e9, 1, "p1")])
        b.latest.record([rec(user, 1e9, ["p4", "p5"], "owner-answer")])
        status, headers, body = await call(f"{a.url}/v1/users/{user}/recommendations")
        assert status == 200, body
        assert body["trigger_event_id"] == "owner-answer"
        assert headers[ROUTED_FROM] == b.url and headers[SERVED_BY] == b.url
        # The owner's 503 comes back with its Retry-After.
        b.toggle.ready = False
        status, headers, _ = await call(f"{a.url}/v1/users/{user}/session")
        assert status == 503 and "Retry-After" in headers
        # A worker told it owns a partition it does not hold never answers from it.
        a.latest._owns = set().__contains__
        a.app.assignor.changelog_distribution = {  # type: ignore[attr-defined]
            a.url: {a.latest.table.changelog_topic.get_topic_name(): [0, 1]}
        }
        status, headers, body = await call(f"{a.url}/v1/users/{user}/recommendations")
        assert status == 503 and "owned elsewhere" in body["error"]
        assign([a, b], lambda p: p % 2)
        # An owner that does not answer gives 503, not an error page.
        await b.app.web.stop()
        status, headers, _ = await call(f"{a.url}/v1/users/{user}/recommendations")
        assert status == 503 and "Retry-After" in headers
    finally:
        for w in (a, b):
            await w.app.web.stop()
            await w.app.http_client.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_workers_storefront_rows_reach_the_changelog_with_the_user_state(
    guarantee: str,
) -> None:
    """At-least-once, the rows' changelog records wait for the user-state store's flush
    (before each offset commit); exactly-once they go out at once, as before."""
    from recstream.streams.app import build_app
    from recstream.streams.scoring import FakeSentimentScorer
    from recstream.streams.state_store import TABLE_NAME as USER_STATE
    from recstream.streams.storefront import TABLE_NAME as STOREFRONT_TABLE

    settings = Settings(bootstrap_servers="127.0.0.1:1", processing_guarantee=guarantee)
    app = build_app(settings, FakeRecsScorer(CATALOGUE), FakeSentimentScorer())
    latest = register_storefront(
        app,
        settings,
        app.tables[STOREFRONT_TABLE],  # type: ignore[arg-type]
        app.tables[USER_STATE],  # type: ignore[arg-type]
        popular_items(FakeRecsScorer(CATALOGUE)),
        lambda: (True, "ready"),
        owns=lambda partition: True,
    )
    state_store: TableStateStore = app.recstream_store  # type: ignore[attr-defined]
    held = guarantee == "at_least_once"
    assert latest.store.hold_changelog is held
    assert (latest.store in state_store._followers) is held
