"""Storefront endpoints on real workers and the embedded broker: routing, fallback, 400/503.

Two workers of one consumer group split a 2-partition topic set; a request for a
user sent to the worker that does not own the user's partition must come back
with the owner's answer.  The workers run as ``recstream worker``;
``test_browser.py`` starts its worker through the same helpers (``worker_processes``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from worker_processes import (
    Worker,
    http,
    start_worker,
    stop_processes,
    wait_for,
    worker_settings,
)

from recstream.streams.broker import BrokerTraits
from recstream.streams.pipeline import home_partition
from recstream.streams.settings import Settings
from recstream.streams.storefront import ROUTED_FROM, SERVED_BY, read_page_file
from recstream.streams.topic_admin import ALL_TOPICS, create_topics

OPENAPI: dict[str, Any] = json.loads(read_page_file("openapi.json"))


# --- helpers for the tests ------------------------------------------------------------------


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON schema the OpenAPI document gives one response, resolvable on its own."""
    content = OPENAPI["paths"][path][method]["responses"][str(status)]["content"]
    return {**content["application/json"]["schema"], "components": OPENAPI["components"]}


def conforms(path: str, method: str, status: int, body: Any) -> None:
    jsonschema.validate(body, response_schema(path, method, status))


RECS = "/v1/users/{user_id}/recommendations"
SESSION = "/v1/users/{user_id}/session"


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(
    kafka_bootstrap: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, list[Worker], list[tuple[int, dict[str, str], Any]]]]:
    """Two workers of one group, and every early answer one of them gave while starting."""
    settings = worker_settings(kafka_bootstrap)
    asyncio.run(create_topics(settings, ALL_TOPICS))
    folder = tmp_path_factory.mktemp("storefront")
    workers = [start_worker(settings, tiny_models, folder / "a")]
    early: list[tuple[int, dict[str, str], Any]] = []
    try:

        def first_ready() -> bool:
            answer = http(f"{workers[0].url}/v1/users/u1/recommendations")
            early.append(answer)
            return answer[0] == 200

        wait_for("the first worker", first_ready, workers)
        workers.append(start_worker(settings, tiny_models, folder / "b"))

        def split() -> bool:
            # Each worker owns one partition: each answers one user itself and
            # forwards the other's.
            users = [owner_probe(0), owner_probe(1)]
            served = [
                [http(f"{w.url}/v1/users/{u}/recommendations")[1] for u in users] for w in workers
            ]
            owners = {h.get(SERVED_BY) for row in served for h in row}
            local = [sum(ROUTED_FROM not in h and SERVED_BY in h for h in row) for row in served]
            return len(owners) == 2 and local == [1, 1]

        wait_for("both workers to own one partition", split, workers)
        yield settings, workers, early
    finally:
        stop_processes(*(w.process for w in workers), timeout=20)


def owner_probe(partition: int) -> str:
    """A user id whose home is ``partition`` of 2."""
    return next(f"probe-{i}" for i in range(1000) if home_partition(f"probe-{i}", 2) == partition)


def test_a_starting_worker_answers_503_with_retry_after_never_stale(
    two_workers: tuple[Settings, list[Worker], list[tuple[int, dict[str, str], Any]]],
) -> None:
    _, _, early = two_workers
    not_ready = [answer for answer in early if answer[0] != 200]
    assert not_ready, "the worker was never seen recovering (answered 200 at once)"
    for status, headers, body in not_ready:
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert body["error"].startswith("not ready: ")
        conforms(RECS, "get", 503, body)


def test_any_worker_answers_for_any_user_with_the_owners_answer(
    two_workers: tuple[Settings, list[Worker], list[tuple[int, dict[str, str], Any]]],
) -> None:
    _, workers, _ = two_workers
    user = f"shopper-{uuid.uuid4().hex[:6]}"
    ts = time.time()
    events: list[dict[str, Any]] = [
        {"event_id": f"{user}-1", "user_id": user, "item_id": "item-3", "action": "view", "ts": ts},
        {"event_id": f"{user}-2", "user_id": user, "item_id": "item-5", "action": "view"},
    ]
    events[1]["ts"] = ts + 1
    for event in events:
        status, _, body = http(f"{workers[0].url}/v1/events/clicks", event)
        assert status == 202, body
        conforms("/v1/events/clicks", "post", 202, body)
        assert body["partition"] == home_partition(user, 2)
    search = {"event_id": f"{user}-3", "user_id": user, "query": "red tent", "ts": ts + 2}
    status, _, body = http(f"{workers[1].url}/v1/events/searches", search)
    assert status == 202, body
    conforms("/v1/events/searches", "post", 202, body)

    answers: dict[str, tuple[int, dict[str, str], Any]] = {}

    def both_answer_the_search() -> bool:
        for w in workers:
            answers[w.url] = http(f"{w.url}/v1/users/{user}/recommendations?k=3")
        return all(a[2].get("trigger_event_id") == f"{user}-3" for a in answers.values())

    wait_for("the recommendation after the search", both_answer_the_search, workers, 60)
    (status_a, headers_a, body_a), (status_b, headers_b, body_b) = answers.values()
    assert status_a == status_b == 200
    assert body_a == body_b
    assert body_a["fallback"] is False and len(body_a["items"]) == 3
    assert body_a["user_id"] == user and body_a["model_version"]
    conforms(RECS, "get", 200, body_a)
    # Exactly one worker answered from its own table; the other forwarded to it.
    owner = headers_a[SERVED_BY]
    assert headers_b[SERVED_BY] == owner
    assert sorted(ROUTED_FROM in h for h in (headers_a, headers_b)) == [False, True]
    routed = headers_a if ROUTED_FROM in headers_a else headers_b
    assert routed[ROUTED_FROM] == owner

    # Clicks and searches are separate topics and agents: the search can be answered
    # before the clicks agent has processed the second click.  Wait for both.
    sessions: dict[str, tuple[int, Any]] = {}

    def both_show_every_event() -> bool:
        for w in workers:
            status, _, session = http(f"{w.url}/v1/users/{user}/session")
            sessions[w.url] = (status, session)
        return all(
            status == 200 and session["session"]["counts"].get("view") == 2
            for status, session in sessions.values()
        )

    wait_for("the session with both clicks on both workers", both_show_every_event, workers, 30)
    for _, session in sessions.values():
        conforms(SESSION, "get", 200, session)
        assert session["session"]["items"] == ["item-3", "item-5"]
        assert session["session"]["searches"] == ["red tent"]


def test_unknown_users_get_popular_items_and_bad_requests_get_400(
    two_workers: tuple[Settings, list[Worker], list[tuple[int, dict[str, str], Any]]],
) -> None:
    _, workers, _ = two_workers
    for w in workers:
        for user in (owner_probe(0), owner_probe(1)):
            status, _, body = http(f"{w.url}/v1/users/{user}/recommendations?k=4")
            assert status == 200
            conforms(RECS, "get", 200, body)
            assert body["fallback"] is True
            assert [i["item_id"] for i in body["items"]] == [f"item-{i}" for i in range(4)]
        for path in ("/v1/users/a%00b/session", "/v1/users/u/recommendations?k=500"):
            status, _, body = http(w.url + path)
            assert status == 400
            conforms(SESSION, "get", 400, body)
        bad = {"event_id": "x", "user_id": "u", "item_id": "i", "action": "like", "ts": 1.7e9}
        status, _, body = http(f"{w.url}/v1/events/clicks", bad)
        assert status == 400 and body["error"].startswith("unknown_action: ")
        status, _, body = http(f"{w.url}/v1/openapi.json")
        assert status == 200 and body == OPENAPI


def test_a_worker_taking_over_answers_the_latest_recommendation_from_the_changelog(
    kafka_bootstrap: str,
    tiny_models: Path,
    tmp_path: Path,
    broker_traits: BrokerTraits | None,
) -> None:
    """The rows' changelog records wait for the flush before the offset commit
    (at-least-once): after the worker that wrote them stops, one with no local state
    recovers them and answers the same latest recommendation."""
    if broker_traits is not None and not broker_traits.exact_end_offsets:
        pytest.skip("this broker's end offsets stop Faust's table recovery early")
    settings = worker_settings(kafka_bootstrap)
    asyncio.run(create_topics(settings, ALL_TOPICS))
    user = f"takeover-{uuid.uuid4().hex[:6]}"
    recs_url = f"/v1/users/{user}/recommendations"
    last = ""

    def answered(worker: Worker) -> bool:
        status, _, body = http(worker.url + recs_url)
        return status == 200 and body.get("trigger_event_id") == last

    first = start_worker(settings, tiny_models, tmp_path / "a")
    try:
        wait_for("the first worker", lambda: http(first.url + recs_url)[0] == 200, [first])
        for n, item in enumerate(("item-3", "item-5", "item-7")):
            last = f"{user}-{n}"
            click = {"event_id": last, "user_id": user, "item_id": item, "action": "view",
                     "ts": time.time()}  # fmt: skip
            assert http(f"{first.url}/v1/events/clicks", click)[0] == 202
        wait_for("the first worker's answer to the last click", lambda: answered(first), [first])
        before = http(first.url + recs_url)[2]
    finally:
        stop_processes(first.process, timeout=20)
    second = start_worker(settings, tiny_models, tmp_path / "b")
    try:
        wait_for("the second worker", lambda: http(second.url + recs_url)[0] == 200, [second])
        status, _, after = http(second.url + recs_url)
        assert status == 200 and not after["fallback"]
        assert after["trigger_event_id"] == last and after["items"] == before["items"]
    finally:
        stop_processes(second.process, timeout=20)
