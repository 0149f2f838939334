"""The batch core: decode, sessions, scoring requests, outputs, dead letters, sweeps."""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from recstream.streams import sessions
from recstream.streams.pipeline import (
    HEAP_SLACK,
    DictStore,
    Pipeline,
    RawRecord,
    StateStore,
    UserIds,
    home_partition,
    raw_records,
    repartition_payload,
)
from recstream.streams.records import ScoredItem, to_json
from recstream.streams.scoring import RecsResult, SentimentResult, Token
from recstream.streams.settings import Settings

NOW = 1_800_000_000.0
T0 = NOW - 3600.0


class EchoRecs:
    """Scores items by position in the history; records every call."""

    model_version = "recs-test-1"

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[list[list[Token]], list[set[str]], int]] = []
        self.fail_times = fail_times

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        self.calls.append(([list(h) for h in histories], [set(e) for e in exclude], k))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("model exploded")
        out = []
        for history, banned in zip(histories, exclude, strict=True):
            seen = [t.item_id for t in history if t.item_id and t.item_id not in banned]
            items = tuple(ScoredItem(i, float(n)) for n, i in enumerate(reversed(seen[-k:])))
            out.append(RecsResult(items, fallback=not items))
        return out


class LengthSentiment:
    model_version = "sent-test-1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]:
        self.calls.append(list(texts))
        return [
            SentimentResult("positive" if "good" in t else "negative", {"positive": 0.5})
            for t in texts
        ]


def make(
    fail_times: int = 0, **overrides: object
) -> tuple[Pipeline, EchoRecs, LengthSentiment, DictStore]:
    values: dict[str, object] = {
        "session_gap": 100.0, "allowed_lateness": 30.0, "top_k": 3, "history_length": 5,
    }  # fmt: skip
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    recs, sentiment = EchoRecs(fail_times), LengthSentiment()
    return Pipeline(settings, recs, sentiment, clock=lambda: NOW), recs, sentiment, DictStore()


def rec(kind: str, obj: object, offset: int = 0, partition: int = 0) -> RawRecord:
    value = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawRecord(kind, f"p.{kind}", partition, offset, value)


def click(eid: str, ts: float, item: str, action: str = "view", user: str = "u1") -> RawRecord:
    obj = {"event_id": eid, "user_id": user, "item_id": item, "action": action, "ts": T0 + ts}
    return rec("clicks", obj)


def test_records_made_from_columns_are_the_records_the_constructor_makes() -> None:
    made = raw_records("clicks", "shop.clicks", 3, [7, 9], iter([b"{}", None]), iter([b"u1", None]))
    assert made == [
        RawRecord("clicks", "shop.clicks", 3, 7, b"{}", b"u1"),
        RawRecord("clicks", "shop.clicks", 3, 9, None, None),
    ]
    assert all(type(record) is RawRecord for record in made)
    assert made[1].offset == 9 and made[0].key == b"u1"


def test_each_click_and_search_gets_one_recommendation_and_reviews_one_sentiment() -> None:
    pipeline, recs, sentiment, store = make()
    out = pipeline.run(
        [
            click("c1", 0, "a"),
            rec("searches", {"event_id": "s1", "user_id": "u1", "query": "red", "ts": T0 + 1}),
            click("c2", 2, "b", user="u2"),
            rec(
                "reviews",
                {"event_id": "r1", "user_id": "u1", "item_id": "a", "text": "good", "ts": T0 + 3},
            ),
        ],
        store,
    )
    assert [r.trigger_event_id for r in out.recommendations] == ["c1", "s1", "c2"]
    first = out.recommendations[0]
    assert first.user_id == "u1" and first.session_id == f"u1:{round(T0 * 1000)}"
    assert first.event_ts == T0 and first.emitted_at == NOW
    assert first.model_version == "recs-test-1"
    assert first.items == ()  # "a", the one item known, is the one just clicked
    assert out.recommendations[1].items == (ScoredItem("a", 0.0),)
    assert len(recs.calls) == 1  # one scorer call per batch
    histories = recs.calls[0][0]
    assert histories[1] == [Token("a", "view"), Token(None, "search", "red")]
    assert [s.event_id for s in out.sentiments] == ["r1"]
    assert out.sentiments[0].label == "positive" and sentiment.calls == [["good"]]
    assert out.dead_letters == [] and out.sessions == []
    assert set(store.data) == {"u1", "u2"}


def test_history_is_the_one_after_each_event_and_purchases_are_excluded() -> None:
    pipeline, recs, _, store = make(exclude_trigger_item=False)
    pipeline.run([click("c1", 0, "a"), click("c2", 1, "a", "purchase"), click("c3", 2, "b")], store)
    histories, exclude, k = recs.calls[0]
    assert [len(h) for h in histories] == [1, 2, 3]
    assert exclude == [set(), {"a"}, {"a"}]
    assert k == 3


def test_the_clicked_item_is_left_out_of_its_own_recommendation_by_default() -> None:
    pipeline, recs, _, store = make()
    search = rec("searches", {"event_id": "s1", "user_id": "u1", "query": "red", "ts": T0 + 3})
    out = pipeline.run(
        [click("c1", 0, "a"), click("c2", 1, "a", "purchase"), click("c3", 2, "b"), search],
        store,
    )
    _, exclude, _ = recs.calls[0]
    assert exclude == [{"a"}, {"a"}, {"a", "b"}, {"a"}]  # the search excludes purchases only
    answers = {r.trigger_event_id: [i.item_id for i in r.items] for r in out.recommendations}
    assert answers["c3"] == [] and answers["s1"] == ["b"]  # EchoRecs echoes the history


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_object"),
        (orjson.dumps({"event_id": "x", "user_id": "u", "action": "view", "ts": T0}),
         "missing_field"),
        (orjson.dumps({"event_id": "x", "user_id": "u", "item_id": 1.5, "action": "view",
                       "ts": T0}), "wrong_type"),
        (orjson.dumps({"event_id": "x", "user_id": "u", "item_id": "a", "action": "like",
                       "ts": T0}), "unknown_action"),
        (orjson.dumps({"event_id": "x", "user_id": "u", "item_id": "a", "action": "view",
                       "ts": "yesterday"}), "bad_timestamp"),
        (b"\xff\xfe", "not_utf8"),
    ],
)  # fmt: skip
def test_invalid_records_are_dead_lettered_with_reason(raw: bytes, reason: str) -> None:
    pipeline, _, _, store = make()
    bad = rec("clicks", raw, offset=7, partition=1)
    out = pipeline.run([click("c1", 0, "a"), bad, click("c2", 1, "b")], store)
    assert [r.trigger_event_id for r in out.recommendations] == ["c1", "c2"]
    assert len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert dead.error.startswith(reason), dead.error
    assert (dead.source_topic, dead.partition, dead.offset) == ("p.clicks", 1, 7)
    assert base64.b64decode(dead.payload) == raw


def test_late_event_is_dead_lettered_and_duplicate_is_silent() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 100, "a")], store)
    out = pipeline.run([click("c0", 10, "z"), click("c1", 100, "a"), click("c2", 101, "b")], store)
    assert [r.trigger_event_id for r in out.recommendations] == ["c2"]
    assert [d.error.split(":")[0] for d in out.dead_letters] == ["late"]


def test_future_skew_setting_is_applied() -> None:
    pipeline, _, _, store = make(max_future_skew=60.0)
    out = pipeline.run([click("c1", 3600 + 120, "a"), click("c2", 3600 + 30, "b")], store)
    assert [d.error.split(":")[0] for d in out.dead_letters] == ["bad_timestamp"]
    assert [r.trigger_event_id for r in out.recommendations] == ["c2"]


def test_scorer_failure_is_retried_once() -> None:
    pipeline, recs, _, store = make(fail_times=1)
    out = pipeline.run([click("c1", 0, "a")], store)
    assert len(recs.calls) == 2 and [r.trigger_event_id for r in out.recommendations] == ["c1"]


def test_scorer_failing_twice_dead_letters_the_triggers_and_keeps_state() -> None:
    pipeline, _, _, store = make(fail_times=2)
    out = pipeline.run([click("c1", 0, "a"), click("c2", 1, "b")], store)
    assert out.recommendations == []
    assert [d.error for d in out.dead_letters] == [
        "processing_error: recommendation scoring failed twice: RuntimeError: model exploded"
    ] * 2
    out = pipeline.run([click("c3", 2, "c")], store)
    # a, b and c are all in the history (state kept); c, the clicked item, is left out.
    assert [[i.item_id for i in r.items] for r in out.recommendations] == [["b", "a"]]


def test_sessions_close_on_gap_and_on_partition_watermark() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a"), click("c2", 10, "b")], store)
    # Another user's events move the partition's event time past gap + lateness.
    out = pipeline.run([click("x1", 200, "q", user="u2")], store)
    assert [(s.user_id, s.items) for s in out.sessions] == [("u1", ("a", "b"))]
    out = pipeline.run([click("x2", 400, "q", user="u2")], store)
    assert [(s.user_id, s.items) for s in out.sessions] == [("u2", ("q",))]  # only once each


def test_forget_purges_state() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a")], store)
    assert "u1" in store.data
    out = pipeline.run([rec("privacy", {"event_id": "f1", "user_id": "u1", "ts": T0 + 1})], store)
    assert "u1" not in store.data and out.sessions == []
    out = pipeline.run([click("c9", 2, "b")], store)
    assert out.recommendations[0].session_id == f"u1:{round((T0 + 2) * 1000)}"


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    decoded: list[bytes] = []
    from_bytes = sessions.UserState.from_bytes

    def counting(raw: bytes) -> sessions.UserState:
        decoded.append(raw)
        return from_bytes(raw)

    monkeypatch.setattr(sessions.UserState, "from_bytes", counting)
    return decoded


def test_a_users_next_batch_reuses_the_state_it_left_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = _count_decodes(monkeypatch)
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a")], store)
    pipeline.run([click("c2", 1, "b"), click("x1", 1, "z", user="u2")], store)
    assert decoded == []  # u1's state came from the cache; u2 had none
    # The store holds something else (e.g. recovered from the changelog): decoded again.
    other, _, _, other_store = make()
    other.run([click("c1", 0, "a"), click("c5", 1, "e")], other_store)
    store.data["u1"] = other_store.data["u1"]
    out = pipeline.run([click("c6", 2, "f")], store)
    assert decoded == [other_store.data["u1"]]
    assert [[i.item_id for i in r.items] for r in out.recommendations] == [["e", "a"]]


def test_cached_and_uncached_pipelines_give_the_same_outputs_and_state() -> None:
    events = [
        click(f"c{n}", n * 7.0 % 400, f"i{n % 6}", "purchase" if n % 5 == 0 else "view",
              user=f"u{n % 3}")
        for n in range(60)
    ]  # fmt: skip
    results = []
    for cache_users in (0, 2, 100):
        pipeline, _, _, store = make(state_cache_users=cache_users)
        outs = [pipeline.run(events[at : at + 7], store) for at in range(0, len(events), 7)]
        assert len(pipeline._decoded) <= cache_users
        results.append(([to_json(r) for o in outs for r in o.recommendations], store.data))
    assert results[0] == results[1] == results[2]


def test_the_cache_keeps_the_bytes_object_the_store_holds() -> None:
    """A store that keeps a copy (as the Faust table does): the decoded-state cache
    holds that copy, not a second one, so the next batch finds it current by identity."""

    class CopyingStore(DictStore):
        def put(self, key: str, value: bytes, partition: int) -> bytes:
            return super().put(key, bytes(memoryview(value)), partition)

    pipeline, _, _, _ = make()
    store = CopyingStore()
    pipeline.run([click("c1", 0, "a")], store)
    assert pipeline._decoded["u1"][0] is store.data["u1"]
    out = pipeline.run([click("c2", 1, "b")], store)
    assert [[i.item_id for i in r.items] for r in out.recommendations] == [["a"]]
    assert pipeline._decoded["u1"][0] is store.data["u1"]


def test_a_failed_batch_leaves_no_changed_state_in_the_cache() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a")], store)

    class FailingStore(DictStore):
        def put(self, key: str, value: bytes, partition: int) -> bytes:
            raise RuntimeError("disk full")

    failing = FailingStore()
    failing.data = store.data
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.run([click("c2", 1, "b")], failing)
    # c2 never reached the stored state: it is applied again, not a duplicate, and its
    # item was never in the history.
    out = pipeline.run([click("c2", 1, "b")], store)
    assert [[i.item_id for i in r.items] for r in out.recommendations] == [["a"]]


def test_a_forgotten_users_decoded_state_is_dropped() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a")], store)
    assert "u1" in pipeline._decoded
    pipeline.run([rec("privacy", {"event_id": "f1", "user_id": "u1", "ts": T0 + 1})], store)
    assert "u1" not in pipeline._decoded


def test_a_revoked_partitions_decoded_states_are_dropped() -> None:
    pipeline, _, _, store = make()
    pipeline.run([click("c1", 0, "a"), rec("clicks", {
        "event_id": "x1", "user_id": "u2", "item_id": "b", "action": "view", "ts": T0,
    }, partition=1)], store)  # fmt: skip
    assert set(pipeline._decoded) == {"u1", "u2"}
    pipeline.forget_partition(1)
    assert set(pipeline._decoded) == {"u1"}


def test_salted_user_ids_are_pseudonymised_everywhere() -> None:
    pipeline, _, _, store = make(user_id_salt=SecretStr("pepper"))
    out = pipeline.run(
        [click("c1", 0, "a", user="alice"),
         rec("reviews", {"event_id": "r", "user_id": "alice", "item_id": "a", "text": "good",
                         "ts": T0})],
        store,
    )  # fmt: skip
    pseudo = UserIds("pepper")("alice")
    assert len(pseudo) == 32 and pseudo != UserIds("salt")("alice")
    assert out.recommendations[0].user_id == pseudo
    assert out.recommendations[0].session_id.startswith(pseudo + ":")
    assert out.sentiments[0].user_id == pseudo
    assert list(store.data) == [pseudo]


def test_repartitioned_records_keep_their_pseudonym_and_home() -> None:
    settings = Settings(user_id_salt=SecretStr("pepper"))
    pipeline = Pipeline(settings, EchoRecs(), LengthSentiment(), partitions=4, clock=lambda: NOW)
    batch, _ = pipeline.decode([click("c1", 0, "a", user="alice")])
    assert batch[0].home == home_partition("alice", 4)
    payload = repartition_payload(batch[0].event, "clicks")
    again, dead = pipeline.decode(
        [RawRecord("", "p.repart", batch[0].home or 0, 3, payload)], repartitioned=True
    )
    assert dead == []
    assert again[0].event == batch[0].event and again[0].home == batch[0].home


@pytest.mark.parametrize("salt", [None, "pepper"])
def test_a_batch_of_clicks_decodes_at_once_as_one_by_one(salt: str | None) -> None:
    """All-clicks batches take the column path; one odd record sends the batch the
    record-by-record way: the same events, homes and sources either way."""
    settings = Settings(user_id_salt=SecretStr(salt) if salt else None)
    pipeline = Pipeline(settings, EchoRecs(), LengthSentiment(), partitions=4, clock=lambda: NOW)
    clicks = [
        rec("clicks", {"event_id": f"e{n}", "user_id": f"user{n % 5}", "item_id": f"i{n}",
                       "action": "view", "ts": T0 + n, "price": 2.5, "category": "c"},
            offset=n, partition=n % 4)
        for n in range(12)
    ]  # fmt: skip
    assert pipeline._decode_clicks(clicks, NOW) is not None  # the column path was taken
    fast, none = pipeline.decode(clicks)
    odd = rec("clicks", b"{not json", offset=99)
    slow, dead = pipeline.decode([*clicks[:6], odd, *clicks[6:]])
    assert none == [] and [letter.offset for letter in dead] == [99]
    assert fast == slow and len(fast) == 12
    assert {item.home for item in fast} == {home_partition(f"user{n}", 4) for n in range(5)}
    users = {item.event.user_id for item in fast}
    assert users == {UserIds(salt)(f"user{n}") for n in range(5)}
    mixed = [*clicks, rec("searches", {"event_id": "s", "user_id": "u", "query": "q", "ts": T0})]
    assert pipeline._decode_clicks(mixed, NOW) is None


def test_home_partition_matches_kafka_default_partitioner() -> None:
    # Reference values of the Java client's murmur2 partitioner for these keys.
    from aiokafka.partitioner import DefaultPartitioner

    for key in ["u1", "alice", "user-12345", "用户"]:
        expected = DefaultPartitioner()(key.encode(), list(range(6)), list(range(6)))
        assert home_partition(key, 6) == expected


def test_sweep_at_a_watermark_equal_to_a_deadline_terminates() -> None:
    # u1's session ends at 10; with lateness 0 its deadline is 10 + gap = 110, which
    # u2's event sets as the watermark exactly: nothing closes yet, and no loop forever.
    pipeline, _, _, store = make(allowed_lateness=0.0)
    pipeline.run([click("c1", 0, "a"), click("c2", 10, "b")], store)
    out = pipeline.run([click("x1", 110, "q", user="u2")], store)
    assert out.sessions == []
    out = pipeline.run([click("x2", 110.5, "r", user="u2")], store)
    assert [s.user_id for s in out.sessions] == ["u1"]


# -- property test: malformed records among valid ones (also used through a real
# -- worker by tests/integration/test_bad_input_worker.py) ---------------------------

#: (input kind, raw bytes, expected dead-letter reason or None for a valid record).
Labelled = tuple[str, bytes, str | None]
#: Required fields of each input kind, in the order a valid object lists them.
REQUIRED = {
    "clicks": ("event_id", "user_id", "item_id", "action", "ts"),
    "searches": ("event_id", "user_id", "query", "ts"),
    "reviews": ("event_id", "user_id", "item_id", "text", "ts"),
    "privacy": ("event_id", "user_id", "ts"),
}
ID_FIELDS = ("event_id", "user_id", "item_id")
MAX_EVENT_BYTES = 4096
INTS = st.integers(-(2**53), 2**53)
_WRONG_TYPES = st.one_of(
    st.lists(INTS, max_size=3), st.dictionaries(st.text(max_size=3), INTS,
    max_size=2), st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
    st.booleans(),
)  # fmt: skip


def valid_object(kind: str, eid: str, user: str, ts: float, draw: st.DrawFn) -> dict[str, object]:
    """A valid input object of ``kind``, with any text hypothesis likes in free-text fields."""
    obj: dict[str, object] = {"event_id": eid, "user_id": user, "ts": ts}
    if kind == "clicks":
        obj |= {"item_id": f"item-{draw(st.integers(0, 9))}",
                "action": draw(st.sampled_from(("view", "add_to_cart", "purchase")))}  # fmt: skip
    elif kind == "searches":
        obj["query"] = draw(st.text(max_size=40))
    elif kind == "reviews":
        obj |= {"item_id": "item-1", "text": draw(st.text(max_size=60))}
    return obj


@st.composite
def labelled_record(draw: st.DrawFn, n: int, now: float) -> Labelled:
    """Record ``n`` of a batch: valid (about a third) or broken in exactly one way."""
    kind = draw(st.sampled_from(tuple(REQUIRED)))
    eid, user, ts = f"e{n}", f"user{n}", now - 600 + n * 0.01
    obj = valid_object(kind, eid, user, ts, draw)
    defect = draw(st.sampled_from((
        "valid", "valid", "valid_extra", "bad_json", "nan", "deep", "not_utf8", "not_object",
        "missing", "wrong_type", "ts_type", "empty_id", "long_id", "control_id", "old_ts",
        "future_ts", "naive_ts", "unknown_action", "too_large", "long_text",
    )))  # fmt: skip
    raw = orjson.dumps(obj)
    reason: str | None = None
    if defect == "valid_extra":  # unknown fields, however nested, are ignored
        extra = draw(
            st.recursive(
                INTS | st.text(max_size=5),
                lambda inner: st.lists(inner, max_size=3),
                max_leaves=8,
            )
        )
        raw = orjson.dumps(obj | {"x_extra": extra, "nested": [[[[{"a": [1]}]]]]})
    elif defect == "bad_json":
        raw, reason = b"{not json " + draw(st.text(max_size=20)).encode(), "bad_json"
    elif defect == "nan":
        literal = draw(st.sampled_from((b"NaN", b"Infinity", b"-Infinity")))
        raw, reason = raw.replace(orjson.dumps(ts), literal), "bad_json"
    elif defect == "deep":
        raw, reason = b'{"event_id": ' + b"[" * 1100 + b"]" * 1100 + b"}", "bad_json"
    elif defect == "not_utf8":
        bad = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82")))
        raw, reason = raw.replace(user.encode(), user.encode() + bad), "not_utf8"
    elif defect == "not_object":
        raw = orjson.dumps(draw(st.one_of(st.lists(INTS, max_size=3), INTS,
                                          st.text(max_size=5), st.none())))  # fmt: skip
        reason = "not_object"
    elif defect == "missing":
        obj.pop(draw(st.sampled_from(REQUIRED[kind])))
        raw, reason = orjson.dumps(obj), "missing_field"
    elif defect == "wrong_type":
        field = draw(st.sampled_from([f for f in REQUIRED[kind] if f != "ts"]))
        obj[field] = draw(_WRONG_TYPES)
        raw, reason = orjson.dumps(obj), "wrong_type"
    elif defect == "ts_type":
        obj["ts"] = draw(st.one_of(st.booleans(), st.lists(INTS, max_size=2),
                                   st.just("yesterday")))  # fmt: skip
        raw, reason = orjson.dumps(obj), "bad_timestamp"
    elif defect in ("empty_id", "long_id", "control_id"):
        field = draw(st.sampled_from([f for f in REQUIRED[kind] if f in ID_FIELDS]))
        control = draw(st.sampled_from(("\n", "\x00", "\x1b", "\u2028")))
        obj[field] = {"empty_id": "", "long_id": "x" * 300, "control_id": f"a{control}b"}[defect]
        raw, reason = orjson.dumps(obj), "bad_value"
    elif defect in ("old_ts", "future_ts", "naive_ts"):
        obj["ts"] = {"old_ts": draw(st.floats(-1e9, 9e8)), "future_ts": now + 3 * 86_400,
                     "naive_ts": "2026-01-01T00:00:00"}[defect]  # fmt: skip
        raw, reason = orjson.dumps(obj), "bad_timestamp"
    elif defect == "unknown_action" and kind == "clicks":
        obj["action"] = draw(st.text(max_size=12).filter(
            lambda a: a not in ("view", "add_to_cart", "purchase")))  # fmt: skip
        raw, reason = orjson.dumps(obj), "unknown_action"
    elif defect == "too_large":
        padding = "p" * draw(st.integers(MAX_EVENT_BYTES, 3 * MAX_EVENT_BYTES))
        raw, reason = orjson.dumps(obj | {"padding": padding}), "too_large"
    elif defect == "long_text" and kind == "searches":
        obj["query"] = "q" * 1025
        raw, reason = orjson.dumps(obj), "bad_value"
    return kind, raw, reason


@st.composite
def labelled_batch(draw: st.DrawFn, size: int, now: float) -> list[Labelled]:
    """``size`` records, mostly malformed, with valid ones between them."""
    return [draw(labelled_record(n, now)) for n in range(size)]


def check_dead_letters(
    records: Sequence[Labelled], dead: Sequence[dict[str, object]], offsets: Sequence[int]
) -> None:
    """Every bad record (at ``offsets[i]`` for record i) has one dead letter with its reason."""
    by_offset = {(d["source_topic"], d["offset"]): d for d in dead}
    assert len(by_offset) == len(dead)
    for (kind, raw, reason), offset in zip(records, offsets, strict=True):
        letter = by_offset.get((kind, offset))
        if reason is None:
            assert letter is None, (raw[:200], letter)
        else:
            assert letter is not None, (raw[:200], reason)
            assert str(letter["error"]).split(":", 1)[0] == reason, (raw[:200], letter["error"])
            assert base64.b64decode(str(letter["payload"])) == raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=labelled_batch(30, NOW))
def test_malformed_records_are_dead_lettered_with_their_reason_and_valid_ones_processed(
    batch: list[Labelled],
) -> None:
    pipeline, _, _, store = make(max_event_bytes=MAX_EVENT_BYTES)
    raws = [RawRecord(kind, kind, 0, n, raw) for n, (kind, raw, _) in enumerate(batch)]
    out = pipeline.run(raws, store)
    dead = [orjson.loads(to_json(d)) for d in out.dead_letters]
    check_dead_letters(batch, dead, list(range(len(batch))))
    valid = {orjson.loads(raw)["event_id"]: kind for kind, raw, reason in batch if reason is None}
    assert sorted(r.trigger_event_id for r in out.recommendations) == sorted(
        e for e, k in valid.items() if k in ("clicks", "searches")
    )
    assert sorted(s.event_id for s in out.sentiments) == sorted(
        e for e, k in valid.items() if k == "reviews"
    )


def test_a_user_whose_deadline_only_moves_later_keeps_one_heap_entry() -> None:
    """Events in order move a busy user's deadline later at every batch: its first heap
    entry stays, and is pushed again at its new deadline when it comes up."""
    pipeline, _, _, store = make(session_max_events=5_000)  # no full session: never earlier
    views = 0
    for n in range(3_000):  # one user, one event per batch: 3,000 deadline moves
        out = pipeline.run([click(f"e{n}", n * 0.01, f"i{n % 7}")], store)
        views += sum(s.counts["view"] for s in out.sessions)
    assert len(pipeline._heaps[0]) == 1  # internal: the heap's size is what this is about
    pipeline.watermarks[0] = NOW + 10_000
    views += sum(s.counts["view"] for s in pipeline.sweep(0, store))
    assert views == 3_000 and store.get("u1") is not None  # closed; the history stays


def test_stale_heap_entries_are_compacted_and_the_live_deadline_kept() -> None:
    """A user forgotten and seen again leaves its old heap entry behind each time; the
    heap is rebuilt from the live deadlines instead of growing with the events."""
    pipeline, _, _, store = make()
    for n in range(3_000):
        forget = rec("privacy", {"event_id": f"f{n}", "user_id": "u1", "ts": T0 + n * 0.01})
        pipeline.run([forget, click(f"e{n}", n * 0.01 + 0.005, "a")], store)
    assert len(pipeline._heaps[0]) <= 2 * len(pipeline._deadlines[0]) + HEAP_SLACK
    pipeline.watermarks[0] = NOW + 10_000
    assert [s.counts["view"] for s in pipeline.sweep(0, store)] == [1]


def test_a_deadline_that_moves_earlier_is_swept_at_the_earlier_time() -> None:
    """A full session followed by another closes at its end plus the lateness, earlier
    than the gap would close it: the earlier deadline gets its own heap entry."""
    pipeline, _, _, store = make(session_max_events=2)
    pipeline.run([click("c1", 0, "a"), click("c2", 1, "b")], store)  # full, deadline 131
    pipeline.run([click("c3", 2, "c")], store)  # full and followed: closes at 1 + 30
    out = pipeline.run([click("x1", 40, "q", user="u2")], store)
    assert [(s.user_id, s.items) for s in out.sessions] == [("u1", ("a", "b"))]


class SweepEveryone(Pipeline):
    """The sweep's definition: every stored user swept at the partition's watermark."""

    def sweep(self, partition: int, store: StateStore) -> list[sessions.SessionSummary]:
        assert isinstance(store, DictStore)
        watermark = self.watermarks.get(partition)
        if watermark is None:
            return []
        closed: list[sessions.SessionSummary] = []
        for user, raw in sorted(store.data.items()):
            state, done = sessions.sweep(
                sessions.UserState.from_bytes(raw), user, watermark, self.rules
            )
            closed += done
            if state is None:
                store.delete(user, partition)
            elif done:
                store.put(user, state.to_bytes(), partition)
        return closed


SWEEP_RULES: dict[str, object] = {
    "session_gap": 100.0, "allowed_lateness": 30.0, "top_k": 3, "history_length": 5,
    "session_max_events": 3, "state_ttl": 1_000.0,
}  # fmt: skip
#: One input: (user, seconds after the user's latest event (negative: that far behind
#: it, late beyond 30), 0 for a forget request or the clicked item's number).
INPUTS = st.tuples(
    st.integers(1, 3),
    st.one_of(st.floats(0, 5), st.floats(90, 1_500), st.floats(-40, 0)),
    st.integers(0, 19),
)


@settings(max_examples=150, deadline=None)
@given(
    inputs=st.lists(INPUTS, max_size=60),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=20),
)
def test_the_heap_sweep_closes_what_sweeping_every_user_closes(
    inputs: list[tuple[int, float, int]], sizes: list[int]
) -> None:
    """Whatever the order of arrival (late events, forgotten users, full sessions, idle
    users expiring), each batch's sweep closes the same sessions as sweeping every user."""
    settings = Settings(**SWEEP_RULES)  # type: ignore[arg-type]
    lazy, lazy_store = (
        Pipeline(settings, EchoRecs(), LengthSentiment(), clock=lambda: NOW),
        DictStore(),
    )
    every = SweepEveryone(settings, EchoRecs(), LengthSentiment(), clock=lambda: NOW)
    every_store = DictStore()
    latest = dict.fromkeys(range(1, 4), 0.0)
    records = []
    for n, (user, delta, roll) in enumerate(inputs):
        latest[user] += max(delta, 0.0)
        ts = latest[user] + min(delta, 0.0)
        if roll == 0:
            obj = {"event_id": f"f{n}", "user_id": f"u{user}", "ts": T0 + ts}
            records.append(rec("privacy", obj, offset=n))
        else:
            records.append(click(f"e{n}", ts, f"i{roll}", user=f"u{user}"))
    at = 0
    while at < len(records):
        size = sizes[at % len(sizes)]
        batch, at = records[at : at + size], at + size
        got, want = lazy.run(batch, lazy_store), every.run(batch, every_store)
        assert sorted(map(repr, got.sessions)) == sorted(map(repr, want.sessions))
        assert got.recommendations == want.recommendations
    lazy.watermarks[0] = every.watermarks[0] = T0 + 1e6  # every state closed and expired
    final = lazy.sweep(0, lazy_store)
    assert sorted(map(repr, final)) == sorted(map(repr, every.sweep(0, every_store)))
    assert lazy_store.data == every_store.data == {}
