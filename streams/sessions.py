"""Per-user session state and its rules: pure Python, no Faust, no I/O.

A user's state holds the events of the sessions that are not yet *final*
(``pending``, kept sorted by event time, their times in ``pending_times``), the steps
of finalized sessions (``history``, the most recent ``history_length``), each step as
its stored text, a small memory of recent event ids for de-duplication, the user's
latest event time and ``closed_until`` (events at or before it would fall into a
session that was already emitted).

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

Stored form (:meth:`UserState.to_bytes`, format 2; :meth:`UserState.from_bytes` also
reads the JSON format 1 of earlier releases).  Every part is packed or split by one
C-level operation, no per-entry Python code::

    header   struct "<BddIII": 2, last_ts, closed_until, n_history, n_pending, n_seen
    times    n_pending little-endian doubles (the pending events' times)
    seen     n_seen 6-byte event-id hashes, oldest first
    texts    UTF-8 of, per history step then per pending step, chr(action code) + text

The action codes (1..4) are C0 control characters, so each code also marks where its
text starts; :func:`step_of` replaces C0 characters in the texts by spaces.

The history and the pending events are kept in memory as those stored texts, one string
per step, and the pending events' times in a list beside them, not as (time, code, text)
tuples: a string or a float is no container for Python's garbage collector, so the steps
of every user add nothing to what its collections walk (a pending step's tuple was a
third of the objects a young collection walked under live clicks), and they are written
and read back by joining and splitting.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Final

import orjson

from recstream.model.features import ACTION_IDS
from recstream.streams.records import SessionSummary
from recstream.streams.scoring import Token, new_token
from recstream.streams.settings import Settings

SEARCH: Final = ACTION_IDS["search"]
#: Action code -> action name (codes are the model's ACTION_IDS).
ACTION_NAMES: Final = {code: name for name, code in ACTION_IDS.items()}
PURCHASE: Final = ACTION_IDS["purchase"]
#: Queries are stored cut to this many characters (the model reads the first words).
MAX_STORED_QUERY: Final = 100
_HASH_BYTES: Final = 6
#: Copied for every event id hashed (see :func:`event_hash`); never updated itself.
_EVENT_HASHER: Final = hashlib.blake2b(digest_size=_HASH_BYTES)
_FORMAT: Final = 2
_FORMAT_TAG: Final = bytes([_FORMAT])
_HEADER: Final = struct.Struct("<BddIII")
#: C0 control characters (the stored action codes are among them) -> space.
_CONTROL_TO_SPACE: Final = dict.fromkeys(range(0x20), " ")
#: Stored texts: keep only the action codes / turn every code into one separator.
_NOT_CODES: Final = bytes(range(0x20, 0x100)) + b"\x00"
_CODES_TO_SEP: Final = bytes.maketrans(bytes(range(1, 0x20)), b"\x1f" * 0x1F)
#: Action code (a C0 character's number) -> that character, as the stored texts hold it.
_CODE_CHARS: Final = {code: chr(code) for code in range(1, 0x20)}
_SEARCH_CHAR: Final = chr(SEARCH)
_PURCHASE_CHAR: Final = chr(PURCHASE)
_NOTHING_BOUGHT: Final[frozenset[str]] = frozenset()


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


#: One step of the history or of the pending events: chr(action code) + item id or
#: query text (its stored text).
HistoryStep = str
#: One event for :func:`apply`: (event time, its step).
Step = tuple[float, HistoryStep]


@dataclass(slots=True)
class UserState:
    """Everything kept about one user; see the module docstring.

    ``history`` and ``pending`` hold :data:`HistoryStep` strings (:func:`history_step`
    makes one); ``pending_times`` holds the pending steps' event times, one per step.
    ``seen`` is the de-duplication memory: the 6-byte hashes (:func:`event_hash`) of
    the user's most recent event ids, concatenated, oldest first.
    """

    last_ts: float = 0.0
    closed_until: float = 0.0
    history: list[HistoryStep] = field(default_factory=list)
    pending: list[HistoryStep] = field(default_factory=list)
    pending_times: list[float] = field(default_factory=list)
    seen: bytes = b""
    #: The scoring tokens of ``history + pending``: built by the first :meth:`tokens`
    #: call, then kept in step by :func:`apply` and the sweep (not stored, not compared).
    token_list: list[Token] | None = field(default=None, init=False, compare=False, repr=False)
    #: The stored form's texts of ``history``, kept between writes: the history changes
    #: only when a session is finalized, the pending events at every event.  Made by the
    #: first :meth:`to_bytes`, then kept in step when sessions move into the history
    #: (their texts appended, the trimmed steps' cut off; not stored, not compared).
    history_texts: bytes | None = field(default=None, init=False, compare=False, repr=False)
    #: ``pending`` cut into sessions (:func:`_split`) under ``parts_rules``: the index
    #: in ``pending`` where each session starts.  Made when first needed, then kept in
    #: step by :func:`apply` for events that arrive in order and by retirements (not
    #: stored, not compared).
    starts: list[int] | None = field(default=None, init=False, compare=False, repr=False)
    parts_rules: SessionRules | None = field(default=None, init=False, compare=False, repr=False)
    #: What :func:`apply` answered for the last session of ``starts``, kept while events
    #: arriving in order extend it (not stored, not compared).
    open_session: OpenSession | None = field(default=None, init=False, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The stored form (format 2, in the module docstring)."""
        history, pending, seen = self.history, self.pending, self.seen
        n = len(pending)
        head = _HEADER.pack(
            _FORMAT, self.last_ts, self.closed_until, len(history), n, len(seen) // _HASH_BYTES
        )
        times = _times(n).pack(*self.pending_times)
        history_texts = self.history_texts
        if history_texts is None:
            history_texts = self.history_texts = "".join(history).encode("utf-8")
        pending_texts = "".join(pending).encode("utf-8")
        return b"".join((head, times, seen, history_texts, pending_texts))

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        """Read what :meth:`to_bytes` wrote, or the JSON of format 1; ValueError if neither."""
        if raw[:1] != _FORMAT_TAG:
            if raw[:1] == b"[":
                return cls._from_json(raw)
            raise ValueError(f"unknown user state format {raw[:1]!r}")
        try:
            _, last_ts, closed_until, n_history, n, n_seen = _HEADER.unpack_from(raw)
            times = _times(n).unpack_from(raw, _HEADER.size)
        except struct.error as exc:
            raise ValueError(f"truncated user state: {exc}") from None
        start = _HEADER.size + 8 * n
        end = start + n_seen * _HASH_BYTES
        blob = raw[end:]
        codes = blob.translate(None, _NOT_CODES)
        # One more part than codes; the first (before the first code) must be empty.
        texts = blob.translate(_CODES_TO_SEP).decode("utf-8").split("\x1f")
        if len(raw) < end or texts[0] or len(codes) != n_history + n:
            raise ValueError("corrupt user state: its counts do not match its contents")
        del texts[0]
        # Code characters put back before the texts (C loops over lengths that match).
        steps = list(map(str.__add__, codes.decode("ascii"), texts))
        return cls(
            last_ts, closed_until, steps[:n_history], steps[n_history:], list(times), raw[start:end]
        )

    @classmethod
    def _from_json(cls, raw: bytes) -> UserState:
        """Format 1: ``[1, last_ts, closed_until, history, pending, seen_base64]``.

        Its queries may hold control characters: they become spaces, as in :func:`step_of`.
        """
        fmt, last_ts, closed_until, history, pending, seen_b64 = orjson.loads(raw)
        if fmt != 1:
            raise ValueError(f"unknown user state format {fmt!r}")
        return cls(
            last_ts=last_ts,
            closed_until=closed_until,
            history=[history_step(code, _without_controls(text)) for code, text in history],
            pending=[history_step(code, _without_controls(text)) for _, code, text in pending],
            pending_times=[ts for ts, _, _ in pending],
            seen=base64.b64decode(seen_b64),
        )

    def tokens(self, limit: int) -> list[Token]:
        """The user's most recent ``limit`` tokens, oldest first (the model's input).

        The first call builds the tokens of all steps; later calls on the same state
        object (a user's next events, in this batch or, through the pipeline's cache of
        decoded states, in later ones) only slice them.
        """
        tokens = self.token_list
        if tokens is None:
            tokens = self.token_list = list(map(_token, self.history))  # a C loop
            tokens += map(_token, self.pending)
        return tokens[-limit:]


class Status(StrEnum):
    """What applying an event did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


# The members as module names: in Python 3.11 reading a member off its enum class
# takes ~80 ns, and every event reads two or three.
APPLIED, DUPLICATE, LATE = Status.APPLIED, Status.DUPLICATE, Status.LATE


@dataclass(slots=True)
class OpenSession:
    """The session an applied event landed in, as the recommender needs it."""

    session_id: str
    purchased: frozenset[str]


@dataclass(slots=True)
class Applied:
    """The result of :func:`apply`: the new state, sessions it closed, the event's session."""

    status: Status
    state: UserState
    closed: list[SessionSummary]
    session: OpenSession | None = None


def event_hash(event_id: str) -> bytes:
    """The 48-bit (6-byte) hash of an event id that the de-duplication memory stores."""
    # A copy of a ready hasher: blake2b's constructor parses its keywords on every call.
    hasher = _EVENT_HASHER.copy()
    hasher.update(event_id.encode("utf-8"))
    return hasher.digest()


def history_step(code: int, text: str) -> HistoryStep:
    """The history's form of a step with action ``code`` and ``text`` (no C0 characters)."""
    return _CODE_CHARS[code] + text


def step_of(action: str, ts: float, item_id: str | None, query: str | None) -> Step:
    """A click (``action``, ``item_id``) or a search (``query``) at ``ts``, as
    :func:`apply` takes it.

    C0 control characters become spaces (the stored form reserves them); the words of
    a query (``features.query_words``) stay the same, and valid item ids have none.
    """
    if action == "search":
        return (ts, _SEARCH_CHAR + _without_controls((query or "")[:MAX_STORED_QUERY]))
    return (ts, _CODE_CHARS[ACTION_IDS[action]] + _without_controls(item_id or ""))


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
    if rules.dedup_window and remembered(st.seen, digest):
        return Applied(DUPLICATE, st, [])
    ts, text = step
    closed: list[SessionSummary] = []
    if st.last_ts and ts - st.last_ts > rules.ttl:
        # The user was idle past the TTL: what a sweep would have dropped is dropped.
        closed = _finalize(st, user_id, float("inf"), rules)
        st = UserState()
    elif st.last_ts and (ts < st.last_ts - rules.lateness or ts <= st.closed_until):
        return Applied(LATE, st, [])
    pending, times = st.pending, st.pending_times
    at = _place(times, pending, ts, text)
    pending.insert(at, text)
    times.insert(at, ts)
    if st.token_list is not None:
        st.token_list.insert(len(st.history) + at, _token(text))
    if rules.dedup_window:
        st.seen = (st.seen + digest)[-rules.dedup_window * _HASH_BYTES :]
    if ts > st.last_ts:  # not max(): a builtin call with keyword parsing, per event
        st.last_ts = ts
    starts = st.starts if st.parts_rules is rules else None
    last_step = at == len(pending) - 1
    grown = False  # whether the step only extended the kept split's last session
    if starts is None or not last_step:
        starts = _split(times, rules)
    elif starts and ts - times[at - 1] <= rules.gap and at - starts[-1] < rules.max_events:
        grown = True  # in order: the last session grows at its end, as _split would cut it
    else:
        starts.append(at)
    n = len(pending)
    # A lone session holds this step, so it ends at or after the horizon: it stays open.
    retired = (
        _finalize_split(st, user_id, st.last_ts - rules.lateness, rules, starts, closed)
        if len(starts) > 1
        else 0
    )
    _keep_parts(st, rules, starts, retired)
    if last_step:  # the newest step is in the last session, which is never retired
        return Applied(APPLIED, st, closed, _last_session(st, user_id, grown, text))
    # An accepted step is at or after the horizon: its session was not retired either.
    st.open_session = None  # a step inside the split: the last session may have changed
    return Applied(APPLIED, st, closed, _session_containing(st, user_id, at - (n - len(pending))))


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
    starts = _parts(state, rules)
    if not starts:
        return expiry
    first_size = starts[1] if len(starts) > 1 else len(state.pending)  # the first starts at 0
    end = state.pending_times[first_size - 1]
    if first_size >= rules.max_events and len(starts) > 1:
        closes = end + rules.lateness
    else:
        closes = end + rules.gap + rules.lateness
    return closes if closes < expiry else expiry


def latest_session(
    state: UserState, user_id: str, rules: SessionRules
) -> tuple[SessionSummary, list[tuple[float, int, str]]] | None:
    """The last of the user's pending sessions (the open one, as far as ``state`` knows):
    its summary so far and its events as (time, action code, text), oldest first; None
    when nothing is pending."""
    starts = _parts(state, rules)
    if not starts:
        return None
    start, stop = starts[-1], len(state.pending)
    steps = [
        (ts, ord(step[0]), step[1:])
        for ts, step in zip(state.pending_times[start:], state.pending[start:], strict=True)
    ]
    return _summary(user_id, state, start, stop), steps


def remembered(seen: bytes, digest: bytes) -> bool:
    """Whether ``digest`` is one of the 6-byte hashes concatenated in ``seen``.

    Only a match at a multiple of 6 counts: the end of one hash followed by the start
    of the next is no hash that was seen.
    """
    at = seen.find(digest)
    while at >= 0:
        if at % _HASH_BYTES == 0:
            return True
        at = seen.find(digest, at + 1)
    return False


def _place(times: list[float], pending: list[HistoryStep], ts: float, step: HistoryStep) -> int:
    """Where a step at ``ts`` goes in the pending events: after those at earlier times,
    and among those at the same time after the smaller texts and the equal ones."""
    at = bisect_right(times, ts)
    # Ties are ordered by their texts, so any arrival order gives one order.
    while at and times[at - 1] == ts and pending[at - 1] > step:
        at -= 1
    return at


@lru_cache(maxsize=256)
def _times(n: int) -> struct.Struct:
    """The layout of ``n`` event times (little-endian doubles)."""
    return struct.Struct(f"<{n}d")


def _without_controls(text: str) -> str:
    """``text`` with its C0 control characters replaced by spaces."""
    return text if text.isprintable() else text.translate(_CONTROL_TO_SPACE)


@lru_cache(maxsize=65_536)
def _token(step: HistoryStep) -> Token:
    """The (shared, immutable) scoring token of a step in the history's form."""
    code, text = ord(step[0]), step[1:]
    if code == SEARCH:
        return new_token(None, "search", text)
    return new_token(text, ACTION_NAMES[code], None)


def _split(times: list[float], rules: SessionRules) -> list[int]:
    """Pending events (their ``times``) cut into sessions by the gap and length rules:
    the index at which each session starts."""
    starts: list[int] = []
    previous = 0.0
    for at, ts in enumerate(times):
        if not starts or ts - previous > rules.gap or at - starts[-1] >= rules.max_events:
            starts.append(at)
        previous = ts
    return starts


def _finalize(
    st: UserState, user_id: str, horizon: float, rules: SessionRules
) -> list[SessionSummary]:
    """Emit and retire, oldest first, pending sessions no event at/after ``horizon`` can touch."""
    closed: list[SessionSummary] = []
    parts = _parts(st, rules)
    _keep_parts(st, rules, parts, _finalize_split(st, user_id, horizon, rules, parts, closed))
    return closed


def _parts(st: UserState, rules: SessionRules) -> list[int]:
    """``st.pending`` cut into sessions: the kept split when it was made under ``rules``."""
    if st.starts is not None and st.parts_rules is rules:
        return st.starts
    return _split(st.pending_times, rules)


def _keep_parts(st: UserState, rules: SessionRules, starts: list[int], retired: int) -> None:
    """Keep ``starts`` less the ``retired`` first sessions (whose steps left ``pending``)
    as ``st``'s split."""
    if retired:
        removed = starts[retired] if retired < len(starts) else 0
        starts = [start - removed for start in starts[retired:]]
    st.starts, st.parts_rules = starts, rules


def _finalize_split(
    st: UserState,
    user_id: str,
    horizon: float,
    rules: SessionRules,
    starts: list[int],
    closed: list[SessionSummary],
) -> int:
    """:func:`_finalize` on the already split pending events; returns how many it retired."""
    times = st.pending_times
    retired = steps_retired = 0
    for index, start in enumerate(starts):
        followed = index + 1 < len(starts)
        stop = starts[index + 1] if followed else len(times)
        end = times[stop - 1]
        if end + rules.gap < horizon:
            st.closed_until = max(st.closed_until, end + rules.gap)
        elif followed and stop - start >= rules.max_events and end < horizon:
            st.closed_until = max(st.closed_until, end)
        else:
            break
        closed.append(_summary(user_id, st, start, stop))
        retired += 1
        steps_retired = stop
    if steps_retired:
        moved = st.pending[:steps_retired]
        del st.pending[:steps_retired]
        del times[:steps_retired]
        st.history += moved
        dropped = max(0, len(st.history) - rules.history_length)
        if st.history_texts is not None:  # kept in step, not rebuilt from all the history
            texts = st.history_texts + "".join(moved).encode("utf-8")
            st.history_texts = texts[_stored_size(st.history[:dropped]) :]
        if dropped:
            del st.history[:dropped]
            if st.token_list is not None:  # history + pending kept its order
                del st.token_list[:dropped]
    return retired


def _stored_size(history: list[HistoryStep]) -> int:
    """The bytes the stored texts of ``history`` take (UTF-8)."""
    texts = "".join(history)
    return len(texts) if texts.isascii() else len(texts.encode("utf-8"))


def _summary(user_id: str, st: UserState, start: int, stop: int) -> SessionSummary:
    """The summary of the pending session ``st.pending[start:stop]``."""
    counts = dict.fromkeys(ACTION_IDS, 0)
    items: dict[str, None] = {}
    searches: dict[str, None] = {}
    for step in st.pending[start:stop]:
        code, text = ord(step[0]), step[1:]
        counts[ACTION_NAMES[code]] += 1
        if code == SEARCH:
            searches[text] = None
        else:
            items[text] = None
    first = st.pending_times[start]
    return SessionSummary(  # by position: the generated __init__ matches keywords in Python
        user_id,
        session_id_of(user_id, first),
        first,
        st.pending_times[stop - 1],
        counts,
        tuple(items),
        tuple(searches),
    )


def _session_containing(st: UserState, user_id: str, at: int) -> OpenSession:
    """The session of the pending step at index ``at`` (of the kept split)."""
    starts = st.starts
    assert starts is not None  # apply keeps its split before asking
    index = bisect_right(starts, at) - 1
    stop = starts[index + 1] if index + 1 < len(starts) else len(st.pending)
    return _open_session(st, user_id, starts[index], stop)


def _last_session(st: UserState, user_id: str, grown: bool, step: HistoryStep) -> OpenSession:
    """The last pending session, which ends with ``step``: the kept one, grown by
    ``step``, when the step only extended it (``grown``)."""
    session = st.open_session
    if session is None or not grown:
        starts = st.starts
        assert starts is not None  # apply keeps its split before asking
        session = _open_session(st, user_id, starts[-1], len(st.pending))
    elif step[0] == _PURCHASE_CHAR and step[1:] not in session.purchased:
        session = OpenSession(session.session_id, session.purchased | {step[1:]})
    st.open_session = session
    return session


def _open_session(st: UserState, user_id: str, start: int, stop: int) -> OpenSession:
    """What :func:`apply` answers for the pending session ``st.pending[start:stop]``."""
    bought = [step[1:] for step in st.pending[start:stop] if step[0] == _PURCHASE_CHAR]
    # Most sessions buy nothing: they share one empty set (one container less to collect).
    purchased = frozenset(bought) if bought else _NOTHING_BOUGHT
    return OpenSession(session_id_of(user_id, st.pending_times[start]), purchased)
