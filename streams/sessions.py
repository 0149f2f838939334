"""Per-user session state and its rules: pure Python, no Faust, no I/O.

A user's state holds the events of the sessions that are not yet *final*
(``pending``, kept sorted by event time), the tokens of finalized sessions
(``history``, the most recent ``history_length``), a small memory of recent event
ids for de-duplication, the user's latest event time and ``closed_until`` (events at
or before it would fall into a session that was already emitted).

Rules (all in event time):

- A session ends when the next event comes more than ``session_gap`` after its
  last event, or when it holds ``session_max_events`` events.  Session ids are
  ``"{user_id}:{start_ts_ms}"``.
- An event may arrive up to ``allowed_lateness`` behind the user's latest event;
  it is merged into its place, so any arrival order within the lateness gives the
  same sessions as in-order arrival.  Later events are rejected as ``late``.
- A session is *final* (emitted once as a :class:`SessionSummary`) when no
  acceptable future event can touch it: its end plus the gap lies before the
  user's horizon (latest event time minus the lateness), or, on a sweep, before
  the partition's watermark minus the lateness.
- A user idle for more than ``state_ttl`` of event time is forgotten.
"""

from __future__ import annotations

import base64
import hashlib
from bisect import insort
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Final

import orjson

from recstream.model.features import ACTION_IDS
from recstream.streams.records import SessionSummary
from recstream.streams.scoring import Token
from recstream.streams.settings import Settings

SEARCH: Final = ACTION_IDS["search"]
#: Action code -> action name (codes are the model's ACTION_IDS).
ACTION_NAMES: Final = {code: name for name, code in ACTION_IDS.items()}
PURCHASE: Final = ACTION_IDS["purchase"]
#: Queries are stored cut to this many characters (the model reads the first words).
MAX_STORED_QUERY: Final = 100
_HASH_BYTES: Final = 6
_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The session settings, in one small object."""

    gap: float
    max_events: int
    history_length: int
    lateness: float
    ttl: float
    dedup_window: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionRules:
        """The rules configured in ``settings``."""
        return cls(
            gap=settings.session_gap,
            max_events=settings.session_max_events,
            history_length=settings.history_length,
            lateness=settings.allowed_lateness,
            ttl=settings.state_ttl,
            dedup_window=settings.dedup_window,
        )


#: One stored event: (event time, action code, item id or query text).
Step = tuple[float, int, str]


@dataclass(slots=True)
class UserState:
    """Everything kept about one user; see the module docstring."""

    last_ts: float = 0.0
    closed_until: float = 0.0
    history: list[tuple[int, str]] = field(default_factory=list)
    pending: list[Step] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Compact JSON: ``[format, last_ts, closed_until, history, pending, seen]``."""
        seen = b"".join(h.to_bytes(_HASH_BYTES, "big") for h in self.seen)
        return orjson.dumps(
            [
                _FORMAT,
                self.last_ts,
                self.closed_until,
                self.history,
                self.pending,
                base64.b64encode(seen).decode("ascii"),
            ]
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        """Read what :meth:`to_bytes` wrote."""
        fmt, last_ts, closed_until, history, pending, seen_b64 = orjson.loads(raw)
        if fmt != _FORMAT:
            raise ValueError(f"unknown user state format {fmt!r}")
        seen = base64.b64decode(seen_b64)
        return cls(
            last_ts=last_ts,
            closed_until=closed_until,
            history=list(map(tuple, history)),
            pending=list(map(tuple, pending)),
            seen=[
                int.from_bytes(seen[i : i + _HASH_BYTES], "big")
                for i in range(0, len(seen), _HASH_BYTES)
            ],
        )

    def tokens(self, limit: int) -> list[Token]:
        """The user's most recent ``limit`` tokens, oldest first (the model's input)."""
        steps = [(code, text) for _, code, text in self.pending[-limit:]]
        if len(steps) < limit:
            steps = self.history[len(self.history) - (limit - len(steps)) :] + steps
        return [_token(code, text) for code, text in steps]


class Status(StrEnum):
    """What applying an event did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class OpenSession:
    """The session an applied event landed in, as the recommender needs it."""

    session_id: str
    purchased: frozenset[str]


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of :func:`apply`: the new state, sessions it closed, the event's session."""

    status: Status
    state: UserState
    closed: list[SessionSummary]
    session: OpenSession | None = None


def event_hash(event_id: str) -> int:
    """A 48-bit hash of an event id (the de-duplication memory stores these)."""
    return int.from_bytes(
        hashlib.blake2b(event_id.encode("utf-8"), digest_size=_HASH_BYTES).digest(), "big"
    )


def step_of(action: str, ts: float, item_id: str | None, query: str | None) -> Step:
    """The stored form of a click (``action``, ``item_id``) or a search (``query``)."""
    if action == "search":
        return (ts, SEARCH, (query or "")[:MAX_STORED_QUERY])
    return (ts, ACTION_IDS[action], item_id or "")


def session_id_of(user_id: str, start_ts: float) -> str:
    """The deterministic id of the session of ``user_id`` that starts at ``start_ts``."""
    return f"{user_id}:{round(start_ts * 1000)}"


def apply(
    state: UserState | None, user_id: str, event_id: str, step: Step, rules: SessionRules
) -> Applied:
    """Apply one click or search (as a :data:`Step`) to a user's state.

    The state is changed in place (a new one is made when ``state`` is None).
    """
    st = state if state is not None else UserState()
    digest = event_hash(event_id)
    if rules.dedup_window and digest in st.seen:
        return Applied(Status.DUPLICATE, st, [])
    ts = step[0]
    closed: list[SessionSummary] = []
    if st.last_ts and ts - st.last_ts > rules.ttl:
        # The user was idle past the TTL: what a sweep would have dropped is dropped.
        closed = _finalize(st, user_id, float("inf"), rules)
        st = UserState()
    elif st.last_ts and (ts < st.last_ts - rules.lateness or ts <= st.closed_until):
        return Applied(Status.LATE, st, [])
    insort(st.pending, step)
    if rules.dedup_window:
        st.seen.append(digest)
        if len(st.seen) > rules.dedup_window:
            del st.seen[: len(st.seen) - rules.dedup_window]
    st.last_ts = max(st.last_ts, ts)
    parts = _split(st.pending, rules)
    retired = _finalize_split(st, user_id, st.last_ts - rules.lateness, rules, parts, closed)
    return Applied(Status.APPLIED, st, closed, _session_containing(user_id, step, parts[retired:]))


def sweep(
    state: UserState, user_id: str, watermark: float, rules: SessionRules
) -> tuple[UserState | None, list[SessionSummary]]:
    """Close the sessions a partition watermark has passed; None when the state expired.

    ``watermark`` is the largest event time seen on the user's partition.
    """
    if watermark - state.last_ts > rules.ttl:
        return None, _finalize(state, user_id, float("inf"), rules)
    return state, _finalize(state, user_id, watermark - rules.lateness, rules)


def next_deadline(state: UserState, rules: SessionRules) -> float:
    """The partition watermark at which :func:`sweep` will next change this state."""
    expiry = state.last_ts + rules.ttl
    sessions = _split(state.pending, rules)
    if not sessions:
        return expiry
    first = sessions[0]
    end = first[-1][0]
    if len(first) >= rules.max_events and len(sessions) > 1:
        return min(expiry, end + rules.lateness)
    return min(expiry, end + rules.gap + rules.lateness)


@lru_cache(maxsize=65_536)
def _token(code: int, text: str) -> Token:
    """The (shared, immutable) scoring token of a stored step."""
    if code == SEARCH:
        return Token(None, "search", text)
    return Token(text, ACTION_NAMES[code], None)


def _split(pending: list[Step], rules: SessionRules) -> list[list[Step]]:
    """Pending events cut into sessions by the gap and length rules."""
    sessions: list[list[Step]] = []
    current: list[Step] = []
    for step in pending:
        if current and (step[0] - current[-1][0] > rules.gap or len(current) >= rules.max_events):
            sessions.append(current)
            current = []
        current.append(step)
    if current:
        sessions.append(current)
    return sessions


def _finalize(
    st: UserState, user_id: str, horizon: float, rules: SessionRules
) -> list[SessionSummary]:
    """Emit and retire, oldest first, pending sessions no event at/after ``horizon`` can touch."""
    closed: list[SessionSummary] = []
    _finalize_split(st, user_id, horizon, rules, _split(st.pending, rules), closed)
    return closed


def _finalize_split(
    st: UserState,
    user_id: str,
    horizon: float,
    rules: SessionRules,
    parts: list[list[Step]],
    closed: list[SessionSummary],
) -> int:
    """:func:`_finalize` on the already split pending events; returns how many it retired."""
    retired = steps_retired = 0
    for index, steps in enumerate(parts):
        end = steps[-1][0]
        full_and_followed = len(steps) >= rules.max_events and index + 1 < len(parts)
        if end + rules.gap < horizon:
            st.closed_until = max(st.closed_until, end + rules.gap)
        elif full_and_followed and end < horizon:
            st.closed_until = max(st.closed_until, end)
        else:
            break
        closed.append(_summary(user_id, steps))
        retired += 1
        steps_retired += len(steps)
    if steps_retired:
        st.history.extend((code, text) for _, code, text in st.pending[:steps_retired])
        del st.pending[:steps_retired]
        if len(st.history) > rules.history_length:
            del st.history[: len(st.history) - rules.history_length]
    return retired


def _summary(user_id: str, steps: list[Step]) -> SessionSummary:
    counts = dict.fromkeys(ACTION_IDS, 0)
    items: dict[str, None] = {}
    searches: dict[str, None] = {}
    for _, code, text in steps:
        counts[ACTION_NAMES[code]] += 1
        if code == SEARCH:
            searches[text] = None
        else:
            items[text] = None
    start = steps[0][0]
    return SessionSummary(
        user_id=user_id,
        session_id=session_id_of(user_id, start),
        start_ts=start,
        end_ts=steps[-1][0],
        counts=counts,
        items=tuple(items),
        searches=tuple(searches),
    )


def _session_containing(user_id: str, step: Step, parts: list[list[Step]]) -> OpenSession | None:
    for steps in parts:
        if steps[0] <= step <= steps[-1]:
            purchased = frozenset(text for _, code, text in steps if code == PURCHASE)
            return OpenSession(session_id_of(user_id, steps[0][0]), purchased)
    return None
