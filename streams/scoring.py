"""Scoring: the scorer interface the agents use, its onnxruntime implementation, a fake.

The agents only see the two protocols below.  Implementations run synchronously
and are called off the event loop (in an executor), one micro-batch at a time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from recstream.streams.records import ScoredItem


@dataclass(frozen=True, slots=True)
class Token:
    """One step of a user's history: a click on an item, or a search (item None)."""

    item_id: str | None
    action: str
    query: str | None = None


@dataclass(frozen=True, slots=True)
class RecsResult:
    items: tuple[ScoredItem, ...]
    fallback: bool


@dataclass(frozen=True, slots=True)
class SentimentResult:
    label: str
    probs: dict[str, float]
    flags: tuple[str, ...] = ()


class RecsScorer(Protocol):
    """Next-item scoring for a batch of user histories (oldest token first)."""

    @property
    def model_version(self) -> str: ...

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]: ...


class SentimentScorer(Protocol):
    """Sentiment of a batch of review texts."""

    @property
    def model_version(self) -> str: ...

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]: ...
