"""Session rules: gaps, length, lateness, duplicates, TTL, sweeps, serialisation."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recstream.model.features import ACTION_IDS, query_words
from recstream.streams.records import SessionSummary
from recstream.streams.scoring import Token
from recstream.streams.sessions import (
    MAX_STORED_QUERY,
    Applied,
    SessionRules,
    Status,
    Step,
    UserState,
    _split,
    apply,
    event_hash,
    history_step,
    latest_session,
    next_deadline,
    remembered,
    session_id_of,
    step_of,
    sweep,
)

T0 = 1_700_000_000.0
RULES = SessionRules(
    gap=100.0, max_events=5, history_length=8, lateness=30.0, ttl=10_000.0, dedup_window=16
)


def click(ts: float, item: str = "i1", action: str = "view") -> Step:
    return step_of(action, T0 + ts, item, None)


def pending(*steps: tuple[float, int, str]) -> dict[str, Any]:
    """``UserState`` keywords for pending ``steps`` given as (time, action code, text)."""
    return {
        "pending": [history_step(code, text) for _, code, text in steps],
        "pending_times": [ts for ts, _, _ in steps],
    }


def feed(
    events: list[tuple[str, Step]], rules: SessionRules = RULES
) -> tuple[UserState | None, list[SessionSummary], list[Applied]]:
    state: UserState | None = None
    closed: list[SessionSummary] = []
    results: list[Applied] = []
    for event_id, step in events:
        result = apply(state, "u", event_id, step, rules)
        state = result.state
        closed += result.closed
        results.append(result)
    return state, closed, results


def test_events_within_gap_share_a_session_and_a_gap_closes_it() -> None:
    state, closed, results = feed(
        [("e1", click(0, "a")), ("e2", click(50, "b")), ("e3", click(151, "c"))]
    )
    assert [r.status for r in results] == [Status.APPLIED] * 3
    assert results[0].session is not None and results[1].session is not None
    assert results[0].session.session_id == results[1].session.session_id == f"u:{int(T0 * 1000)}"
    # e3 is 101 s after e2 (> gap 100) but the session is final only once it is past
    # the lateness too (end + gap < latest - lateness): not yet.
    assert closed == []
    assert results[2].session is not None
    assert results[2].session.session_id == session_id_of("u", T0 + 151)
    state, more, _ = feed(
        [("e1", click(0, "a")), ("e2", click(50, "b")), ("e3", click(151, "c")),
         ("e4", click(181, "d"))]
    )  # fmt: skip
    assert len(more) == 1
    summary = more[0]
    assert summary.session_id == f"u:{int(T0 * 1000)}"
    assert (summary.start_ts, summary.end_ts) == (T0, T0 + 50)
    assert summary.items == ("a", "b")
    assert summary.counts == {"view": 2, "add_to_cart": 0, "purchase": 0, "search": 0}
    assert state is not None and [s[1:] for s in state.pending] == ["c", "d"]


def test_session_is_cut_at_max_events() -> None:
    events = [(f"e{i}", click(i, f"i{i}")) for i in range(7)]
    _, closed, results = feed(events)
    ids = [r.session.session_id for r in results if r.session]
    assert ids[:5] == [session_id_of("u", T0)] * 5
    assert ids[5:] == [session_id_of("u", T0 + 5)] * 2
    # the full session ends at T0+4; it is final once the horizon (T0+6-30) passes it: not yet.
    assert closed == []
    _, closed2, _ = feed([*events, ("late-enough", click(40, "x"))])
    assert [s.items for s in closed2] == [("i0", "i1", "i2", "i3", "i4")]


def test_duplicate_event_id_changes_nothing() -> None:
    state, _, results = feed([("e1", click(0, "a")), ("e1", click(5, "b"))])
    assert results[1].status is Status.DUPLICATE
    assert state is not None and [s[1:] for s in state.pending] == ["a"]


def test_event_beyond_lateness_is_late() -> None:
    state, _, results = feed([("e1", click(100)), ("e2", click(69)), ("e3", click(71))])
    assert [r.status for r in results] == [Status.APPLIED, Status.LATE, Status.APPLIED]
    assert state is not None and [t - T0 for t in state.pending_times] == [71, 100]


def test_late_event_is_merged_in_order() -> None:
    state, _, results = feed(
        [("e1", click(0, "a")), ("e2", click(20, "c")), ("e3", click(10, "b"))]
    )
    assert results[2].status is Status.APPLIED
    assert state is not None
    assert state.tokens(10) == [Token("a", "view"), Token("b", "view"), Token("c", "view")]


def test_latest_session_is_the_last_pending_one_with_its_events() -> None:
    # e3 starts a second session (101 s > gap); the first is not final yet.
    search = step_of("search", T0 + 151, None, "red shoes")
    state, closed, _ = feed(
        [("e1", click(0, "a")), ("e2", click(50, "b")), ("e3", search),
         ("e4", click(160, "c", "purchase"))]
    )  # fmt: skip
    assert state is not None and closed == [] and len(state.pending) == 4
    latest = latest_session(state, "u", RULES)
    assert latest is not None
    summary, steps = latest
    assert summary.session_id == session_id_of("u", T0 + 151)
    assert (summary.start_ts, summary.end_ts) == (T0 + 151, T0 + 160)
    assert summary.items == ("c",) and summary.searches == ("red shoes",)
    assert steps == [(T0 + 151, ACTION_IDS["search"], "red shoes"),
                     (T0 + 160, ACTION_IDS["purchase"], "c")]  # fmt: skip
    assert latest_session(UserState(), "u", RULES) is None


def test_sessions_without_purchases_share_one_empty_set() -> None:
    """One container less per open session for the garbage collector to walk."""
    _, _, first = feed([("e1", click(0, "a"))])
    _, _, second = feed([("e2", click(5, "b")), ("e3", click(6, "c"))])
    sessions = [applied.session for applied in first + second]
    assert all(s is not None and s.purchased == frozenset() for s in sessions)
    assert len({id(s.purchased) for s in sessions if s is not None}) == 1


def test_searches_and_purchases() -> None:
    state, _, results = feed(
        [
            ("e1", step_of("search", T0, None, "red shoes")),
            ("e2", click(1, "a", "purchase")),
            ("e3", click(2, "b")),
        ]
    )
    assert results[2].session is not None
    assert results[2].session.purchased == frozenset({"a"})
    assert state is not None
    assert state.tokens(2) == [Token("a", "purchase"), Token("b", "view")]
    assert state.tokens(10)[0] == Token(None, "search", "red shoes")
    _, closed = sweep(state, "u", T0 + 1000, RULES)
    assert closed[0].searches == ("red shoes",)
    assert closed[0].counts["search"] == 1 and closed[0].counts["purchase"] == 1


def test_summary_counts_actions_and_lists_items_and_searches_once_in_first_order() -> None:
    events = [
        ("e1", click(0, "b")),
        ("e2", step_of("search", T0 + 1, None, "red shoes")),
        ("e3", click(2, "a", "add_to_cart")),
        ("e4", click(3, "b", "purchase")),
        ("e5", step_of("search", T0 + 4, None, "red shoes")),
    ]
    state, _, _ = feed(events)
    assert state is not None
    _, (summary,) = sweep(state, "u", T0 + 1000, RULES)
    assert summary.counts == {"view": 1, "add_to_cart": 1, "purchase": 1, "search": 2}
    assert summary.items == ("b", "a") and summary.searches == ("red shoes",)
    assert (summary.start_ts, summary.end_ts) == (T0, T0 + 4)


def test_history_spans_sessions_and_is_bounded() -> None:
    events = [(f"e{i}", click(i * 200, f"i{i}")) for i in range(12)]
    state, closed, _ = feed(events)
    assert state is not None
    assert len(closed) == 11
    assert [t.item_id for t in state.tokens(8)] == [f"i{i}" for i in range(4, 12)]
    assert len(state.history) <= RULES.history_length


def test_sweep_closes_idle_session_once_and_late_event_after_it_is_rejected() -> None:
    state, _, _ = feed([("e1", click(0, "a")), ("e2", click(10, "b"))])
    assert state is not None
    deadline = next_deadline(state, RULES)
    assert deadline == T0 + 10 + RULES.gap + RULES.lateness
    same, closed = sweep(state, "u", deadline - 1, RULES)
    assert closed == [] and same is state
    after, closed = sweep(state, "u", deadline + 1, RULES)
    assert after is not None and len(closed) == 1 and closed[0].items == ("a", "b")
    assert sweep(after, "u", deadline + 2, RULES)[1] == []  # emitted exactly once
    # An event that would have joined the emitted session is late now.
    assert apply(after, "u", "e3", click(60), RULES).status is Status.LATE
    assert apply(after, "u", "e4", click(111), RULES).status is Status.APPLIED


def test_state_expires_after_ttl() -> None:
    state, _, _ = feed([("e1", click(0, "a"))])
    assert state is not None
    gone, closed = sweep(state, "u", T0 + RULES.ttl + 1, RULES)
    assert gone is None and len(closed) == 1
    # Without a sweep, the next event past the TTL starts from a fresh state.
    state2, _, _ = feed([("e1", click(0, "a"))])
    result = apply(state2, "u", "e2", click(RULES.ttl + 5, "b"), RULES)
    assert result.status is Status.APPLIED and len(result.closed) == 1
    assert result.state.tokens(10) == [Token("b", "view")]


@pytest.mark.parametrize("seed", range(6))
def test_kept_tokens_and_texts_follow_every_change_of_the_state(seed: int) -> None:
    """Late merges, closed and cut sessions, history trims, sweeps, TTL restarts,
    duplicates, texts of one to three UTF-8 bytes a character: the kept token list
    always equals the tokens of a fresh copy, and the stored form (with its kept history
    texts, written after one or several changes) always decodes to the state and equals
    the fresh copy's."""
    rng = random.Random(seed)
    state: UserState | None = None
    ts = 0.0
    for n in range(300):
        ts += rng.choice([1.0, 5.0, 150.0, 20_000.0]) if rng.random() < 0.9 else 0.0
        late = ts - rng.uniform(0, RULES.lateness) if rng.random() < 0.2 else ts
        if rng.random() < 0.1:
            step = step_of("search", T0 + late, None, f"q{rng.randrange(5)}")
        else:
            item = rng.choice(["i", "é", "商品"]) + str(rng.randrange(30))  # 1-3 UTF-8 bytes
            step = click(late, item, rng.choice(["view", "purchase"]))
        event_id = f"e{rng.randrange(n + 1)}"  # some repeat: duplicates
        state = apply(state, "u", event_id, step, RULES).state
        if rng.random() < 0.1:
            state = sweep(state, "u", T0 + ts + rng.uniform(0, 300), RULES)[0] or UserState()
        # The same state without anything kept between changes.
        fresh = UserState(
            state.last_ts,
            state.closed_until,
            list(state.history),
            list(state.pending),
            list(state.pending_times),
            state.seen,
        )
        if rng.random() < 0.4:  # written now and then: some writes follow several changes
            assert UserState.from_bytes(state.to_bytes()) == state
            assert fresh.to_bytes() == state.to_bytes()  # made afresh == kept
        for limit in (1, 3, RULES.history_length, 100):
            assert state.tokens(limit) == fresh.tokens(limit)
        assert state.token_list == fresh.tokens(10_000)
        if state.starts is not None:  # the kept split is the split of the pending events
            assert state.starts == _split(state.pending_times, RULES)


def _long_run(gap_s: float, n: int) -> UserState:
    rules = SessionRules(
        gap=1800, max_events=200, history_length=50, lateness=300, ttl=7 * 86400, dedup_window=64
    )
    state: UserState | None = None
    for i in range(n):
        step = step_of("view", T0 + i * gap_s, f"B00{i % 37:07d}", None)
        state = apply(state, "user-1", f"00000000-0000-0000-0000-{i:012d}", step, rules).state
    assert state is not None
    return state


def test_state_round_trips_and_its_size_is_bounded() -> None:
    # 50 history tokens in closed sessions + 64 event-id hashes: under 1 KB (1.4 KB as JSON).
    closed = _long_run(4000.0, 120)
    assert len(closed.history) == 50 and len(closed.pending) == 1
    raw = closed.to_bytes()
    assert UserState.from_bytes(raw) == closed
    assert len(raw) < 1600, len(raw)
    # One open 120-event session: every event is kept until the session is final.
    open_session = _long_run(60.0, 120)
    raw = open_session.to_bytes()
    assert UserState.from_bytes(raw) == open_session
    assert len(open_session.pending) == 120
    assert len(raw) < 4500, len(raw)


ACTIVE_RULES = SessionRules(
    gap=1800, max_events=200, history_length=50, lateness=300, ttl=7 * 86400, dedup_window=64
)


def _active_user(id_chars: int) -> UserState:
    """50 history tokens, 3 events of an open session, 64 remembered event ids."""
    state: UserState | None = None
    for i in range(120):
        ts = T0 + i * 4000.0 if i < 117 else T0 + 117 * 4000.0 + (i - 117) * 60.0
        step = step_of("view", ts, f"B{i:0{id_chars - 1}d}", None)
        state = apply(
            state, "user-1", f"00000000-0000-0000-0000-{i:012d}", step, ACTIVE_RULES
        ).state
    assert state is not None
    return state


def test_an_active_user_with_a_full_history_takes_at_most_1_kib() -> None:
    state = _active_user(10)
    assert (len(state.history), len(state.pending), len(state.seen)) == (50, 3, 64 * 6)
    raw = state.to_bytes()
    assert UserState.from_bytes(raw) == state
    # Header 29 + 3 times 24 + 64 hashes 384 + 53 x (code + 10-character id) 583.
    assert len(raw) <= 1024, len(raw)


def test_empty_texts_and_no_texts_survive_the_round_trip() -> None:
    cases = [
        UserState(),
        UserState(last_ts=T0, **pending((T0, ACTION_IDS["view"], ""))),
        UserState(
            last_ts=T0 + 5,
            closed_until=T0 + 1,
            history=[history_step(ACTION_IDS["view"], ""), history_step(ACTION_IDS["search"], "")],
            **pending((T0 + 5, ACTION_IDS["purchase"], ""), (T0 + 5, ACTION_IDS["view"], "a")),
            seen=event_hash("e1"),
        ),
    ]
    for state in cases:
        assert UserState.from_bytes(state.to_bytes()) == state


#: Item ids as records.py admits them (printable, any script), or "" for a missing one.
item_ids = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=30).filter(
    str.isprintable
)
#: Queries: any text, with control characters, Chinese, emoji, ...
queries = st.text(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.sampled_from(["\x1f", "\x01", "\x04", "\x00", "\n", "\u200d", "\u3000", " "]),
        st.sampled_from(["鞋", "红", "👟", "🇫", "🇷"]),
    ),
    max_size=120,
)
actions = st.sampled_from(sorted(ACTION_IDS))
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def stored_steps(draw: st.DrawFn) -> Step:
    return step_of(draw(actions), draw(times), draw(item_ids), draw(queries))


@st.composite
def user_states(draw: st.DrawFn) -> UserState:
    history = [step for _, step in draw(st.lists(stored_steps(), max_size=60))]
    steps = draw(st.lists(stored_steps(), max_size=8))
    return UserState(
        last_ts=draw(times),
        closed_until=draw(times),
        history=history,
        pending=[step for _, step in steps],
        pending_times=[ts for ts, _ in steps],
        seen=draw(st.binary(max_size=64).map(lambda b: b"".join(map(event_hash, map(str, b))))),
    )


@settings(max_examples=300, deadline=None)
@given(user_states())
def test_any_state_round_trips(state: UserState) -> None:
    assert UserState.from_bytes(state.to_bytes()) == state


def _format1(state: UserState) -> bytes:
    """The JSON layout the previous release wrote (format 1)."""
    seen = base64.b64encode(state.seen).decode("ascii")
    history = [[ord(step[0]), step[1:]] for step in state.history]  # (code, text) pairs
    steps = [
        [ts, ord(step[0]), step[1:]]
        for ts, step in zip(state.pending_times, state.pending, strict=True)
    ]
    return orjson.dumps([1, state.last_ts, state.closed_until, history, steps, seen])


@settings(max_examples=100, deadline=None)
@given(user_states())
def test_format_1_states_are_still_read(state: UserState) -> None:
    assert UserState.from_bytes(_format1(state)) == state


def test_a_state_written_by_the_previous_release_is_read_with_its_dedup_memory() -> None:
    # UserState.to_bytes() of the previous release after events e1..e4 (RULES).
    raw = (
        '[1,1700000400.5,1700000101.0,[[4,"红色 跑鞋 👟"],[1,"B000000001"]],'
        '[[1700000300.0,2,""],[1700000400.5,1,"B000000002"]],"/LMgnF0JZ5Q9BnIhUGRihoKy6Ivd9nJo"]'
    ).encode()
    state = UserState.from_bytes(raw)
    assert state == UserState(
        last_ts=T0 + 400.5,
        closed_until=T0 + 101,
        history=[
            history_step(ACTION_IDS["search"], "红色 跑鞋 👟"),
            history_step(ACTION_IDS["view"], "B000000001"),
        ],
        **pending((T0 + 300, ACTION_IDS["add_to_cart"], ""), (T0 + 400.5, ACTION_IDS["view"],
                  "B000000002")),
        seen=b"".join(map(event_hash, ["e1", "e2", "e3", "e4"])),
    )  # fmt: skip
    assert apply(state, "u", "e3", click(401, "x"), RULES).status is Status.DUPLICATE
    assert UserState.from_bytes(state.to_bytes()) == state  # rewritten as format 2


def test_control_characters_in_format_1_queries_become_spaces() -> None:
    # The previous release stored queries as they came, newlines and all.
    state = UserState(
        last_ts=T0 + 1,
        history=[history_step(ACTION_IDS["search"], "red\nshoes\x1f")],
        **pending((T0 + 1, ACTION_IDS["search"], "\tblue\x01 hat")),
    )
    read = UserState.from_bytes(_format1(state))
    assert read.history == [history_step(ACTION_IDS["search"], "red shoes ")]
    assert read.pending == [history_step(ACTION_IDS["search"], " blue  hat")]
    assert read.pending_times == [T0 + 1]
    assert UserState.from_bytes(read.to_bytes()) == read


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x03rest", b"\x02short", b'[2,0.0,0.0,[],[],""]', b"not json"],
)
def test_unreadable_state_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        UserState.from_bytes(raw)


def test_state_whose_counts_do_not_match_its_contents_is_a_value_error() -> None:
    state = UserState(
        last_ts=T0,
        history=[history_step(1, "a"), history_step(1, "b")],
        **pending((T0, 1, "c")),
        seen=event_hash("e"),
    )
    raw = state.to_bytes()
    for cut in (raw[:-2], raw[:-4], raw[:40]):  # lose one text / two texts / the seen bytes
        with pytest.raises(ValueError):
            UserState.from_bytes(cut)


def test_action_codes_are_c0_characters_so_they_can_mark_texts() -> None:
    assert all(0 < code < 0x20 for code in ACTION_IDS.values())


def test_event_hashes_are_blake2b_of_6_bytes_whatever_was_hashed_before() -> None:
    """Stored states hold these hashes: they must not change between releases."""
    for event_id in ["e1", "e2", "e1", "é-😀", ""]:
        assert (
            event_hash(event_id)
            == hashlib.blake2b(event_id.encode("utf-8"), digest_size=6).digest()
        )


def test_dedup_match_must_be_aligned_on_a_hash() -> None:
    digest = event_hash("e-target")
    left, right = event_hash("left"), event_hash("right")
    across = left[:3] + digest[:3] + digest[3:] + right[3:]  # two hashes; digest spans both
    assert len(across) == 12 and across.find(digest) == 3
    assert not remembered(across, digest)
    assert remembered(across + digest, digest)  # a misaligned hit, then an aligned one
    assert remembered(digest + across, digest)
    assert not remembered(b"", digest)
    # The same through apply: the crafted memory does not make the event a duplicate.
    state = UserState(last_ts=T0, seen=across)
    first = apply(state, "u", "e-target", click(1), RULES)
    assert first.status is Status.APPLIED
    assert first.state.seen == across + digest
    assert apply(first.state, "u", "e-target", click(2), RULES).status is Status.DUPLICATE


def test_dedup_memory_keeps_the_last_window_of_ids() -> None:
    rules = SessionRules(gap=100, max_events=5, history_length=8, lateness=30, ttl=1e6,
                         dedup_window=4)  # fmt: skip
    state, _, _ = feed([(f"e{i}", click(i)) for i in range(6)], rules)
    assert state is not None
    assert state.seen == b"".join(event_hash(f"e{i}") for i in range(2, 6))
    assert apply(state, "u", "e1", click(10), rules).status is Status.APPLIED
    assert apply(state, "u", "e3", click(11), rules).status is Status.DUPLICATE


@settings(max_examples=300, deadline=None)
@given(queries)
def test_stored_queries_have_no_control_characters_and_the_same_words(query: str) -> None:
    stored = step_of("search", T0, None, query)[1][1:]
    assert not any(ord(ch) < 0x20 for ch in stored)
    assert len(stored) == len(query[:MAX_STORED_QUERY])
    assert query_words(stored) == query_words(query[:MAX_STORED_QUERY])


def test_control_characters_in_a_query_become_spaces() -> None:
    stored = step_of("search", T0, None, "red\x1fshoes\x01红鞋\n")[1][1:]
    assert stored == "red shoes 红鞋 "
    assert query_words(stored) == ["red", "shoes", "红鞋"]
    assert step_of("view", T0, "B000000001", None)[1] == history_step(
        ACTION_IDS["view"], "B000000001"
    )


# ---------------------------------------------------------------------------
# Properties: arrival order within the lateness does not matter; duplicates do nothing.
# ---------------------------------------------------------------------------

PROP_RULES = SessionRules(
    gap=60.0, max_events=4, history_length=6, lateness=40.0, ttl=1e9, dedup_window=1000
)


@st.composite
def shuffled_within_lateness(draw: st.DrawFn) -> tuple[list[tuple[str, Step]], list[int]]:
    n = draw(st.integers(1, 25))
    gaps = draw(
        st.lists(st.sampled_from([0, 1, 5, 20, 59, 60, 61, 90, 200]), min_size=n, max_size=n)
    )
    actions = draw(st.lists(st.sampled_from(["view", "add_to_cart", "purchase", "search"]),
                            min_size=n, max_size=n))  # fmt: skip
    ts = T0
    events: list[tuple[str, Step]] = []
    for i, (gap, action) in enumerate(zip(gaps, actions, strict=True)):
        ts += gap
        item = f"i{i % 3}"
        events.append((f"e{i}", step_of(action, ts, item, f"q {i % 2}")))
    seed = draw(st.integers(0, 2**32 - 1))
    order = _arrival_order(events, PROP_RULES.lateness, random.Random(seed))
    return events, order


def _arrival_order(
    events: list[tuple[str, Step]], lateness: float, rng: random.Random
) -> list[int]:
    """A random arrival order in which no event is more than ``lateness`` behind the max so far."""
    remaining = list(range(len(events)))
    order: list[int] = []
    latest = float("-inf")
    while remaining:
        # Any remaining event may come next if every still-missing earlier one stays in reach.
        earliest = min(events[i][1][0] for i in remaining)
        allowed = [i for i in remaining if max(latest, events[i][1][0]) - lateness <= earliest]
        pick = rng.choice(allowed)
        order.append(pick)
        remaining.remove(pick)
        latest = max(latest, events[pick][1][0])
    return order


def _final(
    events: list[tuple[str, Step]],
) -> tuple[UserState | None, list[SessionSummary], list[Status]]:
    state, closed, results = feed(events, PROP_RULES)
    assert state is not None
    _, tail = sweep(state, "u", state.last_ts + 1e6, PROP_RULES)
    return state, closed + tail, [r.status for r in results]


@settings(max_examples=300, deadline=None)
@given(shuffled_within_lateness())
def test_arrival_order_within_lateness_gives_the_in_order_result(
    case: tuple[list[tuple[str, Step]], list[int]],
) -> None:
    events, order = case
    in_order, closed_a, statuses_a = _final(events)
    shuffled, closed_b, statuses_b = _final([events[i] for i in order])
    assert set(statuses_a) == set(statuses_b) == {Status.APPLIED}
    assert in_order is not None and shuffled is not None
    assert (in_order.pending, in_order.history, in_order.last_ts) == (
        shuffled.pending,
        shuffled.history,
        shuffled.last_ts,
    )
    key = lambda s: s.session_id  # noqa: E731
    assert sorted(closed_a, key=key) == sorted(closed_b, key=key)
    # Sessions partition the events: every event counted exactly once.
    assert sum(sum(s.counts.values()) for s in closed_a) == len(events)


@settings(max_examples=200, deadline=None)
@given(shuffled_within_lateness(), st.data())
def test_duplicates_are_idempotent(
    case: tuple[list[tuple[str, Step]], list[int]], data: st.DataObject
) -> None:
    events, order = case
    arrived = [events[i] for i in order]
    dups = data.draw(st.lists(st.integers(0, len(arrived) - 1), max_size=10))
    with_dups = list(arrived)
    for index in sorted(dups, reverse=True):
        position = data.draw(st.integers(index + 1, len(with_dups)))
        with_dups.insert(position, arrived[index])
    base, closed_a, _ = _final(arrived)
    again, closed_b, statuses = _final(with_dups)
    assert statuses.count(Status.DUPLICATE) == len(dups)
    assert base is not None and again is not None
    assert (base.pending, base.history) == (again.pending, again.history)
    assert closed_a == closed_b


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0, 1, 59, 60, 61, 200]), min_size=1, max_size=40),
    st.lists(st.sampled_from(["view", "purchase", "search"]), min_size=40, max_size=40),
)
def test_in_order_events_close_the_sessions_the_rules_describe(
    gaps: list[int], actions: list[str]
) -> None:
    # The rules, spelled out: a session ends before an event that comes more than the
    # gap after the previous one (exactly the gap stays), or when it holds max_events.
    expected: list[list[int]] = []
    ts = T0
    events: list[tuple[str, Step]] = []
    for i, gap in enumerate(gaps):
        ts += gap
        events.append((f"e{i}", step_of(actions[i], ts, f"i{i}", "q")))
        if not expected or gap > PROP_RULES.gap or len(expected[-1]) >= PROP_RULES.max_events:
            expected.append([])
        expected[-1].append(i)
    _, closed, statuses = _final(events)
    assert set(statuses) == {Status.APPLIED}
    assert [(s.start_ts, s.end_ts) for s in closed] == [
        (events[s[0]][1][0], events[s[-1]][1][0]) for s in expected
    ]
    assert [sum(s.counts.values()) for s in closed] == [len(s) for s in expected]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0, 1, 59, 60, 61, 200]), max_size=12),
    st.integers(1, 4),
    st.sampled_from([100.0, 10_000.0]),
)
def test_next_deadline_is_the_first_watermark_at_which_a_sweep_changes_the_state(
    gaps: list[int], max_events: int, ttl: float
) -> None:
    rules = SessionRules(
        gap=60.0, max_events=max_events, history_length=8, lateness=30.0, ttl=ttl, dedup_window=0
    )
    times = [T0 + sum(gaps[: i + 1]) for i in range(len(gaps))]

    def fresh() -> UserState:
        steps = [(ts, ACTION_IDS["view"], f"i{n}") for n, ts in enumerate(times)]
        return UserState(last_ts=times[-1] if times else T0, **pending(*steps))

    deadline = next_deadline(fresh(), rules)
    before = fresh()
    assert sweep(before, "u", deadline, rules) == (before, [])
    after, closed = sweep(fresh(), "u", deadline + 0.01, rules)
    assert after is None or closed


@settings(max_examples=300, deadline=None)
@given(shuffled_within_lateness(), st.data())
def test_the_kept_split_gives_what_splitting_afresh_gives(
    case: tuple[list[tuple[str, Step]], list[int]], data: st.DataObject
) -> None:
    """Every event applied twice: to a state that keeps its split between events, and
    to a copy whose split is dropped before each event (made afresh); with duplicates,
    late events and sweeps in between, both give the same results and states."""
    events, order = case
    kept: UserState | None = None
    afresh: UserState | None = None
    for index in order + data.draw(st.lists(st.sampled_from(order), max_size=5)):
        event_id, step = events[index]
        if afresh is not None:
            afresh.starts = None
        a = apply(kept, "u", event_id, step, PROP_RULES)
        b = apply(afresh, "u", event_id, step, PROP_RULES)
        assert (a.status, a.closed, a.session) == (b.status, b.closed, b.session)
        kept, afresh = a.state, b.state
        assert (kept.pending, kept.history, kept.closed_until) == (
            afresh.pending,
            afresh.history,
            afresh.closed_until,
        )
        assert kept.starts == _split(kept.pending_times, PROP_RULES)
        if data.draw(st.booleans()):
            watermark = kept.last_ts + data.draw(st.sampled_from([0.0, 30.0, 100.0, 1e6]))
            afresh.starts = None
            kept_swept, afresh_swept = (
                sweep(kept, "u", watermark, PROP_RULES),
                sweep(afresh, "u", watermark, PROP_RULES),
            )
            assert kept_swept[1] == afresh_swept[1]
            assert kept.starts == _split(kept.pending_times, PROP_RULES)
            assert next_deadline(kept, PROP_RULES) == next_deadline(afresh, PROP_RULES)
