"""Each user's latest recommendations and open session over HTTP, and a live storefront page.

The worker already computes "what should this user see now"; this module keeps it
and serves it from the worker's own Faust web server:

* ``storefront-latest``, a changelog-backed table (bytes keys, explicit partitions
  like the user-state table), holds per user the latest
  :class:`~recstream.streams.records.Recommendation` and the sentiment labels of the
  user's last reviews, one write per user per batch (:class:`LatestRecommendations`);
* ``GET /v1/users/{user_id}/recommendations?k=10`` answers the latest recommendation
  in the ``recommendations`` topic's JSON shape, or popular items with
  ``"fallback": true`` for a user the worker knows nothing about;
* ``GET /v1/users/{user_id}/session`` answers the user's open session window;
* ``POST /v1/events/clicks`` and ``POST /v1/events/searches`` validate one event with
  ``records.parse_*`` and produce it to the input topic, keyed by ``user_id``;
* ``GET /v1/catalog`` lists the products the page shows, ``GET /v1/openapi.json``
  the API description (``web/openapi.json``), and ``/`` or ``/storefront/`` the page.

A user's two tables live on the partition Kafka's default partitioner gives the raw
user id (``pipeline.home_partition``).  A request reaching a worker that does not
own that partition is forwarded to the owner found in Faust's table metadata (the
same assignment ``app.table_route`` reads), so any worker can answer for any user.
The decorator itself is not used: it routes before the id is validated, hashes the
key through the producer's metadata of the changelog topic (absent on a worker that
has not written to it yet), hashes the pseudonym rather than the raw id when
``RECSTREAM_USER_ID_SALT`` is set, and drops the owner's ``Retry-After``.
A worker that is rebalancing or recovering answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import aiohttp
import faust
import orjson
from faust.types import TP, TableT
from faust.web import Request, Response, View
from yarl import URL

from recstream.streams import sessions
from recstream.streams.pipeline import UserIds, home_partition
from recstream.streams.records import (
    MAX_ID_CHARS,
    Click,
    InvalidEvent,
    Reason,
    Recommendation,
    Search,
    Sentiment,
    event_to_dict,
    loads,
    parse_click,
    parse_search,
    to_json,
)
from recstream.streams.scoring import RecsResult, RecsScorer
from recstream.streams.settings import Settings
from recstream.streams.state_store import TableStateStore, exact_size
from recstream.streams.web import Readiness, ReadinessCheck

log = logging.getLogger(__name__)

TABLE_NAME: Final = "storefront-latest"
#: Most items one answer may hold (``k``), as in the ``recommendations`` schema.
MAX_K: Final = 100
#: Sentiment labels of a user's reviews kept for the session view, newest last.
MAX_REVIEWS: Final = 10
#: Events of the open session listed by the session view, newest last.
RECENT_EVENTS: Final = 20
#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_S: Final = 2
#: Header naming the worker (its canonical URL) that answered a user request.
SERVED_BY: Final = "X-Recstream-Served-By"
#: Header set on answers this worker forwarded from the owner of the user's partition.
ROUTED_FROM: Final = "X-Recstream-Routed-From"
#: Seconds a forwarded request may take.
ROUTE_TIMEOUT_S: Final = 5.0
JSON: Final = "application/json"
#: Bind-all addresses: fine to listen on, not an address to advertise to other workers.
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})
_PAGE_FILES: Final = {
    "storefront.js": "application/javascript",
    "storefront.css": "text/css",
}

#: Popular items for a fallback answer: ``k`` -> a result with ``fallback`` True.
PopularItems = Callable[[int], RecsResult]


class BadRequest(ValueError):
    """A request the storefront refuses with HTTP 400; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Product:
    """A product the page shows: id, category and price (when known)."""

    item_id: str
    category: str | None = None
    price: float | None = None


def declare_latest_table(app: faust.App, settings: Settings) -> TableT:
    """The ``storefront-latest`` table: user id bytes -> JSON bytes (see :class:`Latest`)."""
    return app.Table(
        TABLE_NAME,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,
        help="Per-user latest recommendation and review labels (recstream.streams.storefront).",
    )


def popular_items(scorer: RecsScorer) -> PopularItems:
    """Popular items from the recommender: its own fallback for an empty history."""

    def popular(k: int) -> RecsResult:
        return scorer.recommend([[]], [()], k)[0]

    return popular


def catalog_from_events(events: Iterable[Mapping[str, Any]]) -> dict[str, Product]:
    """The products seen in canonical click events, with their category and price."""
    products: dict[str, Product] = {}
    for event in events:
        item = event.get("item_id")
        if "action" in event and isinstance(item, str) and item not in products:
            price = event.get("price")
            products[item] = Product(
                item,
                event.get("category"),
                float(price) if isinstance(price, int | float) else None,
            )
    return products


def load_catalog(path: Path) -> dict[str, Product]:
    """The products of a canonical JSONL event log (``.gz`` too), e.g. a generated shop log."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        return catalog_from_events(orjson.loads(line) for line in lines if line.strip())


class UserKeys:
    """Where a user's rows live: their table key and their home partition."""

    def __init__(self, settings: Settings, user_state: TableT) -> None:
        salt = settings.user_id_salt
        self.salted = salt is not None
        self.pseudonym = UserIds(salt.get_secret_value() if salt else None)
        self.partitions = settings.partitions
        self.user_state = user_state

    def home(self, user_id: str) -> int:
        """The home partition of a user id as clients know it."""
        return home_partition(user_id, self.partitions)

    def home_of_stored(self, stored_id: str) -> int | None:
        """The home partition of a user id as the tables store it; None if unknown.

        Without a salt the stored id is the raw id.  With one, the raw id is gone,
        so the partition the user-state table recorded for the user is used.
        """
        if not self.salted:
            return home_partition(stored_id, self.partitions)
        mapping = getattr(self.user_state.data, "_key_partition", None)
        if not isinstance(mapping, dict):
            return None
        partition = mapping.get(stored_id.encode("utf-8"))
        return partition if isinstance(partition, int) else None


class LatestRecommendations:
    """Writes the latest recommendation and review labels of each user to the table.

    Call :meth:`record` and :meth:`record_sentiments` from the agents' batch
    processing; each writes once per user per batch, on the user's home partition.
    With ``hold_changelog`` the rows' changelog records wait, the latest per user, for
    the store's flush (:class:`~recstream.streams.state_store.TableStateStore`).
    """

    def __init__(
        self,
        table: TableT,
        keys: UserKeys,
        owns: Callable[[int], bool] | None = None,
        *,
        hold_changelog: bool = False,
        cache_users: int,
    ) -> None:
        self.table = table
        self.store = TableStateStore(table, hold_changelog=hold_changelog)
        self.keys = keys
        self._owns = owns
        #: Writes skipped because the partition was unknown or owned by another worker.
        self.skipped = 0
        #: The rows :meth:`record` wrote last, least recently written first: user ->
        #: (the bytes object the table got, the row, its recommendation's event time).
        #: While the table still holds those very bytes, the row is not parsed again
        #: (a row with 20 items: ~2 µs, about 40 % of a write).
        self._written: OrderedDict[str, tuple[bytes, dict[str, Any], float]] = OrderedDict()
        self._cache_users = cache_users

    def record(self, recs: Sequence[Recommendation], as_json: Sequence[bytes] | None = None) -> int:
        """Keep each user's newest recommendation of the batch; returns the writes.

        ``as_json``: each record's :func:`~recstream.streams.records.to_json`, when the
        caller already has it for the output topic; the row embeds those bytes as they are.
        """
        if as_json is None:
            as_json = list(map(to_json, recs))
        newest: dict[str, tuple[Recommendation, bytes]] = {}
        for rec, encoded in zip(recs, as_json, strict=True):
            held = newest.get(rec.user_id)
            if held is None or rec.event_ts >= held[0].event_ts:
                newest[rec.user_id] = (rec, encoded)
        writes = 0
        owned: dict[int, bool] = {}  # asking the assignor per user costs more than the rest
        written = self._written
        for user, (rec, encoded) in newest.items():
            partition = self._partition(user, owned)
            if partition is None:
                continue
            latest, held_ts = self._held(user)
            if held_ts is not None and held_ts > rec.event_ts:
                continue  # a late event's answer never replaces a newer one
            # Written as it is; a copy of its own size, as the row is kept.
            latest["recommendation"] = orjson.Fragment(exact_size(encoded))
            written[user] = (self._write(user, latest, partition), latest, rec.event_ts)
            writes += 1
        while len(written) > self._cache_users:
            written.popitem(last=False)
        return writes

    def _held(self, user: str) -> tuple[dict[str, Any], float | None]:
        """The user's row and the event time of the recommendation it holds (None: none),
        from :attr:`_written` while the table holds the bytes written there."""
        raw = self.store.get(user)
        cached = self._written.pop(user, None)
        if cached is not None and cached[0] is raw:
            return cached[1], cached[2]
        latest = self._parse(raw)
        held_rec = latest.get("recommendation")
        return latest, None if held_rec is None else held_rec["event_ts"]

    def record_sentiments(self, sentiments: Sequence[Sentiment]) -> int:
        """Append each review's label to its user's list; returns the writes.

        Reviews are scored where they arrive; a label is kept only by the worker that
        owns the user's home partition (reviews keyed by user id arrive there).
        """
        by_user: dict[str, list[Sentiment]] = {}
        for sentiment in sentiments:
            by_user.setdefault(sentiment.user_id, []).append(sentiment)
        writes = 0
        owned: dict[int, bool] = {}
        for user, labels in by_user.items():
            partition = self._partition(user, owned)
            if partition is None:
                continue
            latest = self.read(user)
            reviews = latest.get("reviews", [])
            reviews += [
                {
                    "event_id": s.event_id,
                    "item_id": s.item_id,
                    "label": s.label,
                    "model_version": s.model_version,
                }
                for s in labels
            ]
            latest["reviews"] = reviews[-MAX_REVIEWS:]
            self._write(user, latest, partition)
            writes += 1
        return writes

    def forget(self, user_ids: Iterable[str]) -> None:
        """Delete the rows of forgotten users (stored ids) this worker owns."""
        owned: dict[int, bool] = {}
        for user in user_ids:
            self._written.pop(user, None)
            partition = self._partition(user, owned)
            if partition is not None:
                self.store.delete(user, partition)

    def read(self, stored_id: str) -> dict[str, Any]:
        """The row of a stored user id: ``{"recommendation": ..., "reviews": [...]}``."""
        return self._parse(self.store.get(stored_id))

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {"recommendation": None, "reviews": []}
        row: dict[str, Any] = orjson.loads(raw)
        return row

    def owns(self, partition: int) -> bool:
        """Whether this worker actively owns ``partition`` (always, without a test)."""
        return self._owns is None or self._owns(partition)

    def _partition(self, user: str, owned: dict[int, bool]) -> int | None:
        """The user's home partition if this worker owns it (``owned``: answers so far)."""
        partition = self.keys.home_of_stored(user)
        if partition is not None and partition not in owned:
            owned[partition] = self.owns(partition)
        if partition is None or not owned[partition]:
            self.skipped += 1
            return None
        return partition

    def _write(self, user: str, row: dict[str, Any], partition: int) -> bytes:
        return self.store.put(user, orjson.dumps(row), partition)


def owned_partitions(app: faust.App, table: TableT) -> Callable[[int], bool]:
    """A test: is changelog ``partition`` of ``table`` active on this worker?"""
    topic = table.changelog_topic.get_topic_name()

    def owns(partition: int) -> bool:
        return TP(topic, partition) in app.assignor.assigned_actives()

    return owns


def check_user_id(user_id: str) -> str:
    """The user id, or :class:`BadRequest`: the id rules of ``records.py``."""
    if not user_id or len(user_id) > MAX_ID_CHARS:
        raise BadRequest(f"{Reason.BAD_VALUE}: user_id must have 1..{MAX_ID_CHARS} characters")
    if not user_id.isprintable():
        raise BadRequest(f"{Reason.BAD_VALUE}: user_id contains control characters")
    return user_id


def check_k(raw: str | None, default: int) -> int:
    """The ``k`` query parameter: an integer from 1 to :data:`MAX_K`."""
    if raw is None:
        return default
    try:
        k = int(raw)
    except ValueError:
        raise BadRequest(f"{Reason.WRONG_TYPE}: k must be an integer, got {raw[:20]!r}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"{Reason.BAD_VALUE}: k must be from 1 to {MAX_K}, got {k}")
    return k


def session_view(
    stored_id: str,
    raw_state: bytes | None,
    reviews: list[dict[str, Any]],
    rules: sessions.SessionRules,
) -> dict[str, Any]:
    """The body of ``GET /v1/users/{id}/session`` from the user's stored state."""
    body: dict[str, Any] = {
        "user_id": stored_id,
        "known": raw_state is not None,
        "session": None,
        "recent": [],
        "last_ts": None,
        "reviews": reviews,
    }
    if raw_state is None:
        return body
    state = sessions.UserState.from_bytes(raw_state)
    body["last_ts"] = state.last_ts
    # The pending events form the sessions not yet emitted; the last one is open.
    latest = sessions.latest_session(state, stored_id, rules)
    if latest is not None:
        summary, steps = latest
        body["session"] = asdict(summary)
        body["recent"] = [
            {
                "ts": ts,
                "action": sessions.ACTION_NAMES[code],
                "item_id": None if code == sessions.SEARCH else text,
                "query": text if code == sessions.SEARCH else None,
            }
            for ts, code, text in steps[-RECENT_EVENTS:]
        ]
    return body


def fallback_recommendation(stored_id: str, result: RecsResult, now: float) -> dict[str, Any]:
    """A ``recommendations``-shaped answer of popular items for an unknown user."""
    rec = Recommendation(
        user_id=stored_id,
        session_id="",
        trigger_event_id="",
        items=result.items,
        model_version=result.model_version,
        event_ts=now,
        emitted_at=now,
        fallback=True,
    )
    return asdict(rec)


def read_page_file(name: str) -> bytes:
    """A file of the storefront page or API description (``streams/web/NAME``)."""
    return resources.files("recstream.streams").joinpath("web", name).read_bytes()


def parse_posted(kind: str, body: bytes, max_bytes: int) -> Click | Search:
    """Validate a posted click or search; :class:`BadRequest` with the reason if invalid."""
    try:
        obj = loads(body, max_bytes)
        return parse_click(obj) if kind == "clicks" else parse_search(obj)
    except InvalidEvent as exc:
        raise BadRequest(str(exc)) from None


class Storefront:
    """The storefront's request handling, shared by the views :func:`register_storefront` adds."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        latest: LatestRecommendations,
        user_state: TableT,
        popular: PopularItems,
        ready: ReadinessCheck,
        catalog: Mapping[str, Product] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.latest = latest
        self.keys = latest.keys
        self.user_state = TableStateStore(user_state)
        self.changelog = latest.table.changelog_topic.get_topic_name()
        self.popular = popular
        self.ready = ready
        self.catalog = dict(catalog or {})
        self.rules = sessions.SessionRules.from_settings(settings)

    # -- routing -------------------------------------------------------------------

    def owner_url(self, partition: int) -> URL | None:
        """The web URL of the worker owning ``partition`` of the tables, if assigned."""
        metadata = self.app.router.table_metadata(TABLE_NAME)
        for url, topics in metadata.items():
            if partition in topics.get(self.changelog, ()):
                return URL(url)
        return None

    async def answer(
        self, view: View, request: Request, user_id: str, local: Callable[[str], dict[str, Any]]
    ) -> Response:
        """Validate, then answer locally when this worker owns the user, else forward."""
        try:
            check_user_id(user_id)
        except BadRequest as exc:
            return error(view, 400, str(exc))
        ready, reason = self.ready()
        if not ready:
            return unavailable(view, reason)
        partition = self.keys.home(user_id)
        owner = self.owner_url(partition)
        if owner is None:
            return unavailable(view, "the user's partition is not assigned yet")
        here = URL(str(self.app.conf.canonical_url))
        if (owner.host, owner.port) != (here.host, here.port):
            return await self.forward(view, request, owner)
        if not self.latest.owns(partition):
            # Two workers advertise the same URL (e.g. web_host 0.0.0.0): never answer
            # from a table this worker does not own.
            return unavailable(view, f"partition {partition} is owned elsewhere at {owner}")
        body = local(user_id)
        return view.bytes(orjson.dumps(body), content_type=JSON, headers={SERVED_BY: str(here)})

    async def forward(self, view: View, request: Request, owner: URL) -> Response:
        """Ask the owner the same request and answer what it answers."""
        url = (
            request.url.with_scheme(owner.scheme or "http")
            .with_host(owner.host or "127.0.0.1")
            .with_port(owner.port)
        )
        try:
            timeout = aiohttp.ClientTimeout(total=ROUTE_TIMEOUT_S)
            async with self.app.http_client.get(url, timeout=timeout) as reply:
                body = await reply.read()
                headers = {ROUTED_FROM: str(owner)}
                for name in (SERVED_BY, "Retry-After"):
                    if name in reply.headers:
                        headers[name] = reply.headers[name]
                return view.bytes(
                    body,
                    content_type=reply.content_type or JSON,
                    status=reply.status,
                    headers=headers,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("storefront: forwarding to %s failed: %s", owner, exc)
            return unavailable(view, f"owner {owner} did not answer")

    # -- answers ---------------------------------------------------------------------

    def recommendations(self, user_id: str, k: int) -> dict[str, Any]:
        """The latest recommendation of ``user_id`` cut to ``k`` items, or the fallback."""
        stored = self.keys.pseudonym(user_id)
        rec = self.latest.read(stored).get("recommendation")
        # A user whose state expired or was forgotten is unknown again.
        if rec is None or self.user_state.get(stored) is None:
            return fallback_recommendation(stored, self.popular(k), time.time())
        rec["items"] = rec["items"][:k]
        return rec

    def session(self, user_id: str) -> dict[str, Any]:
        """The open session of ``user_id`` (empty when the worker holds no state)."""
        stored = self.keys.pseudonym(user_id)
        raw = self.user_state.get(stored)
        reviews = self.latest.read(stored).get("reviews", []) if raw is not None else []
        return session_view(stored, raw, reviews, self.rules)

    def products(self, limit: int) -> list[dict[str, Any]]:
        """The catalog given at registration, else the model's popular items."""
        if self.catalog:
            return [asdict(p) for p in list(self.catalog.values())[:limit]]
        return [asdict(Product(item.item_id)) for item in self.popular(limit).items]

    async def post_event(self, view: View, request: Request, kind: str) -> Response:
        """Validate one posted event and produce it to its input topic, keyed by user."""
        try:
            event = parse_posted(kind, await request.read(), self.settings.max_event_bytes)
        except BadRequest as exc:
            return error(view, 400, str(exc))
        topic = self.settings.topic(kind)
        obj = event_to_dict(event)
        meta = await self.app.producer.send_and_wait(
            topic, event.user_id.encode("utf-8"), orjson.dumps(obj), None, None, None
        )
        body = {"topic": topic, "partition": meta.partition, "offset": meta.offset, "event": obj}
        return view.bytes(orjson.dumps(body), content_type=JSON, status=202)


def error(view: View, status: int, reason: str) -> Response:
    """A JSON error answer: ``{"error": reason}``."""
    return view.bytes(orjson.dumps({"error": reason}), content_type=JSON, status=status)


def unavailable(view: View, reason: str) -> Response:
    """503 with ``Retry-After``: the worker cannot answer from current state now."""
    return view.bytes(
        orjson.dumps({"error": f"not ready: {reason}"}),
        content_type=JSON,
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def register_storefront(
    app: faust.App,
    settings: Settings,
    latest_table: TableT,
    user_state_table: TableT,
    scorer_popular: PopularItems,
    readiness: Readiness | ReadinessCheck,
    *,
    catalog: Mapping[str, Product] | None = None,
    owns: Callable[[int], bool] | None = None,
) -> LatestRecommendations:
    """Add the storefront's views to ``app`` and return the table writer for the agents.

    ``readiness`` is a ``recstream.streams.web.Readiness`` or a ``() -> (ready, reason)``
    callable; ``scorer_popular`` is :func:`popular_items` of the recommender.
    ``owns`` tells whether this worker owns a partition (default: the partitions
    Kafka assigned it, :func:`owned_partitions`; benchmarks without a broker pass one).
    """
    check: ReadinessCheck = readiness.check if isinstance(readiness, Readiness) else readiness
    if settings.web_host in WILDCARD_HOSTS:
        log.warning(
            "storefront: RECSTREAM_WEB_HOST=%s is not an address other workers can reach; "
            "requests for users owned by another worker will answer 503",
            settings.web_host,
        )
    keys = UserKeys(settings, user_state_table)
    # In an at-least-once worker (its user-state store flushes before each offset
    # commit) the rows' changelog records wait for that flush too, the latest per user.
    state_store: TableStateStore | None = getattr(app, "recstream_store", None)
    leader = state_store if state_store is not None and state_store.transactions is None else None
    latest = LatestRecommendations(
        latest_table,
        keys,
        owns or owned_partitions(app, latest_table),
        hold_changelog=leader is not None,
        cache_users=settings.state_cache_users,
    )
    if leader is not None:
        leader.also_flush(latest.store)
    shop = Storefront(app, settings, latest, user_state_table, scorer_popular, check, catalog)
    openapi = read_page_file("openapi.json")
    index = read_page_file("index.html")
    files = {name: read_page_file(name) for name in _PAGE_FILES}

    @app.page("/v1/users/{user_id}/recommendations", name="storefront_recommendations")
    class RecommendationsView(View):
        """The latest recommendation of a user, ``k`` items (default ``top_k``)."""

        async def get(self, request: Request, user_id: str) -> Response:
            try:
                k = check_k(request.query.get("k"), settings.top_k)
            except BadRequest as exc:
                return error(self, 400, str(exc))
            return await shop.answer(self, request, user_id, lambda u: shop.recommendations(u, k))

    @app.page("/v1/users/{user_id}/session", name="storefront_session")
    class SessionView(View):
        """The open session window of a user."""

        async def get(self, request: Request, user_id: str) -> Response:
            return await shop.answer(self, request, user_id, shop.session)

    def event_view(kind: str) -> type[View]:
        class EventView(View):
            async def post(self, request: Request) -> Response:
                return await shop.post_event(self, request, kind)

        EventView.__doc__ = f"Validate one {kind} event and produce it, keyed by user_id."
        return EventView

    for kind in ("clicks", "searches"):
        app.page(f"/v1/events/{kind}", name=f"storefront_post_{kind}")(event_view(kind))

    @app.page("/v1/catalog", name="storefront_catalog")
    class CatalogView(View):
        """Products the page shows."""

        async def get(self, request: Request) -> Response:
            try:
                limit = check_k(request.query.get("limit"), 60)
            except BadRequest as exc:
                return error(self, 400, str(exc))
            return self.bytes(orjson.dumps({"items": shop.products(limit)}), content_type=JSON)

    @app.page("/v1/openapi.json", name="storefront_openapi")
    class OpenApiView(View):
        """The OpenAPI 3.1 description of these endpoints."""

        async def get(self, request: Request) -> Response:
            return self.bytes(openapi, content_type=JSON)

    async def page(view: View, request: Request) -> Response:
        """The storefront page."""
        return view.bytes(index, content_type="text/html", headers={"Cache-Control": "no-cache"})

    app.page("/", name="storefront_root")(page)
    app.page("/storefront/", name="storefront_index")(page)

    @app.page("/storefront/{name}", name="storefront_static")
    class StaticView(View):
        """The page's script and style sheet."""

        async def get(self, request: Request, name: str) -> Response:
            if name not in files:
                return error(self, 404, f"no file {name!r}")
            return self.bytes(files[name], content_type=_PAGE_FILES[name])

    return latest


def storefront_url(settings: Settings) -> str:
    """The address of the storefront page served by the worker of ``settings``."""
    host = settings.web_host
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}/storefront/"
