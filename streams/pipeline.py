"""The batch processing core, shared by the Faust worker and offline replay (no Faust here).

One batch goes through four steps, so the worker can run the scoring step off its
event loop while offline code simply calls :meth:`Pipeline.run`:

1. :meth:`Pipeline.decode`: raw bytes -> typed events, or dead letters with a reason.
2. :meth:`Pipeline.prepare`: apply clicks and searches to per-user sessions (one
   state read and one write per user per batch), purge forgotten users, and collect
   scoring requests: one recommendation per applied click or search, from the
   user's history after that event, excluding items bought in its session; one
   sentiment per review.  Late events become dead letters.
3. :meth:`Pipeline.score`: one ``recommend`` and one ``classify`` call per batch.
   A scorer error is retried once; if it fails again, the events whose results are
   missing are dead-lettered with reason ``processing_error`` (their state changes stay).
4. :meth:`Pipeline.finish`: typed output records, each naming the model version
   that scored it (scorers may hot-reload a new model between batches).

:meth:`Pipeline.sweep` closes sessions when a partition's event-time watermark
(the largest event time seen on it) passes their gap, and drops expired state.
"""

from __future__ import annotations

import dataclasses
import heapq
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Final, NamedTuple, Protocol, TypeVar, cast

import orjson
from aiokafka.partitioner import murmur2

from recstream.streams import sessions
from recstream.streams.records import (
    Click,
    DeadLetter,
    Forget,
    InvalidEvent,
    Reason,
    Recommendation,
    RecordBuilder,
    Review,
    Search,
    Sentiment,
    SessionSummary,
    loads,
    parse_click,
    parse_clicks,
    parse_forget,
    parse_review,
    parse_search,
)
from recstream.streams.scoring import (
    RecsResult,
    RecsScorer,
    SentimentResult,
    SentimentScorer,
    Token,
)
from recstream.streams.settings import Settings

InputEvent = Click | Search | Review | Forget
T = TypeVar("T")
#: Error prefix of dead letters for valid events that could not be processed
#: (the scorer failed twice); the same label as ``metrics.PROCESSING_ERROR``.
PROCESSING_ERROR: Final = "processing_error"
#: Hex characters kept of a pseudonymised user id (128 bits).
PSEUDONYM_CHARS: Final = 32
#: Stale sweep-heap entries tolerated beyond twice the tracked users before a rebuild.
HEAP_SLACK: Final = 1024

_RECOMMENDATIONS: Final = RecordBuilder(Recommendation)
_CLICKS_ONLY: Final = {"clicks"}
_KIND, _VALUE = attrgetter("kind"), attrgetter("value")
_EVENT, _USER_ID, _SESSION_ID = attrgetter("event"), attrgetter("user_id"), attrgetter("session_id")
_EVENT_ID, _TS = attrgetter("event_id"), attrgetter("ts")
_ITEMS, _FALLBACK = attrgetter("items"), attrgetter("fallback")
_PARSERS: Final[dict[str, Callable[..., InputEvent]]] = {
    "clicks": parse_click,
    "searches": parse_search,
    "reviews": parse_review,
    "privacy": parse_forget,
}


class RawRecord(NamedTuple):
    """One record as read from a topic; ``kind`` is the input topic kind (``clicks`` ...).

    A named tuple, as :class:`Decoded`, because one is made for every record read: a
    batch of them is made from its columns in one C pass (:func:`raw_records`), about
    a third of the time a slotted dataclass takes to fill slot by slot.
    """

    kind: str
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


class Decoded(NamedTuple):
    """A valid event (user id already pseudonymised) and the record it came from.

    ``home`` is the partition that owns the user's state (set when the pipeline
    knows the partition count), computed from the original user id the way
    Kafka's default partitioner places a record keyed by it.
    """

    event: InputEvent
    source: RawRecord
    home: int | None = None


#: ``tuple.__new__(cls, row)`` makes named tuple ``cls`` from a row without its ``__new__``.
_NEW_TUPLE: Final = tuple.__new__


def raw_records(
    kind: str,
    topic: str,
    partition: int,
    offsets: list[int],
    values: Iterable[bytes | None],
    keys: Iterable[bytes | None],
) -> list[RawRecord]:
    """One partition's records, one per offset, from the columns of a fetched batch."""
    rows = zip(repeat(kind), repeat(topic), repeat(partition), offsets, values, keys)
    return cast(list[RawRecord], list(map(_NEW_TUPLE, repeat(RawRecord), rows)))


class StateStore(Protocol):
    """Per-user state bytes; ``partition`` is where the state lives (its changelog)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, partition: int) -> bytes:
        """Store ``value``; returns the bytes object the store now holds (it may be a copy)."""
        ...

    def delete(self, key: str, partition: int) -> None: ...


class DictStore:
    """A plain in-memory :class:`StateStore` (offline replay and tests)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        """The stored bytes of ``key``, if any."""
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> bytes:
        """Store ``value`` under ``key``; returns it."""
        self.data[key] = value
        return value

    def delete(self, key: str, partition: int) -> None:
        """Forget ``key``."""
        self.data.pop(key, None)


@dataclass(slots=True)
class RecsRequest:
    user_id: str
    session_id: str
    event: Click | Search
    source: RawRecord
    history: list[Token]
    exclude: Collection[str]


@dataclass(slots=True)
class Work:
    """What :meth:`Pipeline.prepare` found to do for one batch."""

    recs: list[RecsRequest] = field(default_factory=list)
    reviews: list[tuple[Review, RawRecord]] = field(default_factory=list)
    sessions: list[SessionSummary] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class Scores:
    """Scorer results for one :class:`Work`, or the error that stopped them."""

    recs: list[RecsResult] | None = None
    sentiments: list[SentimentResult] | None = None
    recs_error: str | None = None
    sentiment_error: str | None = None


@dataclass(slots=True)
class Outputs:
    """Typed output records of one batch."""

    recommendations: list[Recommendation] = field(default_factory=list)
    sentiments: list[Sentiment] = field(default_factory=list)
    sessions: list[SessionSummary] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        """Append every record of ``other``."""
        self.recommendations += other.recommendations
        self.sentiments += other.sentiments
        self.sessions += other.sessions
        self.dead_letters += other.dead_letters


class UserIds:
    """Pseudonymises user ids with HMAC-SHA256 when a salt is set (identity otherwise)."""

    def __init__(self, salt: str | None) -> None:
        self._key = salt.encode("utf-8") if salt else None
        #: True when ids are kept as they are (no salt).
        self.identity = self._key is None

    def __call__(self, user_id: str) -> str:
        """The id stored and emitted for ``user_id``."""
        if self._key is None:
            return user_id
        return hmac.new(self._key, user_id.encode("utf-8"), sha256).hexdigest()[:PSEUDONYM_CHARS]


@lru_cache(maxsize=65_536)
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's (and aiokafka's) default partitioner gives a record keyed ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=65_536)
def home_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a record keyed by ``user_id``."""
    return partition_for_key(user_id.encode("utf-8"), partitions)


def repartition_payload(event: InputEvent, kind: str) -> bytes:
    """The JSON of an already-validated (and pseudonymised) event, tagged with its kind."""
    obj: dict[str, Any] = {k: v for k, v in dataclasses.asdict(event).items() if v is not None}
    obj["kind"] = kind
    return orjson.dumps(obj)


class Pipeline:
    """Sessions and scoring for batches of events; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        recs: RecsScorer,
        sentiment: SentimentScorer,
        *,
        partitions: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = sessions.SessionRules.from_settings(settings)
        self.recs = recs
        self.sentiment = sentiment
        self.top_k = settings.top_k
        self.max_bytes = settings.max_event_bytes
        self.max_future_skew = settings.max_future_skew
        salt = settings.user_id_salt
        self.user_ids = UserIds(salt.get_secret_value() if salt else None)
        self.partitions = partitions
        self.clock = clock
        self.exclude_trigger = settings.exclude_trigger_item
        #: partition -> largest valid event time seen on it.
        self.watermarks: dict[int, float] = {}
        # partition -> user -> watermark at which a sweep changes the user's state, plus
        # a heap of (deadline, user) holding for each of them an entry at or before that
        # deadline (entries are pushed only when a deadline moves earlier: one that moved
        # later is pushed again when its old entry comes up; stale entries are skipped).
        self._deadlines: dict[int, dict[str, float]] = {}
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        #: user -> (the bytes last stored, the state they encode, its partition), least
        #: recently written first: a state the store still holds as those bytes is used
        #: as it is, with its scoring tokens, instead of being decoded again.
        self._decoded: OrderedDict[str, tuple[bytes, sessions.UserState, int]] = OrderedDict()
        self._cache_users = settings.state_cache_users

    # -- 1. decode --------------------------------------------------------------

    def decode(
        self, records: Iterable[RawRecord], *, repartitioned: bool = False
    ) -> tuple[list[Decoded], list[DeadLetter]]:
        """Validate raw records; invalid ones become dead letters with their reason.

        ``repartitioned`` records come from :func:`repartition_payload`: their kind is
        inside the payload and their user ids are already pseudonymised.
        """
        now = self.clock()
        if not repartitioned:
            records = records if isinstance(records, list) else list(records)
            clicks = self._decode_clicks(records, now)
            if clicks is not None:
                return clicks, []
        good: list[Decoded] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                obj = loads(record.value, self.max_bytes)
                kind = obj.pop("kind", None) if repartitioned else record.kind
                parser = _PARSERS.get(kind) if isinstance(kind, str) else None
                if parser is None:
                    raise InvalidEvent(Reason.BAD_VALUE, f"unknown event kind {kind!r}")
                # The parsers accept ts up to ``now + 1 day``; shifting ``now`` applies
                # the configured skew instead.
                event = parser(obj, now=now + self.max_future_skew - 86_400.0)
            except InvalidEvent as exc:
                dead.append(self._dead(record, str(exc)))
                continue
            home = None
            if not repartitioned:
                if self.partitions is not None:
                    home = home_partition(event.user_id, self.partitions)
                pseudo = self.user_ids(event.user_id)
                if pseudo != event.user_id:
                    event = dataclasses.replace(event, user_id=pseudo)
            elif self.partitions is not None:
                home = record.partition
            good.append(Decoded(event, record, home))
        return good, dead

    def _decode_clicks(self, records: list[RawRecord], now: float) -> list[Decoded] | None:
        """The whole batch at once when it is all clicks in the common form
        (:func:`parse_clicks`); None sends it through the record-by-record path, which
        gives the same events and names what is wrong with the others."""
        if not records or set(map(_KIND, records)) != _CLICKS_ONLY:
            return None
        values = list(map(_VALUE, records))
        if None in values or max(map(len, values)) > self.max_bytes:
            return None
        try:
            objs = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            return None
        clicks = parse_clicks(
            objs,
            now=now + self.max_future_skew - 86_400.0,
            user_ids=None if self.user_ids.identity else self.user_ids,
        )
        if clicks is None:
            return None
        partitions = self.partitions
        if partitions is None:
            homes: Iterable[int | None] = repeat(None)
        else:
            # Homes by the original user ids, as the record-by-record path places them.
            originals = map(itemgetter("user_id"), objs)
            homes = map(home_partition, originals, repeat(partitions))
        rows = zip(clicks, records, homes, strict=False)  # homes may be repeat(None)
        return cast(list[Decoded], list(map(_NEW_TUPLE, repeat(Decoded), rows)))

    # -- 2. prepare -------------------------------------------------------------

    def prepare(self, batch: Sequence[Decoded], store: StateStore) -> Work:
        """Apply a batch to the users' states and collect what must be scored.

        Each event's state lives on ``home`` when set, else on its record's partition.
        """
        work = Work()
        states: dict[str, tuple[sessions.UserState | None, int]] = {}
        rules = self.rules
        for item in batch:
            event = item.event
            if isinstance(event, Review):
                work.reviews.append((event, item.source))
                continue
            partition = item.source.partition if item.home is None else item.home
            user = event.user_id
            if isinstance(event, Forget):
                states[user] = (None, partition)
                store.delete(user, partition)
                self._decoded.pop(user, None)
                self._untrack(partition, user)
                continue
            state = states[user][0] if user in states else self._load(user, store)
            if isinstance(event, Click):
                step = sessions.step_of(event.action, event.ts, event.item_id, None)
            else:
                step = sessions.step_of("search", event.ts, None, event.query)
            applied = sessions.apply(state, user, event.event_id, step, rules)
            work.sessions += applied.closed
            if applied.status is sessions.LATE:
                work.dead_letters.append(
                    self._dead(
                        item.source,
                        f"{Reason.LATE.value}: ts {event.ts:.3f} is more than "
                        f"{rules.lateness:g}s behind the user's latest event or in a closed "
                        "session",
                    )
                )
                continue
            if applied.status is sessions.DUPLICATE:
                continue
            states[user] = (applied.state, partition)
            if event.ts > self.watermarks.get(partition, 0.0):
                self.watermarks[partition] = event.ts
            assert applied.session is not None
            work.recs.append(  # arguments by position: by keyword costs ~0.2 us more per event
                RecsRequest(
                    user,
                    applied.session.session_id,
                    event,
                    item.source,
                    applied.state.tokens(rules.history_length),
                    self._exclude(applied.session.purchased, event),
                )
            )
        for user, (state, partition) in states.items():
            if state is not None:
                self._save(user, state, partition, store)
                self._track(partition, user, state)
        return work

    # -- 3. score ---------------------------------------------------------------

    def score(self, work: Work) -> Scores:
        """Run both scorers once for the batch (thread-safe: touches only ``work``)."""
        scores = Scores()
        if work.recs:
            histories = [request.history for request in work.recs]
            exclude = [request.exclude for request in work.recs]
            scores.recs, scores.recs_error = _twice(
                lambda: self.recs.recommend(histories, exclude, self.top_k), len(histories)
            )
        if work.reviews:
            texts = [review.text for review, _ in work.reviews]
            scores.sentiments, scores.sentiment_error = _twice(
                lambda: self.sentiment.classify(texts), len(texts)
            )
        return scores

    # -- 4. finish --------------------------------------------------------------

    def finish(self, work: Work, scores: Scores) -> Outputs:
        """Typed output records for a scored batch."""
        out = Outputs(sessions=work.sessions, dead_letters=work.dead_letters)
        now = self.clock()
        if scores.recs is not None:
            version = self.recs.model_version
            recs, results = work.recs, scores.recs
            if len(results) != len(recs):
                raise ValueError(f"{len(results)} recommendations for {len(recs)} requests")
            events = list(map(_EVENT, recs))
            # Built column by column (a frozen record's __init__ costs ~2.4 us, this ~1).
            out.recommendations = _RECOMMENDATIONS.build(
                len(recs),
                map(_USER_ID, recs),
                map(_SESSION_ID, recs),
                map(_EVENT_ID, events),
                map(_ITEMS, results),
                [result.model_version or version for result in results],
                map(_TS, events),
                repeat(now),
                map(_FALLBACK, results),
            )
        else:
            error = f"{PROCESSING_ERROR}: recommendation scoring failed twice: {scores.recs_error}"
            out.dead_letters += [self._dead(request.source, error) for request in work.recs]
        if scores.sentiments is not None:
            version = self.sentiment.model_version
            for (review, _), res in zip(work.reviews, scores.sentiments, strict=True):
                out.sentiments.append(
                    Sentiment(
                        event_id=review.event_id,
                        user_id=review.user_id,
                        item_id=review.item_id,
                        label=res.label,
                        probs=res.probs,
                        model_version=res.model_version or version,
                        flags=res.flags,
                    )
                )
        else:
            error = f"{PROCESSING_ERROR}: sentiment scoring failed twice: {scores.sentiment_error}"
            out.dead_letters += [self._dead(source, error) for _, source in work.reviews]
        return out

    # -- sweep ------------------------------------------------------------------

    def sweep(self, partition: int, store: StateStore) -> list[SessionSummary]:
        """Close what the partition's watermark has passed; drop expired state."""
        watermark = self.watermarks.get(partition)
        heap = self._heaps.get(partition)
        if watermark is None or not heap:
            return []
        deadlines = self._deadlines[partition]
        due: list[str] = []
        while heap and heap[0][0] <= watermark:
            user = heapq.heappop(heap)[1]
            deadline = deadlines.get(user)
            if deadline is None:  # a stale entry of a user no longer tracked
                continue
            if deadline <= watermark:
                del deadlines[user]
                due.append(user)
            else:  # the user's deadline moved later since this entry was pushed
                heapq.heappush(heap, (deadline, user))
        closed: list[SessionSummary] = []
        for user in due:  # each user once: a state the sweep left as it was is re-tracked
            loaded = self._load(user, store)
            if loaded is None:
                continue
            state, done = sessions.sweep(loaded, user, watermark, self.rules)
            closed += done
            if state is None:
                store.delete(user, partition)
                self._decoded.pop(user, None)
            else:
                self._save(user, state, partition, store, changed=bool(done))
                self._track(partition, user, state)
        return closed

    def track(self, partition: int, user: str, raw: bytes) -> None:
        """Register stored state (e.g. recovered from a changelog) for sweeping.

        The partition's watermark is raised to the state's latest event time: that
        event was seen on the partition, before this worker owned it.
        """
        state = sessions.UserState.from_bytes(raw)
        if state.last_ts > self.watermarks.get(partition, 0.0):
            self.watermarks[partition] = state.last_ts
        self._track(partition, user, state)

    def forget_partition(self, partition: int) -> None:
        """Stop sweeping a partition (it was revoked from this worker) and drop its users'
        decoded states (the table drops their bytes too)."""
        self._deadlines.pop(partition, None)
        self._heaps.pop(partition, None)
        self.watermarks.pop(partition, None)
        gone = [user for user, entry in self._decoded.items() if entry[2] == partition]
        for user in gone:
            del self._decoded[user]

    # -- offline ----------------------------------------------------------------

    def run(self, records: Iterable[RawRecord], store: StateStore) -> Outputs:
        """Decode, prepare, score, finish and sweep one batch synchronously."""
        batch, dead = self.decode(records)
        work = self.prepare(batch, store)
        out = self.finish(work, self.score(work))
        out.dead_letters = dead + out.dead_letters
        touched = {item.source.partition if item.home is None else item.home for item in batch}
        for partition in sorted(touched):
            out.sessions += self.sweep(partition, store)
        return out

    # -- helpers ----------------------------------------------------------------

    def _exclude(self, purchased: frozenset[str], event: Click | Search) -> Collection[str]:
        """Items a recommendation answering ``event`` must not hold.

        A tuple with the clicked item first, not a new set: the scorer only iterates it,
        and a one-item tuple is made in a third of the time of ``purchased | {item}``.
        """
        if self.exclude_trigger and isinstance(event, Click) and event.item_id:
            return (event.item_id, *purchased) if purchased else (event.item_id,)
        return purchased

    def _load(self, user: str, store: StateStore) -> sessions.UserState | None:
        """The user's stored state, from the cache of decoded states when it is current.

        The cached entry is taken out: the caller changes the state in place, and a
        batch that fails before :meth:`_save` must not leave it behind.
        """
        raw = store.get(user)
        cached = self._decoded.pop(user, None)
        if raw is None:
            return None
        if cached is not None and cached[0] is raw:  # what was written: the same object
            return cached[1]
        return sessions.UserState.from_bytes(raw)

    def _save(
        self,
        user: str,
        state: sessions.UserState,
        partition: int,
        store: StateStore,
        *,
        changed: bool = True,
    ) -> None:
        """Store the state (when ``changed``) and keep it decoded for the user's next batch.

        The cache keeps the very bytes object the store holds (the table keeps a copy), so
        :meth:`_load` finds it current without comparing the bytes, and a user's state
        bytes are in memory once.
        """
        if changed:
            raw = store.put(user, state.to_bytes(), partition)
        else:
            stored = store.get(user)
            if stored is None:
                return
            raw = stored
        if self._cache_users:
            self._decoded[user] = (raw, state, partition)
            if len(self._decoded) > self._cache_users:
                # OrderedDict: a dict's first key is found by scanning past the holes its
                # deletions left (measured ~7 us per eviction at 8,192 users, 1.3 here).
                self._decoded.popitem(last=False)

    def _track(self, partition: int, user: str, state: sessions.UserState) -> None:
        """Note when a sweep must next look at the user's state.

        A deadline that moved later (most events: the user's latest event moved on) keeps
        its earlier heap entry, so a busy user adds no heap entry per batch.
        """
        deadline = sessions.next_deadline(state, self.rules)
        deadlines = self._deadlines.setdefault(partition, {})
        before = deadlines.get(user)
        deadlines[user] = deadline
        if before is not None and before <= deadline:
            return
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (deadline, user))
        if len(heap) > 2 * len(deadlines) + HEAP_SLACK:
            # Mostly stale entries (deadlines that moved earlier, users forgotten or
            # swept): rebuild from the live deadlines, so the heap stays O(users).
            heap[:] = [(when, who) for who, when in deadlines.items()]
            heapq.heapify(heap)

    def _untrack(self, partition: int, user: str) -> None:
        self._deadlines.get(partition, {}).pop(user, None)

    @staticmethod
    def _dead(record: RawRecord, error: str) -> DeadLetter:
        return DeadLetter.of(record.topic, record.partition, record.offset, error, record.value)


def _twice(call: Callable[[], list[T]], expected: int) -> tuple[list[T] | None, str | None]:
    """Call a scorer, retrying once; (results, None) or (None, the last error)."""
    error = "no attempt"
    for _ in range(2):
        try:
            results = call()
        except Exception as exc:  # a scorer error must never stop the worker
            error = f"{type(exc).__name__}: {exc}"[:500]
            continue
        if len(results) == expected:
            return results, None
        error = f"scorer returned {len(results)} results for {expected} inputs"
    return None, error
