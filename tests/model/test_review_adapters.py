"""Review data adapters: formats, labels, malformed rows, the fixed split."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from recstream.model.review_adapters import (
    DataFormatError,
    load_reviews,
    stars_to_label,
    stratified_split,
    train_test_split,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_uci(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.txt", "reviews\tsentiment\nGood case.\t1\nBad.\t0\n\t1\n")
    data = load_reviews(path, "uci")
    assert [(i.review.text, i.label) for i in data.items] == [
        ("Good case.", "positive"),
        ("Bad.", "negative"),
    ]
    assert data.skipped == 1 and data.labels == ("negative", "positive")
    assert data.items[0].review.event_id == "u:2"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("reviews\tsentiment\nok\t1\nno tab here\n", 3, "sentence<TAB>label"),
        ("reviews\tsentiment\nok\t1\nfine\t2\n", 3, "label must be 0 or 1"),
    ],
)
def test_uci_malformed_names_file_and_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    path = _write(tmp_path / "bad.txt", body)
    with pytest.raises(DataFormatError, match=message) as info:
        load_reviews(path, "uci")
    assert f"{path}:{line}:" in str(info.value)


ALEXA_HEADER = "rating\tdate\tvariation\tverified_reviews\tfeedback\n"


def test_alexa_star_rule_and_bom(tmp_path: Path) -> None:
    rows = "".join(f"{r}\t31-Jul-18\tBlack\treview {r}\t1\n" for r in (1, 2, 3, 4, 5))
    path = _write(tmp_path / "a.tsv", "\ufeff" + ALEXA_HEADER + rows)
    data = load_reviews(path, "alexa")
    assert [i.label for i in data.items] == [
        "negative",
        "negative",
        "neutral",
        "positive",
        "positive",
    ]
    assert data.items[0].review.rating == 1 and data.items[0].review.item_id == "Black"
    assert data.labels == ("negative", "neutral", "positive")


def test_alexa_bad_rating(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.tsv", ALEXA_HEADER + "5\t31-Jul-18\tx\tok\t1\n9\t31-Jul-18\tx\thm\t1\n"
    )
    with pytest.raises(DataFormatError, match=r"a\.tsv:3: rating must be 1-5"):
        load_reviews(path, "alexa")


def test_zh_shopping_csv_and_zip(tmp_path: Path) -> None:
    body = 'cat,label,review\n书籍,1,很好看\n水果,0,"不新鲜, 差"\n水果,1,\n'
    csv_path = _write(tmp_path / "zh.csv", body)
    zip_path = tmp_path / "zh.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("zh.csv", body)
    for path in (csv_path, zip_path):
        data = load_reviews(path, "zh_shopping")
        assert [(i.group, i.label, i.review.text) for i in data.items] == [
            ("书籍", "positive", "很好看"),
            ("水果", "negative", "不新鲜, 差"),
        ]
        assert data.skipped == 1


def test_zh_shopping_wrong_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "zh.csv", "cat,label,review\n书籍,1,好,多余\n")
    with pytest.raises(DataFormatError, match=r"zh\.csv:2: expected 3 columns"):
        load_reviews(path, "zh_shopping")


def _review(**extra: object) -> str:
    base = {"event_id": "e", "user_id": "u", "item_id": "i", "text": "nice", "ts": 1.7e9}
    return json.dumps({**base, **extra})


def test_jsonl_label_rating_and_other_topics(tmp_path: Path) -> None:
    lines = [
        _review(label="negative"),
        json.dumps(
            {"event_id": "c", "user_id": "u", "item_id": "i", "action": "view", "ts": 1.7e9}
        ),
        _review(rating=3),
        _review(rating=5, text="很好"),
        _review(),  # unrated: skipped, counted
    ]
    data = load_reviews(_write(tmp_path / "r.jsonl", "\n".join(lines) + "\n"), "jsonl")
    assert [i.label for i in data.items] == ["negative", "neutral", "positive"]
    assert data.skipped == 1
    assert data.labels == ("negative", "neutral", "positive")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        (_review(label="great"), "label must be one of"),
        (_review(rating=7), "rating must be an integer"),
    ],
)
def test_jsonl_malformed(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "r.jsonl", _review(label="positive") + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message) as info:
        load_reviews(path, "jsonl")
    assert f"{path}:2:" in str(info.value)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown review format"):
        load_reviews(tmp_path / "x", "csv")
    with pytest.raises(FileNotFoundError):
        load_reviews(tmp_path / "missing.txt", "uci")


def test_stars_rule() -> None:
    assert [stars_to_label(s) for s in range(1, 6)] == [
        "negative",
        "negative",
        "neutral",
        "positive",
        "positive",
    ]


def test_split_is_stratified_fixed_and_disjoint(tmp_path: Path) -> None:
    rows = "".join(f"text {i}\t{int(i % 4 == 0)}\n" for i in range(200))
    data = load_reviews(_write(tmp_path / "s.txt", "h\tl\n" + rows), "uci")
    train, test = train_test_split(data)
    assert len(train) == 160 and len(test) == 40
    assert Counter(i.label for i in test) == {"positive": 10, "negative": 30}
    assert not {i.review.event_id for i in train} & {i.review.event_id for i in test}
    again = train_test_split(load_reviews(tmp_path / "s.txt", "uci"))[1]
    assert [i.review.event_id for i in again] == [i.review.event_id for i in test]
    kept, held = stratified_split(["a"] * 10, 0.2, seed=1)
    assert len(held) == 2 and sorted(kept + held) == list(range(10))


def test_real_files_load() -> None:
    if not DATA.is_dir():
        pytest.skip(f"real data not available: {DATA} (../shared/data) not found")
    sizes = {
        ("uci_sentiment/amazon_cells_labelled.txt", "uci"): 1000,
        ("uci_sentiment/yelp_labelled.txt", "uci"): 1000,
        ("amazon_alexa/amazon_alexa.tsv", "alexa"): 3071,
    }
    for (rel, fmt), n in sizes.items():
        assert len(load_reviews(DATA / rel, fmt).items) == n
