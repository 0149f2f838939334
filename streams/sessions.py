"""Per-user session state and its rules: pure Python, no Faust, no I/O.

A user's state holds the events of the sessions that are not yet *final*
(``pending``, kept sorted by event time), the steps of finalized sessions
(``history``, the most recent ``history_length``, each as its stored text), a small
memory of recent event ids for de-duplication, the user's latest event time and
``closed_until`` (events at or before it would fall into a session that was already
emitted).

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

The history is kept in memory as those stored texts, one string per step, not as
(code, text) tuples: a string is no container for Python's garbage collector, so the
history of every user adds nothing to what its collections walk, and it is written
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
from operator import itemgetter
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
_TS: Final = itemgetter(0)
#: Action code (a C0 character's number) -> that character, as the stored texts hold it.
_CODE_CHARS: Final = {code: chr(code) for code in range(1, 0x20)}
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


#: One stored event: (event time, action code, item id or query text).
Step = tuple[float, int, str]
#: One step of the history: chr(action code) + item id or query text (its stored text).
HistoryStep = str


@dataclass(slots=True)
class UserState:
    """Everything kept about one user; see the module docstring.

    ``history`` holds :data:`HistoryStep` strings (:func:`history_step` makes one).
    ``seen`` is the de-duplication memory: the 6-byte hashes (:func:`event_hash`) of
    the user's most recent event ids, concatenated, oldest first.
    """

    last_ts: float = 0.0
    closed_until: float = 0.0
    history: list[HistoryStep] = field(default_factory=list)
    pending: list[Step] = field(default_factory=list)
    seen: bytes = b""
    #: The scoring tokens of ``history + pending``: built by the first :meth:`tokens`
    #: call, then kept in step by :func:`apply` and the sweep (not stored, not compared).
    token_list: list[Token] | None = field(default=None, init=False, compare=False, repr=False)
    #: The stored form's texts of ``history``, kept between writes: the history changes
    #: only when a session is finalized, the pending events at every event.  Made by the
    #: first :meth:`to_bytes`, then kept in step when sessions move into the history
    #: (their texts appended, the trimmed steps' cut off; not stored, not compared).
    history_texts: bytes | None = field(default=None, init=False, compare=False, repr=False)
    #: ``pending`` cut into sessions (:func:`_split`) under ``parts_rules``: made when
    #: first needed, then kept in step by :func:`apply` for events that arrive in order
    #: and by retirements (not stored, not compared; lists of the same step tuples).
    parts: list[list[Step]] | None = field(default=None, init=False, compare=False, repr=False)
    parts_rules: SessionRules | None = field(default=None, init=False, compare=False, repr=False)
    #: What :func:`apply` answered for the last session of ``parts`` (``open_steps``),
    #: kept while events arriving in order extend it (not stored, not compared).
    open_session: OpenSession | None = field(default=None, init=False, compare=False, repr=False)
    open_steps: list[Step] | None = field(default=None, init=False, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The stored form (format 2, in the module docstring)."""
        history, pending, seen = self.history, self.pending, self.seen
        n = len(pending)
        head = _HEADER.pack(
            _FORMAT, self.last_ts, self.closed_until, len(history), n, len(seen) // _HASH_BYTES
        )
        times = _times(n).pack(*map(_TS, pending))
        history_texts = self.history_texts
        if history_texts is None:
            history_texts = self.history_texts = "".join(history).encode("utf-8")
        pending_texts = _pending_texts(pending)
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
        # Code characters put back before the texts, and zip without strict=True (its
        # keyword is slow to parse): C loops over lengths that match, see above.
        return cls(
            last_ts,
            closed_until,
            list(map(str.__add__, codes[:n_history].decode("ascii"), texts[:n_history])),
            list(zip(times, codes[n_history:], texts[n_history:])),  # noqa: B905
            raw[start:end],
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
            pending=[(ts, code, _without_controls(text)) for ts, code, text in pending],
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
            tokens += map(_token, _history_steps(self.pending))
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
    """The stored form of a click (``action``, ``item_id``) or a search (``query``).

    C0 control characters become spaces (the stored form reserves them); the words of
    a query (``features.query_words``) stay the same, and valid item ids have none.
    """
    if action == "search":
        return (ts, SEARCH, _without_controls((query or "")[:MAX_STORED_QUERY]))
    return (ts, ACTION_IDS[action], _without_controls(item_id or ""))


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
    ts = step[0]
    closed: list[SessionSummary] = []
    if st.last_ts and ts - st.last_ts > rules.ttl:
        # The user was idle past the TTL: what a sweep would have dropped is dropped.
        closed = _finalize(st, user_id, float("inf"), rules)
        st = UserState()
    elif st.last_ts and (ts < st.last_ts - rules.lateness or ts <= st.closed_until):
        return Applied(LATE, st, [])
    pending = st.pending
    at = bisect_right(pending, step)
    pending.insert(at, step)
    if st.token_list is not None:
        st.token_list.insert(len(st.history) + at, _token(_CODE_CHARS[step[1]] + step[2]))
    if rules.dedup_window:
        st.seen = (st.seen + digest)[-rules.dedup_window * _HASH_BYTES :]
    if ts > st.last_ts:  # not max(): a builtin call with keyword parsing, per event
        st.last_ts = ts
    parts = st.parts if st.parts_rules is rules else None
    last_step = at == len(pending) - 1
    if parts is None or not last_step:
        parts = _split(pending, rules)
    elif parts and ts - parts[-1][-1][0] <= rules.gap and len(parts[-1]) < rules.max_events:
        parts[-1].append(step)  # in order: the split grows at its end, as _split would
    else:
        parts.append([step])
    # A lone session holds this step, so it ends at or after the horizon: it stays open.
    retired = (
        _finalize_split(st, user_id, st.last_ts - rules.lateness, rules, parts, closed)
        if len(parts) > 1
        else 0
    )
    parts = _keep_parts(st, rules, parts, retired)
    if last_step:  # the newest step is in the last session, which is never retired
        return Applied(APPLIED, st, closed, _last_session(st, user_id, parts[-1], step))
    return Applied(APPLIED, st, closed, _session_containing(user_id, step, parts))


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
    sessions = _parts(state, rules)
    if not sessions:
        return expiry
    first = sessions[0]
    end = first[-1][0]
    if len(first) >= rules.max_events and len(sessions) > 1:
        closes = end + rules.lateness
    else:
        closes = end + rules.gap + rules.lateness
    return closes if closes < expiry else expiry


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


def _history_steps(steps: list[Step]) -> list[HistoryStep]:
    """:func:`history_step` of each step (inlined: this runs for every user at every save)."""
    # Concatenation in a list comprehension: ~2/3 of the time of one "%c%s" * n format.
    return [_CODE_CHARS[code] + text for _, code, text in steps]


def _pending_texts(pending: list[Step]) -> bytes:
    """The stored texts of pending steps: chr(action code) + text each, UTF-8."""
    return "".join(_history_steps(pending)).encode("utf-8")


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
    parts = _parts(st, rules)
    _keep_parts(st, rules, parts, _finalize_split(st, user_id, horizon, rules, parts, closed))
    return closed


def _parts(st: UserState, rules: SessionRules) -> list[list[Step]]:
    """``st.pending`` cut into sessions: the kept split when it was made under ``rules``."""
    if st.parts is not None and st.parts_rules is rules:
        return st.parts
    return _split(st.pending, rules)


def _keep_parts(
    st: UserState, rules: SessionRules, parts: list[list[Step]], retired: int
) -> list[list[Step]]:
    """Keep ``parts`` less the ``retired`` first sessions as ``st``'s split; returns it."""
    if retired:
        parts = parts[retired:]
    st.parts, st.parts_rules = parts, rules
    return parts


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
        moved = _history_steps(st.pending[:steps_retired])
        del st.pending[:steps_retired]
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
    return SessionSummary(  # by position: the generated __init__ matches keywords in Python
        user_id,
        session_id_of(user_id, start),
        start,
        steps[-1][0],
        counts,
        tuple(items),
        tuple(searches),
    )


def _session_containing(user_id: str, step: Step, parts: list[list[Step]]) -> OpenSession | None:
    for steps in parts:
        if steps[0] <= step <= steps[-1]:
            return _open_session(user_id, steps)
    return None


def _last_session(st: UserState, user_id: str, steps: list[Step], step: Step) -> OpenSession:
    """The session of ``steps``, which ends with ``step``: the kept one, grown by ``step``,
    when ``steps`` only grew since it was made (a list kept in ``parts``)."""
    session = st.open_session
    if session is None or st.open_steps is not steps:
        session = _open_session(user_id, steps)
    elif step[1] == PURCHASE and step[2] not in session.purchased:
        session = OpenSession(session.session_id, session.purchased | {step[2]})
    st.open_session, st.open_steps = session, steps
    return session


def _open_session(user_id: str, steps: list[Step]) -> OpenSession:
    bought = [text for _, code, text in steps if code == PURCHASE]
    # Most sessions buy nothing: they share one empty set (one container less to collect).
    purchased = frozenset(bought) if bought else _NOTHING_BOUGHT
    return OpenSession(session_id_of(user_id, steps[0][0]), purchased)
