"""Session rules: gaps, length, lateness, duplicates, TTL, sweeps, serialisation."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from recstream.streams.records import SessionSummary
from recstream.streams.scoring import Token
from recstream.streams.sessions import (
    Applied,
    SessionRules,
    Status,
    Step,
    UserState,
    apply,
    next_deadline,
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
    assert state is not None and [s[2] for s in state.pending] == ["c", "d"]


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
    assert state is not None and [s[2] for s in state.pending] == ["a"]


def test_event_beyond_lateness_is_late() -> None:
    state, _, results = feed([("e1", click(100)), ("e2", click(69)), ("e3", click(71))])
    assert [r.status for r in results] == [Status.APPLIED, Status.LATE, Status.APPLIED]
    assert state is not None and [s[0] - T0 for s in state.pending] == [71, 100]


def test_late_event_is_merged_in_order() -> None:
    state, _, results = feed(
        [("e1", click(0, "a")), ("e2", click(20, "c")), ("e3", click(10, "b"))]
    )
    assert results[2].status is Status.APPLIED
    assert state is not None
    assert state.tokens(10) == [Token("a", "view"), Token("b", "view"), Token("c", "view")]


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
    # 50 history tokens in closed sessions + 64 event-id hashes: about 1.4 KB.
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
