"""Generate a synthetic shop event log (canonical JSONL) with learnable structure.

The shop has a catalog of categories, each with brands, colours, prices and a
hidden *quality* per item.  Main categories have an accessory category (phones →
phone cases, cameras → memory cards, ...), and every item has a few fixed
"goes with" items.  Shoppers have category preferences that drift over the
period, and browse in sessions:

* a session is about one category, drawn from the shopper's preference of the
  moment (a blend of an early and a late preference, by session number);
* it often opens with a search whose words describe the next item viewed
  (category noun, sometimes brand and colour; Chinese words for Chinese shoppers
  half of the time) and has occasional refining searches later;
* views pick items of the category by popularity, and ~30% of the views after
  the first are one of the "goes with" items of the session's last main view
  (accessories after a main product);
* a view can be followed by add-to-cart (more likely for better items), a cart by
  a purchase, and a purchase, hours to days later, by a review in English or
  Chinese.  The rating follows the item's hidden quality, and the text follows
  the rating (1-2 negative, 3 neutral, 4-5 positive); 15% of reviews carry no
  stars, only text.

All randomness is drawn in bulk with numpy from one seeded generator, so a seed
always gives the same log.  Events come out in time order; per user times are
strictly increasing.  Every line is a valid input event (``records.parse_*``).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import orjson

#: (English noun, Chinese noun, accessory category index or -1, typical price).
CATEGORIES: Final = (
    ("running shoes", "跑鞋", 8, 90.0),
    ("smartphone", "手机", 9, 500.0),
    ("laptop", "笔记本电脑", 10, 900.0),
    ("camera", "相机", 11, 450.0),
    ("coffee maker", "咖啡机", 12, 120.0),
    ("tent", "帐篷", 13, 160.0),
    ("dress", "连衣裙", 14, 60.0),
    ("headphones", "耳机", 15, 80.0),
    ("sports socks", "运动袜", -1, 9.0),
    ("phone case", "手机壳", -1, 15.0),
    ("laptop bag", "电脑包", -1, 40.0),
    ("memory card", "存储卡", -1, 20.0),
    ("coffee beans", "咖啡豆", -1, 14.0),
    ("sleeping bag", "睡袋", -1, 70.0),
    ("handbag", "手提包", -1, 55.0),
    ("headphone stand", "耳机架", -1, 25.0),
)
BRANDS: Final = (
    "nova", "apex", "lumo", "zephyr", "kite", "orbit", "pico", "vela",
    "tundra", "mira", "quill", "sable", "brio", "cobalt", "ember", "fjord",
)  # fmt: skip
#: (English, Chinese) colour words.
COLORS: Final = (
    ("red", "红色"),
    ("black", "黑色"),
    ("white", "白色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("pink", "粉色"),
    ("grey", "灰色"),
)
BRANDS_PER_CATEGORY: Final = 4
GOES_WITH: Final = 3

#: Review templates by language and label; ``{noun}`` and ``{brand}`` are filled in.
REVIEW_TEMPLATES: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "en": {
        "positive": (
            "Great {noun}, works perfectly. Very happy with it!",
            "Excellent quality, the {brand} {noun} exceeded my expectations.",
            "Love it! Fast delivery and the {noun} is exactly as described.",
            "Best {noun} I have owned, would buy again.",
            "{brand} never disappoints. Highly recommend this {noun}.",
        ),
        "neutral": (
            "The {noun} is okay, nothing special.",
            "Average {noun}. Does the job but the {brand} one I had before was similar.",
            "It's fine for the price, not great, not bad.",
            "Decent {noun}, arrived on time. Time will tell.",
        ),
        "negative": (
            "Terrible {noun}, stopped working after two days. Returning it.",
            "Poor quality, the {brand} {noun} feels cheap. Very disappointed.",
            "Do not buy. The {noun} broke on first use.",
            "Waste of money, worst {noun} ever.",
            "Not as described and {brand} support never answered.",
        ),
    },
    "zh": {
        "positive": (
            "质量很好，非常满意",
            "{brand}的{noun}太棒了，物超所值，还会回购",
            "做工精细，发货很快，好评！",
            "{noun}很好用，推荐购买",
            "非常喜欢，和描述的一样",
        ),
        "neutral": (
            "还行吧，一般般",
            "{noun}中规中矩，价格还可以",
            "东西收到了，用用再说",
            "质量一般，不算好也不算差",
        ),
        "negative": (
            "太差了，退货",
            "质量很差，{noun}用了两天就坏了",
            "非常失望，{brand}的东西不会再买了",
            "和描述不符，差评",
            "做工粗糙，浪费钱",
        ),
    },
}

#: The log starts here unless told otherwise: 2025-01-01T00:00:00Z.
DEFAULT_START_TS: Final = 1_735_689_600.0
DAY_S: Final = 86_400.0

# Behaviour knobs (probabilities per step/event; times in seconds).
P_OPENING_SEARCH: Final = 0.45
P_REFINE_SEARCH: Final = 0.08
P_GOES_WITH: Final = 0.30
P_CART_BASE: Final = 0.04
P_CART_QUALITY: Final = 0.16
P_BUY_GIVEN_CART: Final = 0.55
P_REVIEW: Final = 0.40
P_NO_STARS: Final = 0.15
P_CHINESE_SHOPPER: Final = 0.30
P_CHINESE_QUERY: Final = 0.50
MEAN_STEPS_GEOMETRIC_P: Final = 0.22
MAX_STEPS: Final = 25
POPULARITY_SKEW: Final = 2.2
#: Mean seconds before an event of each kind (search, view, cart, purchase) in a session.
GAP_MEAN_S: Final = (20.0, 40.0, 25.0, 60.0)
GAP_MIN_S: Final = 1.0

SEARCH, VIEW, CART, PURCHASE, REVIEW = range(5)
_KIND_ACTION: Final = {VIEW: "view", CART: "add_to_cart", PURCHASE: "purchase"}


@dataclass(frozen=True)
class Catalog:
    """Items (index = position) with their category, brand, colour, price, hidden quality."""

    category: np.ndarray  # int, index into CATEGORIES
    brand: np.ndarray  # int, index into BRANDS
    color: np.ndarray  # int, index into COLORS
    price: np.ndarray  # float
    quality: np.ndarray  # float in (0, 1); drives carts, ratings and review text
    goes_with: np.ndarray  # int [items, GOES_WITH]: items viewed after this one
    by_popularity: np.ndarray  # item indices grouped by category, most popular first
    category_start: np.ndarray  # offset of each category in by_popularity
    category_size: np.ndarray

    @property
    def size(self) -> int:
        return int(self.category.shape[0])

    def item_id(self, index: int) -> str:
        return f"p{index}"

    def popular_in(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One item per entry of ``categories``, drawn by (skewed) popularity."""
        size = self.category_size[categories]
        rank = np.minimum((size * rng.random(categories.shape) ** POPULARITY_SKEW), size - 1)
        return self.by_popularity[self.category_start[categories] + rank.astype(np.int64)]


def build_catalog(items: int, rng: np.random.Generator) -> Catalog:
    """A random catalog of ``items`` items (at least one per category)."""
    n_cat = len(CATEGORIES)
    if items < n_cat:
        raise ValueError(f"need at least {n_cat} items (one per category), got {items}")
    category = np.concatenate([np.arange(n_cat), rng.integers(0, n_cat, items - n_cat)])
    category_brands = rng.permuted(np.tile(np.arange(len(BRANDS)), (n_cat, 1)), axis=1)
    brand = category_brands[category, rng.integers(0, BRANDS_PER_CATEGORY, items)]
    base_price = np.array([c[3] for c in CATEGORIES])[category]
    price = np.round(base_price * rng.lognormal(0.0, 0.35, items), 2)
    quality = rng.beta(2.2, 1.4, items)
    # Popularity order inside each category: a random permutation, grouped by category.
    by_popularity = np.lexsort((rng.random(items), category))
    category_size = np.bincount(category, minlength=n_cat)
    category_start = np.concatenate([[0], np.cumsum(category_size)[:-1]])
    partial = Catalog(
        category, brand, rng.integers(0, len(COLORS), items), price, quality,
        np.zeros((items, GOES_WITH), dtype=np.int64), by_popularity, category_start, category_size,
    )  # fmt: skip
    accessory = np.array([c[2] for c in CATEGORIES])[category]
    target = np.where(accessory >= 0, accessory, category)  # accessories go with their own kind
    goes_with = partial.popular_in(rng, np.repeat(target, GOES_WITH)).reshape(items, GOES_WITH)
    return replace(partial, goes_with=goes_with)


@dataclass(frozen=True)
class _Events:
    """The whole log as parallel arrays, one entry per event, in time order."""

    ts: np.ndarray
    kind: np.ndarray
    user: np.ndarray
    session: np.ndarray  # global session number
    session_of_user: np.ndarray  # the session's number within its user
    item: np.ndarray
    rating: np.ndarray  # reviews: 1-5, 0 = no stars
    label: np.ndarray  # reviews: 0 negative, 1 neutral, 2 positive
    chinese: np.ndarray  # the user writes/searches in Chinese
    words: np.ndarray  # searches: bit 0 brand, bit 1 colour, bit 2 Chinese words


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarted at each segment (segments given by their sizes)."""
    total = np.cumsum(values)
    ends = np.cumsum(counts)
    before = np.concatenate([[0.0], total[ends[:-1] - 1]]) if len(counts) else np.zeros(0)
    return total - np.repeat(before, counts)


def _simulate(users: int, catalog: Catalog, days: float, sessions_per_day: float,
              rng: np.random.Generator, start_ts: float) -> _Events:  # fmt: skip
    """Draw every session, step and event of the period at once."""
    n_cat = len(CATEGORIES)
    span = days * DAY_S
    # Users: activity, language, early and late category preferences.
    activity = rng.lognormal(0.0, 0.6, users)
    chinese_user = rng.random(users) < P_CHINESE_SHOPPER
    concentration = np.where(np.array([c[2] for c in CATEGORIES]) >= 0, 0.3, 0.08)
    early = rng.dirichlet(concentration, users)
    late = rng.dirichlet(concentration, users)

    # Sessions: count per user, then category by the drifting preference.
    n_sessions = rng.poisson(activity * sessions_per_day * days) + 1
    s_user = np.repeat(np.arange(users), n_sessions)
    s_index = _segment_cumsum(np.ones(len(s_user)), n_sessions).astype(np.int64) - 1
    drift = (s_index + 0.5) / n_sessions[s_user]
    preference = np.where((rng.random(len(s_user)) < drift)[:, None], late[s_user], early[s_user])
    s_cat = np.minimum(
        (np.cumsum(preference, 1) < rng.random(len(s_user))[:, None]).sum(1), n_cat - 1
    )
    s_steps = np.minimum(rng.geometric(MEAN_STEPS_GEOMETRIC_P, len(s_user)), MAX_STEPS)

    # Steps (one view each): popular item of the category, or goes-with of the last main view.
    step_session = np.repeat(np.arange(len(s_user)), s_steps)
    first = _segment_cumsum(np.ones(len(step_session)), s_steps) == 1
    picked = catalog.popular_in(rng, s_cat[step_session])
    goes_with = ~first & (rng.random(len(picked)) < P_GOES_WITH)
    last_main = np.maximum.accumulate(np.where(goes_with, 0, np.arange(len(picked))))
    companion = catalog.goes_with[picked[last_main], rng.integers(0, GOES_WITH, len(picked))]
    item = np.where(goes_with, companion, picked)
    searched = rng.random(len(item)) < np.where(first, P_OPENING_SEARCH, P_REFINE_SEARCH)
    carted = rng.random(len(item)) < P_CART_BASE + P_CART_QUALITY * catalog.quality[item]
    bought = carted & (rng.random(len(item)) < P_BUY_GIVEN_CART)

    # Session events: [search] view [cart] [purchase] per step.
    per_step = searched.astype(np.int64) + 1 + carted + bought
    ev_step = np.repeat(np.arange(len(item)), per_step)
    within = _segment_cumsum(np.ones(len(ev_step)), per_step).astype(np.int64) - 1
    kind = within + 1 - searched[ev_step]
    ev_session = step_session[ev_step]
    gap_mean = np.array(GAP_MEAN_S)[kind]
    gaps = GAP_MIN_S + rng.exponential(1.0, len(kind)) * gap_mean
    per_session = np.bincount(ev_session, minlength=len(s_user))
    gaps[np.cumsum(per_session) - per_session] = 0.0  # a session starts at its start
    offset = _segment_cumsum(gaps, per_session)
    duration = offset[np.cumsum(per_session) - 1]

    # Session starts: idle gaps plus the previous session's length, per user.
    idle = rng.exponential(1.0, len(s_user)) * span / n_sessions[s_user]
    since_previous = idle + np.concatenate([[0.0], duration[:-1]]) * (s_index > 0)
    s_start = start_ts + _segment_cumsum(since_previous, n_sessions)
    ts = s_start[ev_session] + offset
    ev_item = item[ev_step]

    # Reviews: some purchases, hours to days later, rated by the item's hidden quality.
    purchases = np.flatnonzero((kind == PURCHASE) & (rng.random(len(kind)) < P_REVIEW))
    r_item = ev_item[purchases]
    stars = np.clip(
        np.rint(1.0 + 4.0 * catalog.quality[r_item] + rng.normal(0, 0.6, len(r_item))), 1, 5
    )
    r_label = np.where(stars >= 4, 2, np.where(stars == 3, 1, 0))
    r_rating = np.where(rng.random(len(r_item)) < P_NO_STARS, 0, stars).astype(np.int64)
    r_ts = ts[purchases] + 3_600.0 + rng.exponential(2 * DAY_S, len(r_item))

    e_user = s_user[ev_session]
    words = (rng.random(len(kind)) < 0.4) | 2 * (rng.random(len(kind)) < 0.4)
    words = words | 4 * (chinese_user[e_user] & (rng.random(len(kind)) < P_CHINESE_QUERY))
    n_ev, n_rev = len(kind), len(r_item)
    all_ts = np.concatenate([ts, r_ts])
    # Time order; the log ends at the end of the period (like any export).
    order = np.lexsort((np.arange(n_ev + n_rev), all_ts))
    order = order[all_ts[order] < start_ts + span]
    all_user = np.concatenate([e_user, e_user[purchases]])

    def merged(session_part: np.ndarray, review_part: np.ndarray) -> np.ndarray:
        return np.concatenate([session_part, review_part])[order]

    return _Events(
        ts=_strictly_increasing_per_user(all_ts[order], all_user[order]),
        kind=merged(kind, np.full(n_rev, REVIEW)),
        user=all_user[order],
        session=merged(ev_session, ev_session[purchases]),
        session_of_user=merged(s_index[ev_session], s_index[ev_session[purchases]]),
        item=merged(ev_item, r_item),
        rating=merged(np.zeros(n_ev, np.int64), r_rating),
        label=merged(np.zeros(n_ev, np.int64), r_label),
        chinese=merged(chinese_user[e_user], chinese_user[e_user[purchases]]),
        words=merged(words, np.zeros(n_rev, np.int64)),
    )


def _strictly_increasing_per_user(ts: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Times rounded to milliseconds, nudged so that no user has two equal times."""
    rounded = np.round(ts, 3)
    order = np.lexsort((np.arange(len(ts)), user))
    by_user, times = user[order], rounded[order]
    clash = np.concatenate([[False], (by_user[1:] == by_user[:-1]) & (times[1:] <= times[:-1])])
    while clash.any():  # rare: two events of one user in the same millisecond
        times[clash] = times[np.flatnonzero(clash) - 1] + 0.001
        clash[1:] = (by_user[1:] == by_user[:-1]) & (times[1:] <= times[:-1])
        clash[0] = False
    rounded[order] = np.round(times, 3)
    return rounded


# ----------------------------------------------------------------------------
# Events as canonical JSON objects
# ----------------------------------------------------------------------------


def _query(catalog: Catalog, item: int, words: int) -> str:
    category = CATEGORIES[int(catalog.category[item])]
    chinese = bool(words & 4)
    parts = []
    if words & 2:
        parts.append(COLORS[int(catalog.color[item])][1 if chinese else 0])
    if words & 1:
        parts.append(BRANDS[int(catalog.brand[item])])
    parts.append(category[1] if chinese else category[0])
    return " ".join(parts)


def _results(catalog: Catalog, item: int) -> list[str]:
    """What the search showed: the category's top items, with the one viewed next."""
    category = int(catalog.category[item])
    start, size = int(catalog.category_start[category]), int(catalog.category_size[category])
    shown = [int(i) for i in catalog.by_popularity[start : start + min(size, 10)]]
    if item not in shown:
        shown[-1] = item
    return [catalog.item_id(i) for i in shown]


def generate(
    users: int,
    items: int,
    days: float,
    seed: int,
    *,
    start_ts: float = DEFAULT_START_TS,
    sessions_per_day: float = 0.75,
) -> Iterator[dict[str, Any]]:
    """The log's events as canonical input-event objects, in time order."""
    if users < 1 or days <= 0 or sessions_per_day <= 0:
        raise ValueError("users must be >= 1, days and sessions_per_day > 0")
    rng = np.random.default_rng(seed)
    catalog = build_catalog(items, rng)
    events = _simulate(users, catalog, days, sessions_per_day, rng, start_ts)
    categories = [c[0] for c in CATEGORIES]
    item_ids = [catalog.item_id(i) for i in range(catalog.size)]
    prices = catalog.price.tolist()
    item_category = catalog.category.tolist()
    columns = zip(
        events.ts.tolist(), events.kind.tolist(), events.user.tolist(),
        events.session_of_user.tolist(), events.item.tolist(), events.rating.tolist(),
        events.label.tolist(), events.chinese.tolist(), events.words.tolist(), strict=True,
    )  # fmt: skip
    template_rng = np.random.default_rng([seed, 1])
    for n, (ts, kind, user, session, item, rating, label, chinese, words) in enumerate(columns):
        event_id, user_id = f"g{seed}-{n}", f"u{user}"
        if kind == SEARCH:
            yield {
                "event_id": event_id,
                "user_id": user_id,
                "query": _query(catalog, item, words),
                "ts": ts,
                "results": _results(catalog, item),
            }
        elif kind == REVIEW:
            lang = "zh" if chinese else "en"
            yield _review(catalog, template_rng, event_id, user_id, item, ts, rating, label, lang)
        else:
            yield {
                "event_id": event_id,
                "user_id": user_id,
                "item_id": item_ids[item],
                "action": _KIND_ACTION[kind],
                "ts": ts,
                "session_id": f"{user_id}-s{session}",
                "price": prices[item],
                "category": categories[item_category[item]],
            }


def _review(catalog: Catalog, rng: np.random.Generator, event_id: str, user_id: str, item: int,
            ts: float, rating: int, label: int, lang: str) -> dict[str, Any]:  # fmt: skip
    chinese = lang == "zh"
    options = REVIEW_TEMPLATES[lang][("negative", "neutral", "positive")[label]]
    category = CATEGORIES[int(catalog.category[item])]
    text = options[int(rng.integers(len(options)))].format(
        noun=category[1] if chinese else category[0], brand=BRANDS[int(catalog.brand[item])]
    )
    review: dict[str, Any] = {
        "event_id": event_id,
        "user_id": user_id,
        "item_id": catalog.item_id(item),
        "text": text,
        "ts": ts,
    }
    if rating:
        review["rating"] = rating
    review["lang"] = lang
    return review


def write_log(out: str | Path, events: Iterator[dict[str, Any]]) -> int:
    """Write events as JSONL (``.gz`` compressed, ``-`` = stdout); returns the count."""
    count = 0
    with _open_out(out) as handle:
        chunk: list[bytes] = []
        for event in events:
            chunk.append(orjson.dumps(event))
            count += 1
            if len(chunk) == 10_000:
                handle.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            handle.write(b"\n".join(chunk) + b"\n")
    return count


@contextmanager
def _open_out(out: str | Path) -> Iterator[IO[bytes]]:
    if str(out) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    elif str(out).endswith(".gz"):
        with gzip.open(out, "wb", compresslevel=3) as packed:
            yield packed  # type: ignore[misc]
    else:
        with open(out, "wb") as plain:
            yield plain


# ----------------------------------------------------------------------------
# Command line: recstream generate
# ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream generate``."""
    parser.add_argument("--users", type=int, default=1_000, help="shoppers (default 1000)")
    parser.add_argument("--items", type=int, default=500, help="catalog size (default 500)")
    parser.add_argument("--days", type=float, default=7.0, help="period length (default 7)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--sessions-per-day", type=float, default=0.75, help="mean sessions per shopper per day"
    )
    parser.add_argument(
        "--start",
        default="2025-01-01T00:00:00Z",
        help="ISO-8601 time the log starts (default 2025-01-01T00:00:00Z)",
    )
    parser.add_argument("--out", required=True, help="output JSONL path (.gz ok, - = stdout)")


def run(args: argparse.Namespace) -> int:
    """Generate the log and report how many events it has and how long it took."""
    start = datetime.fromisoformat(args.start)
    if start.tzinfo is None:
        print("error: --start needs a zone (Z or +hh:mm)", file=sys.stderr)
        return 2
    began = time.perf_counter()
    try:
        events = generate(
            args.users, args.items, args.days, args.seed,
            start_ts=start.timestamp(), sessions_per_day=args.sessions_per_day,
        )  # fmt: skip
        count = write_log(args.out, events)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - began
    print(f"wrote {count:,} events to {args.out} in {took:.1f} s ({count / took:,.0f}/s)",
          file=sys.stderr)  # fmt: skip
    return 0
