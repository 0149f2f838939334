"""Evaluate recommendation models on a log, offline, through the worker's own pipeline.

The log (any format of :mod:`recstream.model.adapters`) is sorted by time and fed,
as the raw topic records the worker would read (same JSON, keys and home
partitions), through :class:`recstream.streams.pipeline.Pipeline` (the session
windows, exclusions and scoring calls of the worker; no broker, no Faust).
Every recommendation the pipeline emits is then checked against what the user
really did next (prequential evaluation):

* the target of a recommendation triggered by a click is the user's next click
  on a *different* item (view, add-to-cart or purchase); for one triggered by a
  search, the user's next click on any item.  The user's last events have no
  target and are not scored.
* HR@10 (target among the first 10 items), NDCG@10 (``1 / log2(rank + 2)``),
  MRR@20 (``1 / (rank + 1)`` within the first 20), averaged over the click
  triggers (search triggers are reported apart);
* catalog coverage: the share of the log's items that appear in at least one
  top-10 list; the fallback share: recommendations served from the popularity
  fallback;
* latency: wall time of each ``recommend`` call (one per micro-batch of
  ``--batch-size`` events), p50/p90/p99.

Reviews are scored too when the model folder has ``sentiment.onnx``: the label is
compared with the label the stars imply (1-2 negative, 3 neutral, 4-5 positive).

The recommendations are computed with ``top_k = 20``; the first 10 are exactly
what the worker (``RECSTREAM_TOP_K=10``) shows, since the model's ranking is cut,
never re-ranked.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from recstream.model.adapters import FORMATS, AdapterError, AdapterStats, read_events
from recstream.streams.pipeline import DictStore, Pipeline, RawRecord, home_partition
from recstream.streams.records import (
    Click,
    Event,
    Recommendation,
    Review,
    Search,
    event_to_dict,
    topic_of,
)
from recstream.streams.scoring import (
    RecsResult,
    RecsScorer,
    SentimentResult,
    SentimentScorer,
    Token,
)
from recstream.streams.settings import Settings, get_settings

HR_K: Final = 10
MRR_K: Final = 20
#: Time bins of the metrics-over-time series (and plot).
TIME_BINS: Final = 20
DEFAULT_BATCH: Final = 256


# ----------------------------------------------------------------------------
# Feeding the log
# ----------------------------------------------------------------------------


def topic_records(events: Iterable[Event], settings: Settings) -> Iterator[RawRecord]:
    """The records the worker would consume for ``events``: topic, home partition, offset."""
    offsets: Counter[tuple[str, int]] = Counter()
    for event in events:
        kind = topic_of(event)
        topic = settings.topic(kind)
        partition = home_partition(event.user_id, settings.partitions)
        offset = offsets[topic, partition]
        offsets[topic, partition] += 1
        value = orjson.dumps(event_to_dict(event))
        yield RawRecord(kind, topic, partition, offset, value, event.user_id.encode())


class TimedRecs:
    """A :class:`RecsScorer` wrapper that records the wall time of every call."""

    def __init__(self, scorer: RecsScorer) -> None:
        self.scorer = scorer
        self.seconds: list[float] = []
        self.sizes: list[int] = []

    @property
    def model_version(self) -> str:
        return self.scorer.model_version

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        began = time.perf_counter()
        results = self.scorer.recommend(histories, exclude, k)
        self.seconds.append(time.perf_counter() - began)
        self.sizes.append(len(histories))
        return results


class NoSentiment:
    """Stands in when a model has no sentiment.onnx: reviews are then not fed at all."""

    model_version = "none"

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]:
        raise RuntimeError("no sentiment model loaded; reviews must not be fed")


def next_targets(events: Sequence[Event]) -> dict[str, str]:
    """Trigger event id → the item the user interacted with next (see module docstring)."""
    targets: dict[str, str] = {}
    upcoming: dict[str, list[str]] = defaultdict(list)  # user -> later click items, last first
    for event in reversed(events):
        if isinstance(event, Review):
            continue
        later = upcoming[event.user_id]
        if isinstance(event, Search):
            if later:
                targets[event.event_id] = later[-1]
            continue
        different = next((item for item in reversed(later) if item != event.item_id), None)
        if different is not None:
            targets[event.event_id] = different
        later.append(event.item_id)
    return targets


# ----------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------


@dataclass
class Ranking:
    """Accumulates rank metrics over scored triggers."""

    scored: int = 0
    hits: float = 0.0
    ndcg: float = 0.0
    rr: float = 0.0

    def add(self, items: Sequence[str], target: str) -> tuple[float, float]:
        """Count one trigger; returns its (hit@10, ndcg@10)."""
        self.scored += 1
        try:
            rank = list(items[:MRR_K]).index(target)
        except ValueError:
            return 0.0, 0.0
        self.rr += 1.0 / (rank + 1)
        if rank >= HR_K:
            return 0.0, 0.0
        gain = 1.0 / math.log2(rank + 2)
        self.hits += 1.0
        self.ndcg += gain
        return 1.0, gain

    def as_dict(self) -> dict[str, float | int]:
        n = max(self.scored, 1)
        return {
            "scored": self.scored,
            f"hr@{HR_K}": self.hits / n,
            f"ndcg@{HR_K}": self.ndcg / n,
            f"mrr@{MRR_K}": self.rr / n,
        }


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (``p50`` ...), 0.0 when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return {f"p{q}": 0.0 for q in qs}
    return {f"p{q}": ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] for q in qs}


@dataclass
class ModelReport:
    """Everything measured for one model on one log."""

    model: str
    version: str
    clicks: Ranking = field(default_factory=Ranking)
    searches: Ranking = field(default_factory=Ranking)
    recommendations: list[Recommendation] = field(default_factory=list)
    coverage: float = 0.0
    fallback_share: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH
    dead_letters: Counter[str] = field(default_factory=Counter)
    sentiment: dict[str, Any] | None = None
    over_time: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_version": self.version,
            "clicks": self.clicks.as_dict(),
            "searches": self.searches.as_dict(),
            "recommendations": len(self.recommendations),
            "catalog_coverage@10": self.coverage,
            "fallback_share": self.fallback_share,
            "latency_ms_per_batch": self.latency_ms,
            "batch_size": self.batch_size,
            "dead_letters": dict(self.dead_letters),
            "sentiment": self.sentiment,
            "over_time": self.over_time,
        }


def evaluate(
    events: Sequence[Event],
    recs: RecsScorer,
    settings: Settings,
    *,
    sentiment: SentimentScorer | None = None,
    batch_size: int = DEFAULT_BATCH,
    model: str = "",
) -> ModelReport:
    """Feed time-ordered ``events`` through a fresh pipeline and score what it recommends."""
    timed = TimedRecs(recs)
    run_settings = settings.model_copy(update={"top_k": max(MRR_K, settings.top_k)})
    pipeline = Pipeline(
        run_settings, timed, sentiment or NoSentiment(), partitions=settings.partitions
    )
    fed = [e for e in events if sentiment is not None or not isinstance(e, Review)]
    store = DictStore()
    report = ModelReport(model=model, version=recs.model_version, batch_size=batch_size)
    labels: list[tuple[str, int]] = []
    reviews = {e.event_id: e for e in fed if isinstance(e, Review)}
    records = list(topic_records(fed, settings))
    for start in range(0, len(records), batch_size):
        out = pipeline.run(records[start : start + batch_size], store)
        report.recommendations += out.recommendations
        for letter in out.dead_letters:
            report.dead_letters[letter.error.split(":", 1)[0]] += 1
        for result in out.sentiments:
            rating = reviews[result.event_id].rating
            if rating is not None:
                labels.append((result.label, rating))
    _score(report, events, timed)
    if sentiment is not None:
        report.sentiment = _sentiment_summary(labels, len(reviews))
    return report


def _score(report: ModelReport, events: Sequence[Event], timed: TimedRecs) -> None:
    targets = next_targets(events)
    kinds = {e.event_id: type(e) for e in events}
    catalog = {e.item_id for e in events if isinstance(e, Click)}
    shown: set[str] = set()
    per_bin: list[tuple[float, float, float]] = []
    for rec in report.recommendations:
        items = [scored.item_id for scored in rec.items]
        shown.update(items[:HR_K])
        target = targets.get(rec.trigger_event_id)
        if target is None:
            continue
        ranking = report.clicks if kinds[rec.trigger_event_id] is Click else report.searches
        hit, gain = ranking.add(items, target)
        if ranking is report.clicks:
            per_bin.append((rec.event_ts, hit, gain))
    n = len(report.recommendations)
    report.coverage = len(shown & catalog) / len(catalog) if catalog else 0.0
    report.fallback_share = sum(r.fallback for r in report.recommendations) / n if n else 0.0
    report.latency_ms = {k: v * 1000.0 for k, v in percentiles(timed.seconds).items()}
    calls = sum(timed.sizes)
    report.latency_ms["mean_per_recommendation"] = 1000.0 * sum(timed.seconds) / max(calls, 1)
    report.over_time = _over_time(per_bin)


def _over_time(points: list[tuple[float, float, float]]) -> list[dict[str, float]]:
    """HR@10 and NDCG@10 of click triggers in equal time bins."""
    if not points:
        return []
    first, last = min(p[0] for p in points), max(p[0] for p in points)
    width = (last - first) / TIME_BINS or 1.0
    bins: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(TIME_BINS)]
    for ts, hit, gain in points:
        slot = bins[min(int((ts - first) / width), TIME_BINS - 1)]
        slot[0] += 1
        slot[1] += hit
        slot[2] += gain
    return [
        {"start_ts": first + i * width, "scored": n, f"hr@{HR_K}": h / n, f"ndcg@{HR_K}": g / n}
        for i, (n, h, g) in enumerate(bins)
        if n
    ]


def _sentiment_summary(labels: list[tuple[str, int]], reviews: int) -> dict[str, Any]:
    def implied(stars: int) -> str:
        return "negative" if stars <= 2 else "neutral" if stars == 3 else "positive"

    agree = sum(label == implied(stars) for label, stars in labels)
    return {
        "reviews": reviews,
        "with_stars": len(labels),
        "agreement_with_stars": agree / len(labels) if labels else None,
        "labels": dict(Counter(label for label, _ in labels)),
    }


# ----------------------------------------------------------------------------
# Output: table and plot
# ----------------------------------------------------------------------------


def table(reports: Sequence[ModelReport]) -> str:
    """A plain-text comparison table, one column per model."""
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, cell: Callable[[ModelReport], str]) -> None:
        rows.append((name, [cell(r) for r in reports]))

    row("model version", lambda r: r.version)
    row("click triggers scored", lambda r: f"{r.clicks.scored:,}")
    for name in (f"hr@{HR_K}", f"ndcg@{HR_K}", f"mrr@{MRR_K}"):
        values = [f"{r.clicks.as_dict()[name]:.4f}" for r in reports]
        rows.append((f"{name.upper()} (clicks)", values))
    row("search triggers scored", lambda r: f"{r.searches.scored:,}")
    row(f"HR@{HR_K} (searches)", lambda r: f"{r.searches.as_dict()[f'hr@{HR_K}']:.4f}")
    row("catalog coverage@10", lambda r: f"{r.coverage:.4f}")
    row("popularity fallback share", lambda r: f"{r.fallback_share:.4f}")
    for q in ("p50", "p90", "p99"):
        rows.append((f"scoring ms/batch {q}", [f"{r.latency_ms.get(q, 0.0):.2f}" for r in reports]))
    row("batch size", lambda r: str(r.batch_size))
    if any(r.sentiment for r in reports):
        row("sentiment agrees with stars", lambda r: _agreement(r.sentiment))
    if any(r.dead_letters for r in reports):
        row("dead letters", lambda r: str(sum(r.dead_letters.values())))
    headers = ["metric"] + [r.model for r in reports]
    widths = [max(len(name) for name in [headers[0], *(name for name, _ in rows)])]
    widths += [max(len(h), *(len(v[i]) for _, v in rows)) for i, h in enumerate(headers[1:])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for name, values in rows:
        cells = [v.rjust(w) for v, w in zip(values, widths[1:], strict=True)]
        lines.append("  ".join([name.ljust(widths[0]), *cells]))
    return "\n".join(lines)


def _agreement(sentiment: dict[str, Any] | None) -> str:
    value = sentiment.get("agreement_with_stars") if sentiment else None
    return "-" if value is None else f"{value:.4f}"


def plot(reports: Sequence[ModelReport], path: Path) -> None:
    """HR@10 and NDCG@10 of click triggers over time, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for report in reports:
        times = [datetime.fromtimestamp(p["start_ts"], UTC) for p in report.over_time]
        for axis, name in zip(axes, (f"hr@{HR_K}", f"ndcg@{HR_K}"), strict=True):
            axis.plot(times, [p[name] for p in report.over_time], marker="o", label=report.model)
            axis.set_ylabel(name.upper())
            axis.grid(alpha=0.3)
    axes[0].set_title("Prequential next-item quality over the log (click triggers)")
    axes[0].legend()
    axes[1].set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Command line: recstream evaluate replay
# ----------------------------------------------------------------------------


def load_model(spec: str, settings: Settings) -> tuple[RecsScorer, SentimentScorer | None]:
    """A model folder (``recs.onnx`` + optional ``sentiment.onnx``) or one ``.onnx`` file.

    From a folder the variant the worker would serve is read (``RECSTREAM_MODEL_VARIANT``,
    ``auto`` by default: the int8 files on the CPU when they are there), so the figures
    are those of what the worker answers with; a file is read as it is.
    """
    from recstream.streams.scoring import (
        OnnxRecsScorer,
        OnnxSentimentScorer,
        RuntimeOptions,
        served_file,
    )

    options = RuntimeOptions.from_settings(settings, scoring_threads=1)  # the replay's own
    path = Path(spec)
    recs_path, sentiment_path = path, None
    if path.is_dir():
        recs_path = served_file(path, "recs", settings.model_variant, options)
        sentiment_path = served_file(path, "sentiment", settings.model_variant, options)
    recs = OnnxRecsScorer(recs_path, options, reload_interval=math.inf)
    recs.model_version  # noqa: B018 - loads now, so a bad file fails before the replay
    sentiment = None
    if sentiment_path is not None and sentiment_path.is_file():
        sentiment = OnnxSentimentScorer(sentiment_path, options, reload_interval=math.inf)
        sentiment.model_version  # noqa: B018
    return recs, sentiment


def read_sorted(path: str, fmt: str, *, strict: bool, stats: AdapterStats) -> list[Event]:
    """The log's events sorted by time (stable: per-user order kept on ties)."""
    events = list(read_events(path, fmt, strict=strict, stats=stats))
    events.sort(key=lambda event: event.ts)
    return events


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recstream evaluate replay``."""
    parser.add_argument("path", help="event log (.gz ok; - reads standard input)")
    parser.add_argument("--format", default="jsonl", choices=FORMATS, help="log format")
    parser.add_argument(
        "--model", action="append", required=True,
        help="model folder (recs.onnx [+ sentiment.onnx]; the variant the worker serves) or "
        "one recs .onnx file; give twice to compare",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", type=Path, help="write metrics over time to this PNG")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="events per pipeline batch"
    )
    parser.add_argument("--limit", type=int, help="use only the first N events (time order)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")


def run(args: argparse.Namespace) -> int:
    """Evaluate each model on the log and print the comparison."""
    from recstream.streams.scoring import ModelLoadError

    settings = get_settings()
    if len(args.model) > 2:
        print("error: give --model at most twice", file=sys.stderr)
        return 2
    stats = AdapterStats()
    try:
        events = read_sorted(args.path, args.format, strict=args.strict, stats=stats)
        models = [(spec, *load_model(spec, settings)) for spec in args.model]
    except (AdapterError, ModelLoadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.limit is not None:
        events = events[: args.limit]
    reports = []
    for spec, recs, sentiment in models:
        report = evaluate(
            events, recs, settings, sentiment=sentiment, batch_size=args.batch_size, model=spec
        )
        reports.append(report)
    if args.plot is not None:
        plot(reports, args.plot)
    if args.json:
        doc = {
            "log": args.path,
            "format": args.format,
            "events": len(events),
            "skipped_lines": dict(stats.skipped),
            "bad_lines": dict(stats.malformed),
            "models": [r.as_dict() for r in reports],
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"{args.path} ({args.format}): {len(events):,} events, in time order")
        if stats.malformed:
            print(f"bad lines skipped: {dict(stats.malformed)}")
        print(table(reports))
    return 0
