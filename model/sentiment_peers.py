"""Peer sentiment methods the benchmark compares against (not used by serving).

* :class:`VaderPeer`: the VADER lexicon-and-rules analyser (English; its lexicon
  ships in the ``vaderSentiment`` package).
* :class:`TextBlobPeer`: TextBlob's pattern-lexicon polarity (English; needs no
  corpora download for ``.sentiment``).
* :class:`TfidfLogRegPeer`: TF-IDF over word 1-2-grams and character 1-4-grams
  (within word boundaries) + logistic regression, trained on a data set's training
  split (any language).  Its regularisation ``C`` is chosen on the training split's
  validation part (same split as our model's early stopping), then it is refit on
  the whole training split.

Label rules.  Three-way: VADER compound >= 0.05 positive, <= -0.05 negative,
else neutral (the VADER authors' thresholds); TextBlob polarity > 0 positive,
< 0 negative, else neutral.  On a binary data set (no neutral label) whatever is
not positive by those rules is negative (compound >= 0.05, polarity > 0 are
positive); this is the rule that reproduces the reference figures of the data
README (VADER 0.845 / 0.817, TextBlob 0.796 / 0.774 on the full UCI files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from recstream.model.evaluate_sentiment import classification_report


class Peer(Protocol):
    """A method that labels texts using only ``labels`` (the data set's labels)."""

    name: str

    def predict(self, texts: Sequence[str], labels: Sequence[str]) -> list[str]: ...


def _by_score(score: float, labels: Sequence[str], low: float, high: float) -> str:
    if "neutral" not in labels:
        return "positive" if score >= high else "negative"
    if score >= high:
        return "positive"
    return "negative" if score <= low else "neutral"


class VaderPeer:
    """VADER compound score with the published thresholds."""

    name = "VADER"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        return float(self._analyzer.polarity_scores(text)["compound"])

    def predict(self, texts: Sequence[str], labels: Sequence[str]) -> list[str]:
        return [_by_score(self.score(t), labels, -0.05, 0.05) for t in texts]


class TextBlobPeer:
    """TextBlob (pattern lexicon) polarity."""

    name = "TextBlob"

    def score(self, text: str) -> float:
        from textblob import TextBlob

        return float(TextBlob(text).sentiment.polarity)

    def predict(self, texts: Sequence[str], labels: Sequence[str]) -> list[str]:
        return [_by_score(self.score(t), labels, -1e-9, 1e-9) for t in texts]


class TfidfLogRegPeer:
    """TF-IDF (word + char n-grams) + logistic regression, fit per data set."""

    name = "TF-IDF+LR"

    def __init__(self, grid: Sequence[float] = (0.5, 2.0, 8.0)) -> None:
        self.grid = tuple(grid)
        self.chosen_c: float | None = None
        self._model: Any = None

    @staticmethod
    def _pipeline(c: float) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        features = make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2),
        )
        return make_pipeline(features, LogisticRegression(C=c, max_iter=2000))

    def fit(
        self,
        fit_texts: Sequence[str],
        fit_labels: Sequence[str],
        val_texts: Sequence[str],
        val_labels: Sequence[str],
    ) -> TfidfLogRegPeer:
        """Choose ``C`` by validation macro-F1, then refit on fit + validation."""
        labels = sorted(set(fit_labels) | set(val_labels))
        best = (-1.0, self.grid[0])
        if len(self.grid) > 1:
            for c in self.grid:
                model = self._pipeline(c).fit(list(fit_texts), list(fit_labels))
                predicted = [str(p) for p in model.predict(list(val_texts))]
                f1 = classification_report(list(val_labels), predicted, labels)["macro_f1"]
                if f1 > best[0]:
                    best = (f1, c)
        self.chosen_c = best[1]
        self._model = self._pipeline(best[1]).fit(
            [*fit_texts, *val_texts], [*fit_labels, *val_labels]
        )
        return self

    def predict(self, texts: Sequence[str], labels: Sequence[str]) -> list[str]:
        if self._model is None:
            raise RuntimeError("fit the TF-IDF peer before predicting")
        return [str(p) for p in self._model.predict(list(texts))]
