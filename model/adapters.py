"""Real shop logs in their published formats → canonical recstream input events.

Every format ends as :class:`~recstream.streams.records.Click`,
:class:`~recstream.streams.records.Search` or :class:`~recstream.streams.records.Review`
records, built through the same validators the worker uses (``records.parse_*``),
so an event read here is exactly what the topics would accept.

Formats (``FORMATS``):

``jsonl``
    The canonical event log: one input-event JSON object per line.  The topic is
    inferred from the keys: ``action`` → click, ``query`` → search, ``text`` → review.
    File order is kept.
``sasrec``
    ``user item`` per line (ids from 1), each user's lines together and in time
    order, no timestamps (the SASRec paper's preprocessed Amazon files).  Every line
    is a ``view``; its time is synthesised as ``SASREC_BASE_TS + 60 s × (line - 1)``,
    so a user's events are 60 s apart and the whole file is in time order.
``diginetica``
    CIKM Cup 2016 item views, ``;``-separated with the header
    ``session_id;user_id;item_id;timeframe;eventdate``.  ``ts`` is midnight UTC of
    ``eventdate`` plus ``timeframe`` milliseconds.  The user is the session's
    ``user_id`` when any row of the session gives one, else ``session-<session_id>``
    (most sessions are anonymous: ``user_id`` empty or ``NA``).  Events come out in
    time order (ties in file order).
``rees46``
    The REES46 storefront CSV (``event_time,event_type,product_id,category_id,
    category_code,brand,price,user_id,user_session``).  ``view`` / ``cart`` /
    ``purchase`` become ``view`` / ``add_to_cart`` / ``purchase``;
    ``remove_from_cart`` is skipped (counted under its reason).  The published files
    are in time order and may be huge, so file order is kept (streamed).
``ubi``
    OpenSearch User Behavior Insights NDJSON in bulk format (an action line such as
    ``{"index": {"_index": "ubi_queries", "_id": ...}}``, then the document).
    Documents of the queries index become searches: ``user_query``, with
    ``query_response_hit_ids`` as ``results`` when present (at most
    ``records.MAX_RESULTS``); empty queries are skipped.  Documents of the events
    index become clicks when ``action_name`` is ``click`` / ``item_click`` /
    ``product_click`` (→ ``view``), ``add_to_cart`` or ``purchase``; the item is
    ``event_attributes.object.object_id`` (an ASIN in the ESCI data).  Impressions
    are skipped (an item shown is not an interaction), and so are search / typeahead
    events (the queries index already holds the queries) and every other UI action;
    each skip is counted under its reason.  The user is ``user_id`` when non-empty,
    else ``client_id``.  Events come out in time order (the file groups queries
    before events).

Bad lines raise :class:`AdapterError` naming file and line (``strict=True``, the
default), or are skipped and counted in :class:`AdapterStats` (``strict=False``).
Paths ending in ``.gz`` are decompressed on the fly; ``-`` reads standard input.
Formats without event ids get ``<file name>:<line>`` ids, stable across runs.
"""

from __future__ import annotations

import csv
import gzip
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from recstream.streams.records import (
    MAX_RESULTS,
    Click,
    Event,
    InvalidEvent,
    parse_click,
    parse_review,
    parse_search,
)

FORMATS: Final = ("jsonl", "sasrec", "diginetica", "rees46", "ubi")

#: Time of the first line of a ``sasrec`` file: 2020-01-01T00:00:00Z.
SASREC_BASE_TS: Final = 1_577_836_800.0
#: Seconds between consecutive lines of a ``sasrec`` file.
SASREC_STEP_S: Final = 60.0

DIGINETICA_HEADER: Final = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
REES46_HEADER: Final = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
REES46_ACTIONS: Final = {"view": "view", "cart": "add_to_cart", "purchase": "purchase"}
UBI_ACTIONS: Final = {
    "click": "view",
    "item_click": "view",
    "product_click": "view",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
}
UBI_SEARCH_ACTIONS: Final = frozenset({"search", "on_search"})

#: How many error messages :class:`AdapterStats` keeps verbatim.
KEPT_ERRORS: Final = 20

_Payload = TypeVar("_Payload")


class AdapterError(ValueError):
    """A line of a log that cannot be read; ``str()`` is ``file:line: message``."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line
        self.message = message


@dataclass
class AdapterStats:
    """What a read produced: events, lines skipped by design, malformed lines."""

    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Lines that are valid but carry nothing recstream uses (e.g. impressions)."""
    malformed: Counter[str] = field(default_factory=Counter)
    """Bad lines dropped in lenient mode, by reason."""
    errors: list[str] = field(default_factory=list)
    """The first :data:`KEPT_ERRORS` malformed-line messages (``file:line: message``)."""
    on_malformed: Callable[[AdapterError], None] | None = None
    """Called with every malformed line as it is dropped (e.g. to print it)."""

    def note_malformed(self, error: AdapterError, reason: str) -> None:
        """Count one malformed line and keep its message if there is room."""
        self.malformed[reason] += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(str(error))
        if self.on_malformed is not None:
            self.on_malformed(error)


@dataclass(frozen=True, slots=True)
class Located:
    """An event with the (1-based) line of the file it came from."""

    line: int
    event: Event


class _Skip(Exception):
    """A valid line that yields no event; ``reason`` is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Bad(Exception):
    """A malformed line; ``reason`` is a short code, the message says more."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def read_events(
    path: str | Path, fmt: str, *, strict: bool = True, stats: AdapterStats | None = None
) -> Iterator[Event]:
    """Canonical events of a log, per user in time order (see the module docstring)."""
    for located in read_located(path, fmt, strict=strict, stats=stats):
        yield located.event


def read_located(
    path: str | Path, fmt: str, *, strict: bool = True, stats: AdapterStats | None = None
) -> Iterator[Located]:
    """Like :func:`read_events`, with the source line of every event."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    stats = stats if stats is not None else AdapterStats()
    reader = _READERS[fmt]
    name = "stdin" if str(path) == "-" else Path(path).name.removesuffix(".gz")
    ctx = _Context(path=str(path), tag=name[:200], strict=strict, stats=stats)
    with _open_binary(path) as handle:
        for located in reader(ctx, _decoded_lines(ctx, handle)):
            stats.events += 1
            yield located


# ----------------------------------------------------------------------------
# Reading lines
# ----------------------------------------------------------------------------


@dataclass
class _Context:
    path: str
    tag: str
    strict: bool
    stats: AdapterStats

    def event_id(self, line: int) -> str:
        return f"{self.tag}:{line}"

    def fail(self, line: int, reason: str, message: str) -> None:
        """Raise in strict mode; count and return in lenient mode."""
        error = AdapterError(self.path, line, message)
        if self.strict:
            raise error
        self.stats.note_malformed(error, reason)


@contextmanager
def _open_binary(path: str | Path) -> Iterator[Iterable[bytes]]:
    """The lines of a file as bytes: plain, gzip (``.gz``) or standard input (``-``)."""
    if str(path) == "-":
        yield sys.stdin.buffer
    elif str(path).endswith(".gz"):
        with gzip.open(path, "rb") as packed:
            yield packed
    else:
        with open(path, "rb") as plain:
            yield plain


def _decoded_lines(ctx: _Context, handle: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """``(line number, text without newline)`` of every non-blank line."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            ctx.fail(number, "not_utf8", "line is not valid UTF-8")
            continue
        text = text.rstrip("\r\n")
        if number == 1:
            text = text.removeprefix("\ufeff")
        if text.strip():
            yield number, text


def _guarded(
    ctx: _Context,
    lines: Iterable[tuple[int, _Payload]],
    convert: Callable[[int, _Payload], Event],
) -> Iterator[Located]:
    """Apply ``convert`` to each line, turning skips and errors into counts or raises."""
    for number, payload in lines:
        try:
            yield Located(number, convert(number, payload))
        except _Skip as skip:
            ctx.stats.skipped[skip.reason] += 1
        except _Bad as bad:
            ctx.fail(number, bad.reason, str(bad))
        except InvalidEvent as invalid:
            ctx.fail(number, invalid.reason.value, str(invalid))


def _time_ordered(located: Iterable[Located]) -> Iterator[Located]:
    """Sort by event time, keeping file order among equal times."""
    return iter(sorted(located, key=lambda item: (item.event.ts, item.line)))


def _validated_click(obj: dict[str, Any]) -> Click:
    return parse_click({k: v for k, v in obj.items() if v is not None and v != ""})


def _csv_fields(text: str, expected: int, sep: str) -> list[str]:
    fields = next(csv.reader([text], delimiter=sep))
    if len(fields) != expected:
        raise _Bad("bad_columns", f"expected {expected} fields, got {len(fields)}")
    return fields


def _check_header(
    ctx: _Context, lines: Iterator[tuple[int, str]], expected: tuple[str, ...], sep: str
) -> None:
    first = next(lines, None)
    if first is None:
        return
    number, text = first
    header = tuple(h.strip() for h in next(csv.reader([text], delimiter=sep)))
    if header != expected:
        # A wrong header means the wrong format: never worth reading on.
        raise AdapterError(ctx.path, number, f"expected header {sep.join(expected)!r}")


# ----------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------


def _read_jsonl(ctx: _Context, lines: Iterator[tuple[int, str]]) -> Iterator[Located]:
    def convert(_number: int, text: str) -> Event:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _Bad("bad_json", f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _Bad("not_object", "expected a JSON object")
        if "action" in obj:
            return parse_click(obj)
        if "query" in obj:
            return parse_search(obj)
        if "text" in obj:
            return parse_review(obj)
        raise _Bad("unknown_kind", "object has none of action, query, text")

    return _guarded(ctx, lines, convert)


def _read_sasrec(ctx: _Context, lines: Iterator[tuple[int, str]]) -> Iterator[Located]:
    def convert(number: int, text: str) -> Event:
        parts = text.split()
        if len(parts) != 2:
            raise _Bad("bad_columns", f"expected 'user item', got {len(parts)} fields")
        return _validated_click(
            {
                "event_id": ctx.event_id(number),
                "user_id": parts[0],
                "item_id": parts[1],
                "action": "view",
                "ts": SASREC_BASE_TS + SASREC_STEP_S * (number - 1),
            }
        )

    return _guarded(ctx, lines, convert)


def _read_diginetica(ctx: _Context, lines: Iterator[tuple[int, str]]) -> Iterator[Located]:
    _check_header(ctx, lines, DIGINETICA_HEADER, ";")
    rows = list(lines)
    # A few sessions log in part-way: their anonymous rows belong to that user too.
    session_user: dict[str, str] = {}
    for _number, text in rows:
        fields = text.split(";")
        if len(fields) == len(DIGINETICA_HEADER) and fields[1].strip() not in ("", "NA"):
            session_user.setdefault(fields[0].strip(), fields[1].strip())

    def convert(number: int, text: str) -> Event:
        session, user, item, timeframe, date = (
            f.strip() for f in _csv_fields(text, len(DIGINETICA_HEADER), ";")
        )
        if user in ("", "NA"):
            user = session_user.get(session, f"session-{session}")
        try:
            day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
            offset_ms = int(timeframe)
        except ValueError:
            raise _Bad("bad_timestamp", f"bad eventdate/timeframe {date!r}/{timeframe!r}") from None
        return _validated_click(
            {
                "event_id": ctx.event_id(number),
                "user_id": user,
                "item_id": item,
                "action": "view",
                "ts": day + offset_ms / 1000.0,
                "session_id": session,
            }
        )

    return _time_ordered(_guarded(ctx, rows, convert))


def _read_rees46(ctx: _Context, lines: Iterator[tuple[int, str]]) -> Iterator[Located]:
    _check_header(ctx, lines, REES46_HEADER, ",")

    def convert(number: int, text: str) -> Event:
        fields = _csv_fields(text, len(REES46_HEADER), ",")
        row = dict(zip(REES46_HEADER, (f.strip() for f in fields), strict=True))
        action = REES46_ACTIONS.get(row["event_type"])
        if action is None:
            if row["event_type"] == "remove_from_cart":
                raise _Skip("rees46 remove_from_cart (not an interest signal)")
            raise _Bad("unknown_action", f"unknown event_type {row['event_type'][:40]!r}")
        try:
            when = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S %Z")
        except ValueError:
            raise _Bad("bad_timestamp", f"bad event_time {row['event_time'][:40]!r}") from None
        try:
            price = float(row["price"]) if row["price"] else None
        except ValueError:
            raise _Bad("bad_value", f"bad price {row['price'][:40]!r}") from None
        return _validated_click(
            {
                "event_id": ctx.event_id(number),
                "user_id": row["user_id"],
                "item_id": row["product_id"],
                "action": action,
                "ts": when.replace(tzinfo=UTC).timestamp(),
                "session_id": row["user_session"],
                "price": price,
                "category": row["category_code"] or row["category_id"],
            }
        )

    return _guarded(ctx, lines, convert)


@dataclass(frozen=True, slots=True)
class _BulkDocument:
    index: str
    doc_id: str
    text: str


def _read_ubi(ctx: _Context, lines: Iterator[tuple[int, str]]) -> Iterator[Located]:
    def convert(number: int, document: _BulkDocument) -> Event:
        return _ubi_event(ctx, number, document)

    return _time_ordered(_guarded(ctx, _ubi_documents(ctx, lines), convert))


def _ubi_documents(
    ctx: _Context, lines: Iterator[tuple[int, str]]
) -> Iterator[tuple[int, _BulkDocument]]:
    """Pair each bulk action line with its document line (numbered by the document's)."""
    for number, text in lines:
        try:
            action = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            ctx.fail(number, "bad_json", f"bulk action line is not JSON: {exc}")
            continue
        if not isinstance(action, dict) or len(action) != 1:
            ctx.fail(number, "bad_bulk", 'expected a bulk action line like {"index": {...}}')
            continue
        ((verb, meta),) = action.items()
        if verb == "delete":
            ctx.stats.skipped["ubi bulk delete"] += 1
            continue
        if verb not in ("index", "create") or not isinstance(meta, dict):
            ctx.fail(number, "bad_bulk", f"unsupported bulk action {verb!r}")
            continue
        document = next(lines, None)
        if document is None:
            ctx.fail(number, "bad_bulk", "bulk action line without a document line")
            return
        doc_number, doc_text = document
        index = str(meta.get("_index") or "")
        yield doc_number, _BulkDocument(index, str(meta.get("_id") or ""), doc_text)


def _ubi_event(ctx: _Context, number: int, document: _BulkDocument) -> Event:
    index = document.index
    try:
        doc = orjson.loads(document.text)
    except orjson.JSONDecodeError as exc:
        raise _Bad("bad_json", f"document is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Bad("not_object", "document is not a JSON object")
    user = doc.get("user_id") or doc.get("client_id")
    event_id = document.doc_id or ctx.event_id(number)
    is_query = "queries" in index or ("events" not in index and "action_name" not in doc)
    if is_query:
        if isinstance(doc.get("user_query"), str) and not doc["user_query"].strip():
            raise _Skip("ubi query with an empty user_query")
        hits = doc.get("query_response_hit_ids") or []
        return parse_search(
            {
                "event_id": event_id,
                "user_id": user,
                "query": doc.get("user_query"),
                "ts": doc.get("timestamp"),
                "results": hits[:MAX_RESULTS] if isinstance(hits, list) else hits,
            }
        )
    name = doc.get("action_name")
    if not isinstance(name, str):
        raise _Bad("missing_field", "event document without action_name")
    if name == "impression":
        raise _Skip("ubi impression (shown, not interacted with)")
    if name in UBI_SEARCH_ACTIONS:
        raise _Skip("ubi search event (queries come from the queries index)")
    action = UBI_ACTIONS.get(name)
    if action is None:
        raise _Skip(f"ubi action {name[:40]} (not a product interaction)")
    attributes = doc.get("event_attributes") or {}
    target = attributes.get("object") if isinstance(attributes, dict) else None
    item = target.get("object_id") if isinstance(target, dict) else None
    if not item:
        raise _Skip(f"ubi {name} without an object_id")
    session = doc.get("session_id") or (
        attributes.get("session_id") if isinstance(attributes, dict) else None
    )
    return _validated_click(
        {
            "event_id": event_id,
            "user_id": user,
            "item_id": item,
            "action": action,
            "ts": doc.get("timestamp"),
            "session_id": session,
        }
    )


_READERS: Final[dict[str, Callable[[_Context, Iterator[tuple[int, str]]], Iterator[Located]]]] = {
    "jsonl": _read_jsonl,
    "sasrec": _read_sasrec,
    "diginetica": _read_diginetica,
    "rees46": _read_rees46,
    "ubi": _read_ubi,
}
