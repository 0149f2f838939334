"""Labelled review data sets → canonical review events with a sentiment label.

Formats (``--format``):

* ``uci``: UCI "Sentiment Labelled Sentences" (``sentence<TAB>0|1``, line 1 a
  header); binary.
* ``alexa``: Amazon Alexa reviews TSV (UTF-8 BOM; ``rating, date, variation,
  verified_reviews, feedback``); the label comes from the stars: 1-2 negative,
  3 neutral, 4-5 positive.
* ``zh_shopping``: ChineseNlpCorpus ``online_shopping_10_cats`` (a ``.zip`` of, or a
  plain, UTF-8 CSV ``cat,label,review``; 1 positive, 0 negative); binary, with the
  product category kept as the ``group`` for per-category evaluation.
* ``jsonl``: canonical reviews JSONL (one ``reviews`` topic object per line); the
  label is the ``label`` field (``negative|neutral|positive``) when present, else
  the ``rating`` by the star rule.  Lines of other topics (no ``text``) are skipped.

Rows whose text is empty after trimming are skipped and counted.  Any malformed row
raises :class:`DataFormatError` naming the file and line.

The split is fixed: stratified by label (and by category for ``zh_shopping``),
shuffled with :data:`SPLIT_SEED`, 20 % of each stratum held out for testing
(rounded), the rest for training; :func:`train_validation_split` then holds 10 %
of the training part out for early stopping, the same way with
:data:`VALIDATION_SEED`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from recstream.streams.records import LABELS, MIN_TS, InvalidEvent, Review, parse_review

FORMATS: Final = ("uci", "alexa", "zh_shopping", "jsonl")
BINARY_LABELS: Final = ("negative", "positive")
SPLIT_SEED: Final = 20_240_601
VALIDATION_SEED: Final = 7
TEST_FRACTION: Final = 0.2
VALIDATION_FRACTION: Final = 0.1


class DataFormatError(ValueError):
    """A row of a data file that does not match its format."""

    def __init__(self, path: Path, line: int, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail}")
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class LabelledReview:
    """A review event, its sentiment label and an optional group (e.g. category)."""

    review: Review
    label: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewSet:
    """All labelled reviews of one file; ``labels`` are the labels the format has, and
    ``skipped`` counts reviews left out (empty text, or no label and no stars)."""

    name: str
    path: Path
    format: str
    labels: tuple[str, ...]
    items: tuple[LabelledReview, ...]
    skipped: int = 0

    @property
    def texts(self) -> list[str]:
        return [item.review.text for item in self.items]


def stars_to_label(rating: int) -> str:
    """The star rule: 1-2 negative, 3 neutral, 4-5 positive."""
    if not 1 <= rating <= 5:
        raise ValueError(f"rating {rating} not in 1..5")
    return "negative" if rating <= 2 else "neutral" if rating == 3 else "positive"


def load_reviews(path: Path | str, fmt: str) -> ReviewSet:
    """Read a labelled review file in one of :data:`FORMATS`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown review format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no review data at {path}")
    readers = {
        "uci": _read_uci,
        "alexa": _read_alexa,
        "zh_shopping": _read_zh,
        "jsonl": _read_jsonl,
    }
    items: list[LabelledReview] = []
    skipped = 0
    for item in readers[fmt](path):
        if item is not None and item.review.text.strip():
            items.append(item)
        else:
            skipped += 1
    labels = BINARY_LABELS if fmt in ("uci", "zh_shopping") else LABELS
    if fmt == "jsonl" and not any(item.label == "neutral" for item in items):
        labels = BINARY_LABELS
    stem = path.name.split(".")[0]
    return ReviewSet(stem, path, fmt, labels, tuple(items), skipped)


def _review(
    source: str,
    line: int,
    text: str,
    *,
    ts: float = MIN_TS,
    rating: int | None = None,
    lang: str | None = None,
    item_id: str | None = None,
) -> Review:
    return Review(
        event_id=f"{source}:{line}",
        user_id=f"{source}-user",
        item_id=item_id or source,
        text=text,
        ts=ts,
        rating=rating,
        lang=lang,
    )


def _binary_label(path: Path, line: int, value: str) -> str:
    value = value.strip()
    if value not in ("0", "1"):
        raise DataFormatError(path, line, f"label must be 0 or 1, got {value[:20]!r}")
    return "positive" if value == "1" else "negative"


def _read_uci(path: Path) -> Iterator[LabelledReview]:
    source = path.name.split(".")[0]
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                continue  # header
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            text, sep, label = line.rpartition("\t")
            if not sep:
                raise DataFormatError(path, number, "expected 'sentence<TAB>label'")
            yield LabelledReview(
                _review(source, number, text.strip(), lang="en"), _binary_label(path, number, label)
            )


def _read_alexa(path: Path) -> Iterator[LabelledReview]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != [
            "rating",
            "date",
            "variation",
            "verified_reviews",
        ]:
            raise DataFormatError(
                path, 1, "expected header 'rating date variation verified_reviews'"
            )
        for row in reader:
            number = reader.line_num
            if not row:
                continue
            if len(row) < 4:
                raise DataFormatError(path, number, f"expected at least 4 columns, got {len(row)}")
            try:
                rating = int(row[0])
                label = stars_to_label(rating)
            except ValueError:
                raise DataFormatError(
                    path, number, f"rating must be 1-5, got {row[0][:20]!r}"
                ) from None
            try:
                ts = datetime.strptime(row[1].strip(), "%d-%b-%y").replace(tzinfo=UTC).timestamp()
            except ValueError:
                raise DataFormatError(
                    path, number, f"date must be like 31-Jul-18, got {row[1][:20]!r}"
                ) from None
            review = _review(
                "amazon_alexa",
                number,
                row[3].strip(),
                ts=ts,
                rating=rating,
                lang="en",
                item_id=row[2].strip() or "amazon_alexa",
            )
            yield LabelledReview(review, label)


def _zh_lines(path: Path) -> io.TextIOBase:
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        names = [n for n in archive.namelist() if n.endswith(".csv")]
        if len(names) != 1:
            raise DataFormatError(path, 0, f"expected one .csv inside the zip, found {names}")
        return io.TextIOWrapper(archive.open(names[0]), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_zh(path: Path) -> Iterator[LabelledReview]:
    with _zh_lines(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["cat", "label", "review"]:
            raise DataFormatError(path, 1, "expected header 'cat,label,review'")
        for row in reader:
            number = reader.line_num
            if not row:
                continue
            if len(row) != 3:
                raise DataFormatError(path, number, f"expected 3 columns, got {len(row)}")
            category, label, text = row
            review = _review(
                "zh_shopping",
                number,
                text.strip().lstrip("\ufeff"),
                lang="zh",
                item_id=category.strip() or "zh_shopping",
            )
            yield LabelledReview(review, _binary_label(path, number, label), category.strip())


def _read_jsonl(path: Path) -> Iterator[LabelledReview | None]:
    """Canonical event JSONL: reviews labelled by ``label`` or their stars; an unrated
    review (no label, no stars) teaches nothing and comes out as ``None`` (skipped)."""
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, number, f"not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, number, "expected a JSON object")
            if "text" not in obj:
                continue  # a click, search or privacy event in a mixed log
            try:
                review = parse_review(obj)
            except InvalidEvent as exc:
                raise DataFormatError(path, number, str(exc)) from None
            label = obj.get("label")
            if label is None:
                if review.rating is None:
                    yield None
                    continue
                label = stars_to_label(review.rating)
            elif label not in LABELS:
                raise DataFormatError(path, number, f"label must be one of {LABELS}, got {label!r}")
            yield LabelledReview(review, str(label))


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--data PATH --format FORMAT`` pair of the sentiment commands."""
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="labelled review file; repeat with --format for each source",
    )
    parser.add_argument(
        "--format",
        action="append",
        required=True,
        choices=FORMATS,
        help="format of the matching --data (same order)",
    )


# ----------------------------------------------------------------------------
# Fixed split
# ----------------------------------------------------------------------------


def stratified_split(
    strata: Sequence[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(kept, held_out)``: ``round(fraction * n)`` of each stratum held out."""
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for index, stratum in enumerate(strata):
        by_stratum[stratum].append(index)
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    held: list[int] = []
    for stratum in sorted(by_stratum):
        indices = np.array(by_stratum[stratum])
        rng.shuffle(indices)
        cut = round(fraction * len(indices))
        held.extend(indices[:cut].tolist())
        kept.extend(indices[cut:].tolist())
    return sorted(kept), sorted(held)


def _strata(items: Sequence[LabelledReview]) -> list[str]:
    return [f"{item.group or ''}\x1f{item.label}" for item in items]


def train_test_split(data: ReviewSet) -> tuple[list[LabelledReview], list[LabelledReview]]:
    """The documented 80/20 split of a review set: ``(train, test)``."""
    train, test = stratified_split(_strata(data.items), TEST_FRACTION, SPLIT_SEED)
    return [data.items[i] for i in train], [data.items[i] for i in test]


def train_validation_split(
    train: Sequence[LabelledReview],
) -> tuple[list[LabelledReview], list[LabelledReview]]:
    """Hold 10 % of a training part out for early stopping: ``(fit, validation)``."""
    fit, validation = stratified_split(_strata(train), VALIDATION_FRACTION, VALIDATION_SEED)
    return [train[i] for i in fit], [train[i] for i in validation]
