"""Typed events in and out, and the one place raw JSON becomes a typed record.

Input topics carry JSON objects (see ``schemas/``).  Workers decode raw bytes in
bulk with orjson and validate them here; anything that does not validate raises
:class:`InvalidEvent` with a reason code, and the caller dead-letters it.

Records are frozen, slotted dataclasses rather than ``faust.Record``: building a
``faust.Record`` per event costs more than the rest of the hot path together, and
these are just as typed (mypy checks every field) and serialise with orjson.

Timestamps (``ts``) are read by one rule: a JSON string is ISO-8601 and must carry
a zone (``Z`` or ``+hh:mm``); a JSON number is epoch seconds, or epoch
milliseconds when its magnitude is at least 1e11 (1e11 s would be the year 5138).
Internally every time is float epoch seconds (UTC), and output events carry the
same.
"""

from __future__ import annotations

import base64
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Final, Generic, TypeVar, cast

import orjson

ACTIONS: Final = ("view", "add_to_cart", "purchase")
LABELS: Final = ("negative", "neutral", "positive")

#: Earliest accepted event time: 2000-01-01T00:00:00Z.
MIN_TS: Final = 946_684_800.0
#: Epoch numbers at or above this are milliseconds.
MILLIS_THRESHOLD: Final = 1e11
MAX_ID_CHARS: Final = 256
MAX_QUERY_CHARS: Final = 1_024
MAX_TEXT_CHARS: Final = 20_000
MAX_RESULTS: Final = 200


class Reason(StrEnum):
    """Why a record was dead-lettered (the ``error`` field starts with one of these)."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_ACTION = "unknown_action"
    LATE = "late"


class InvalidEvent(ValueError):
    """A record that cannot be processed; ``reason`` is a :class:`Reason`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


RecordT = TypeVar("RecordT")


class RecordBuilder(Generic[RecordT]):
    """Builds many instances of a frozen, slotted dataclass at once, without ``__init__``.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``
    in Python (~1 us per ``ScoredItem`` on a loaded machine, thousands per batch).
    Here each field's slot descriptor is mapped over a whole column, in C: about
    twice as fast, and the instances are equal to ``cls(*row)`` (tested).  Only for
    dataclasses whose slots are exactly their fields and without ``__post_init__``.
    """

    def __init__(self, cls: type[RecordT]) -> None:
        names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        if getattr(cls, "__slots__", None) != names or hasattr(cls, "__post_init__"):
            raise TypeError(f"{cls.__name__} is not a slotted dataclass without __post_init__")
        self._cls = cls
        self._setters = [getattr(cls, name).__set__ for name in names]

    def build(self, count: int, *columns: Iterable[object]) -> list[RecordT]:
        """``count`` instances; ``columns`` (one per field, in order) hold >= ``count`` values."""
        if len(columns) != len(self._setters):
            raise TypeError(f"{len(self._setters)} columns needed, got {len(columns)}")
        records = list(map(object.__new__, repeat(self._cls, count)))
        for setter, column in zip(self._setters, columns, strict=True):
            deque(map(setter, records, column), maxlen=0)
        return cast(list[RecordT], records)


# ----------------------------------------------------------------------------
# Input events
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Click:
    """A view, add-to-cart or purchase of one item."""

    event_id: str
    user_id: str
    item_id: str
    action: str
    ts: float
    session_id: str | None = None
    price: float | None = None
    category: str | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """A search query, with the item ids shown for it when known."""

    event_id: str
    user_id: str
    query: str
    ts: float
    results: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Review:
    """A product review in any language, with optional 1-5 stars."""

    event_id: str
    user_id: str
    item_id: str
    text: str
    ts: float
    rating: int | None = None
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """A request to purge everything recstream holds about a user."""

    event_id: str
    user_id: str
    ts: float


Event = Click | Search | Review


# ----------------------------------------------------------------------------
# Output events
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top items for a user right after one of their clicks or searches."""

    user_id: str
    session_id: str
    trigger_event_id: str
    items: tuple[ScoredItem, ...]
    model_version: str
    event_ts: float
    emitted_at: float
    fallback: bool = False

    def json_object(self) -> dict[str, object]:
        """The fields as a dict (see :func:`to_json`), the items as objects too."""
        return {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "trigger_event_id": self.trigger_event_id,
            "items": [{"item_id": item.item_id, "score": item.score} for item in self.items],
            "model_version": self.model_version,
            "event_ts": self.event_ts,
            "emitted_at": self.emitted_at,
            "fallback": self.fallback,
        }


@dataclass(frozen=True, slots=True)
class Sentiment:
    """The sentiment of one review; ``probs`` maps each label to its probability."""

    event_id: str
    user_id: str
    item_id: str
    label: str
    probs: dict[str, float]
    model_version: str
    flags: tuple[str, ...] = ()

    def json_object(self) -> dict[str, object]:
        """The fields as a dict (see :func:`to_json`)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "label": self.label,
            "probs": self.probs,
            "model_version": self.model_version,
            "flags": self.flags,
        }


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A closed session window."""

    user_id: str
    session_id: str
    start_ts: float
    end_ts: float
    counts: dict[str, int]
    items: tuple[str, ...]
    searches: tuple[str, ...]

    def json_object(self) -> dict[str, object]:
        """The fields as a dict (see :func:`to_json`)."""
        return {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "counts": self.counts,
            "items": self.items,
            "searches": self.searches,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with the reason and its original bytes."""

    source_topic: str
    partition: int
    offset: int
    error: str
    payload: str
    received_at: float = field(default_factory=time.time)

    @classmethod
    def of(
        cls, source_topic: str, partition: int, offset: int, error: str, raw: bytes | None
    ) -> DeadLetter:
        """Build a dead letter, base64-encoding the original payload."""
        payload = base64.b64encode(raw or b"").decode("ascii")
        return cls(source_topic, partition, offset, error, payload)

    def json_object(self) -> dict[str, object]:
        """The fields as a dict (see :func:`to_json`)."""
        return {
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "payload": self.payload,
            "received_at": self.received_at,
        }


OutputRecord = Recommendation | Sentiment | SessionSummary | DeadLetter


#: The output records, which :func:`to_json` writes through their ``json_object``.
OUTPUT_TYPES: Final = frozenset((Recommendation, Sentiment, SessionSummary, DeadLetter))


def to_json(record: OutputRecord | Event | Forget) -> bytes:
    """Serialise any record to JSON bytes (the format of every topic), fields in order.

    orjson reads a slotted dataclass field by field through its class's field table,
    several times slower than the same fields in a dict (orjson 3.13; benchmarks/speed_log.md),
    and an output record is written per event.  So output records are handed over as
    the dict of their ``json_object`` (the same JSON, tested against orjson's own for
    each class); input events, written only by producers and replays, go as they are.
    """
    if type(record) in OUTPUT_TYPES:
        return orjson.dumps(cast(OutputRecord, record).json_object())
    return orjson.dumps(record)


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


def loads(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Decode one raw record to a JSON object, or raise :class:`InvalidEvent`."""
    if raw is None:
        raise InvalidEvent(Reason.BAD_JSON, "empty record (null value)")
    if len(raw) > max_bytes:
        raise InvalidEvent(Reason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower() or "surrogate" in str(exc).lower():
            raise InvalidEvent(Reason.NOT_UTF8, "payload is not valid UTF-8") from None
        raise InvalidEvent(Reason.BAD_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise InvalidEvent(Reason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_ts(value: object, *, now: float | None = None, max_future_s: float = 86_400.0) -> float:
    """Read a timestamp by the module's rule and check it is plausible."""
    if type(value) is float and MIN_TS <= value < MILLIS_THRESHOLD:  # the common case
        ts = value
    elif isinstance(value, bool):
        raise InvalidEvent(Reason.BAD_TIMESTAMP, "ts must be a number or an ISO-8601 string")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidEvent(Reason.BAD_TIMESTAMP, "ts is not finite")
        ts = float(value) / 1000.0 if abs(value) >= MILLIS_THRESHOLD else float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(Reason.BAD_TIMESTAMP, f"not ISO-8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent(Reason.BAD_TIMESTAMP, "ISO-8601 ts must carry a zone (Z or +hh:mm)")
        ts = parsed.timestamp()
    else:
        raise InvalidEvent(Reason.BAD_TIMESTAMP, "ts must be a number or an ISO-8601 string")
    limit = (time.time() if now is None else now) + max_future_s
    if ts < MIN_TS or ts > limit:
        raise InvalidEvent(
            Reason.BAD_TIMESTAMP, f"ts {ts:.0f} outside [2000-01-01, now + {max_future_s:.0f}s]"
        )
    return ts


def _ident(obj: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS and value.isprintable():
        return value  # the common case, checked first
    if value is None:
        if required:
            raise InvalidEvent(Reason.MISSING_FIELD, f"{name} is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric ids are common in shop logs; they mean the same string
    if not isinstance(value, str):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string")
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} must have 1..{MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} contains control characters")
    return value


def _require_id(obj: dict[str, Any], name: str) -> str:
    value = _ident(obj, name)
    if value is None:  # unreachable: _ident raises for a required field
        raise InvalidEvent(Reason.MISSING_FIELD, f"{name} is required")
    return value


def _text(obj: dict[str, Any], name: str, limit: int) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidEvent(Reason.MISSING_FIELD, f"{name} is required")
    if not isinstance(value, str):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string")
    if len(value) > limit:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} longer than {limit} characters")
    return value


def _event_ts(obj: dict[str, Any], now: float | None) -> float:
    if "ts" not in obj:
        raise InvalidEvent(Reason.MISSING_FIELD, "ts is required")
    return parse_ts(obj["ts"], now=now)


def _number(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a number")
    if not math.isfinite(value) or value < 0:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} must be finite and >= 0")
    return float(value)


def parse_click(obj: dict[str, Any], *, now: float | None = None) -> Click:
    """Validate a clicks-topic object."""
    action = obj.get("action")
    if action is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "action is required")
    if not isinstance(action, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "action must be a string")
    if action not in ACTIONS:
        raise InvalidEvent(Reason.UNKNOWN_ACTION, f"action {action[:40]!r} not in {ACTIONS}")
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "category must be a string")
    return Click(
        event_id=_require_id(obj, "event_id"),
        user_id=_require_id(obj, "user_id"),
        item_id=_require_id(obj, "item_id"),
        action=action,
        ts=_event_ts(obj, now),
        session_id=_ident(obj, "session_id", required=False),
        price=_number(obj, "price"),
        category=category[:MAX_ID_CHARS] if category else None,
    )


_CLICK_FIELDS: Final = itemgetter("event_id", "user_id", "item_id", "action", "ts")
_ACTION_SET: Final = frozenset(ACTIONS)
_CLICKS: Final = RecordBuilder(Click)
_STR, _FLOAT = frozenset([str]), frozenset([float])


def parse_clicks(
    objs: Sequence[dict[str, Any]],
    *,
    now: float | None = None,
    max_future_s: float = 86_400.0,
    user_ids: Callable[[str], str] | None = None,
) -> list[Click] | None:
    """:func:`parse_click` for a whole batch, column by column; None unless every object
    is a click in the common form (string ids, a float epoch-seconds ts, a float price).
    ``user_ids`` maps each valid user id to the one the records carry (pseudonyms).

    A None sends the caller to :func:`parse_click` one object at a time, which accepts
    the other forms and names the reason of each invalid one: whatever this accepts,
    that accepts too, into equal records (tested).
    """
    try:
        rows = list(map(_CLICK_FIELDS, objs))
    except (KeyError, TypeError):  # a field missing, or not an object
        return None
    if not rows:
        return []
    event_ids, user_id_column, item_ids, actions, stamps = zip(*rows, strict=True)
    ids = list(chain(event_ids, user_id_column, item_ids))
    sessions = list(map(dict.get, objs, repeat("session_id")))
    prices = list(map(dict.get, objs, repeat("price")))
    categories = list(map(dict.get, objs, repeat("category")))
    given_sessions = [value for value in sessions if value is not None]
    given_prices = [value for value in prices if value is not None]
    given_categories = [value for value in categories if value is not None]
    ids += given_sessions
    limit = (time.time() if now is None else now) + max_future_s
    try:  # str.isprintable raises for anything but a string
        lengths = set(map(len, ids))
        ids_valid = all(map(str.isprintable, ids))
    except TypeError:
        return None
    if not (
        ids_valid
        and min(lengths) > 0
        and max(lengths) <= MAX_ID_CHARS
        and _ACTION_SET.issuperset(actions)
        and set(map(type, stamps)) == _FLOAT
        and min(stamps) >= MIN_TS
        and (latest := max(stamps)) < MILLIS_THRESHOLD
        and latest <= limit
        and set(map(type, given_prices)) <= _FLOAT
        and all(map(math.isfinite, given_prices))
        and min(given_prices, default=0.0) >= 0
        and set(map(type, given_categories)) <= _STR
        and min(map(len, given_categories), default=1) > 0
        and max(map(len, given_categories), default=0) <= MAX_ID_CHARS
    ):
        return None
    users = user_id_column if user_ids is None else map(user_ids, user_id_column)
    return _CLICKS.build(
        len(rows), event_ids, users, item_ids, actions, stamps, sessions, prices, categories
    )


def parse_search(obj: dict[str, Any], *, now: float | None = None) -> Search:
    """Validate a searches-topic object."""
    results = obj.get("results") or []
    if not isinstance(results, list) or len(results) > MAX_RESULTS:
        raise InvalidEvent(Reason.WRONG_TYPE, f"results must be a list of <= {MAX_RESULTS} ids")
    ids = tuple(_require_id({"results": r}, "results") for r in results)
    return Search(
        event_id=_require_id(obj, "event_id"),
        user_id=_require_id(obj, "user_id"),
        query=_text(obj, "query", MAX_QUERY_CHARS),
        ts=_event_ts(obj, now),
        results=ids,
    )


def parse_review(obj: dict[str, Any], *, now: float | None = None) -> Review:
    """Validate a reviews-topic object."""
    rating = obj.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            raise InvalidEvent(Reason.WRONG_TYPE, "rating must be a number")
        if rating != int(rating) or not 1 <= rating <= 5:
            raise InvalidEvent(Reason.BAD_VALUE, "rating must be an integer from 1 to 5")
        rating = int(rating)
    lang = obj.get("lang")
    if lang is not None and (not isinstance(lang, str) or len(lang) > 16):
        raise InvalidEvent(Reason.WRONG_TYPE, "lang must be a short string")
    return Review(
        event_id=_require_id(obj, "event_id"),
        user_id=_require_id(obj, "user_id"),
        item_id=_require_id(obj, "item_id"),
        text=_text(obj, "text", MAX_TEXT_CHARS),
        ts=_event_ts(obj, now),
        rating=rating,
        lang=lang,
    )


def parse_forget(obj: dict[str, Any], *, now: float | None = None) -> Forget:
    """Validate a privacy-topic ``forget`` object."""
    return Forget(
        event_id=_require_id(obj, "event_id"),
        user_id=_require_id(obj, "user_id"),
        ts=_event_ts(obj, now),
    )


#: Which parser reads which input topic kind.
PARSERS: Final = {
    "clicks": parse_click,
    "searches": parse_search,
    "reviews": parse_review,
    "privacy": parse_forget,
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The canonical JSON object of an input event (what the topics and JSONL logs hold).

    Reads the slots directly: ``dataclasses.asdict`` deep-copies and was a third of a
    replay's time.
    """
    out: dict[str, Any] = {}
    for name in event.__slots__:
        value = getattr(event, name)
        if value is None or value == ():
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def kind_of(obj: dict[str, Any]) -> str:
    """The input topic of a canonical JSONL object: by its ``action``, ``query`` or ``text``."""
    if "action" in obj:
        return "clicks"
    if "query" in obj:
        return "searches"
    if "text" in obj:
        return "reviews"
    raise InvalidEvent(Reason.MISSING_FIELD, "not a click, search or review (no action/query/text)")


def topic_of(event: Event) -> str:
    """The input topic kind an event belongs on."""
    if isinstance(event, Click):
        return "clicks"
    if isinstance(event, Search):
        return "searches"
    return "reviews"
