"""What an exported ONNX model says about itself, and the checks made when it is loaded.

Every key lives in the ONNX file's ``metadata_props`` (strings only) under the
``recstream.`` prefix; lists and dicts are JSON.  The serving side reads them with
onnxruntime (``session.get_modelmeta().custom_metadata_map``), so this module
imports neither torch nor onnx.

Keys common to both kinds: ``kind``, ``format``, ``version``, ``trained_at``,
``weights_sha256``, ``data_fingerprint``, ``metrics``, ``max_len``, ``variant``,
``agreement``, ``exported_at``.  Recommender only: ``vocab`` (item ids in index
order from index 2), ``vocab_sha256``, ``num_items`` (vocab size incl. PAD and
OOV), ``popular``, ``top_k``, ``words_per_search``, ``word_buckets``.  Sentiment
only: ``labels``, ``tokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from recstream.model.features import FIRST_ITEM, WORD_BUCKETS, WORDS_PER_SEARCH

PREFIX: Final = "recstream."
FORMAT: Final = "1"
KINDS: Final = ("recs", "sentiment")
VARIANTS: Final = ("fp32", "fp16", "int8")
#: Items a recommender graph returns at most when its export names no ``--top-k``.
DEFAULT_TOP_K: Final = 20

COMMON_KEYS: Final = (
    "kind",
    "format",
    "version",
    "trained_at",
    "weights_sha256",
    "data_fingerprint",
    "metrics",
    "max_len",
    "variant",
    "agreement",
    "exported_at",
)
KIND_KEYS: Final = {
    "recs": (
        "vocab",
        "vocab_sha256",
        "num_items",
        "popular",
        "top_k",
        "words_per_search",
        "word_buckets",
    ),
    "sentiment": ("labels", "tokenizer"),
}

#: The graph's input and output names, per kind (checked at load).
GRAPH_INPUTS: Final = {
    "recs": ("items", "actions", "words", "lengths", "exclude", "slots"),
    "sentiment": ("tokens", "lengths", "lexicon"),
}
#: Recommender graphs exported before 2026-12-07 have no ``slots`` input: they always
#: return ``top_k`` items, and are still served.
FIXED_K_RECS_INPUTS: Final = ("items", "actions", "words", "lengths", "exclude")
GRAPH_OUTPUTS: Final = {"recs": ("top_items", "top_scores"), "sentiment": ("probs",)}


def takes_k(input_names: Iterable[str]) -> bool:
    """Whether a recommender graph with these inputs returns as many items as a run asks
    for (the length of its ``slots`` input), not always its ``top_k``."""
    return "slots" in input_names


class MetadataError(ValueError):
    """An exported model's metadata is missing, malformed or inconsistent."""


def vocab_sha256(vocab: list[str]) -> str:
    """Hash of a vocabulary in index order (JSON, UTF-8)."""
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def model_version(kind: str, trained_at: str, weights_sha256: str, variant: str) -> str:
    """A readable version: kind, training time, weights hash prefix, variant.

    ``recs-20261129T192200Z-1a2b3c4d5e6f`` for fp32, with ``-int8``/``-fp16``
    appended for the variants, since they score slightly differently.
    """
    stamp = re.sub(r"[^0-9A-Za-z]", "", trained_at.split(".")[0].replace("+00:00", "Z"))
    version = f"{kind}-{stamp or 'untimed'}-{weights_sha256[:12]}"
    return version if variant == "fp32" else f"{version}-{variant}"


def to_props(values: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as prefixed string properties (non-strings as JSON)."""
    props: dict[str, str] = {}
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        props[PREFIX + key] = text
    return props


@dataclass(frozen=True)
class ModelMetadata:
    """The parsed, checked metadata of one exported model."""

    kind: str
    version: str
    variant: str
    max_len: int
    values: dict[str, Any]

    @property
    def vocab(self) -> list[str]:
        """Item ids in index order, starting at index 2 (recommender only)."""
        vocab: list[str] = self.values["vocab"]
        return vocab

    @property
    def popular(self) -> list[str]:
        popular: list[str] = self.values["popular"]
        return popular

    @property
    def top_k(self) -> int:
        return int(self.values["top_k"])

    @property
    def labels(self) -> list[str]:
        labels: list[str] = self.values["labels"]
        return labels

    @property
    def tokenizer(self) -> dict[str, Any]:
        tokenizer: dict[str, Any] = self.values["tokenizer"]
        return tokenizer


def _decode(key: str, text: str) -> Any:
    if key in ("kind", "format", "version", "trained_at", "weights_sha256", "variant"):
        return text
    if key in ("exported_at", "vocab_sha256", "data_fingerprint"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"metadata {PREFIX}{key} is not valid JSON: {exc}") from None


def parse_metadata(props: Mapping[str, str], expected_kind: str, source: str) -> ModelMetadata:
    """Check and parse a model's metadata properties; ``source`` names the file in errors.

    Raises ``MetadataError`` naming the first problem: a foreign file (no
    recstream keys), the wrong kind, a missing key, bad JSON, a vocabulary that does
    not match its hash or size, an unknown variant, or a feature encoding that
    differs from this code's.
    """
    if expected_kind not in KINDS:
        raise ValueError(f"unknown model kind {expected_kind!r}")
    if not any(key.startswith(PREFIX) for key in props):
        raise MetadataError(f"{source} has no recstream metadata (not made by recstream export?)")
    kind = props.get(PREFIX + "kind")
    if kind != expected_kind:
        raise MetadataError(f"{source} holds a {kind!r} model, expected {expected_kind!r}")
    if props.get(PREFIX + "format") != FORMAT:
        raise MetadataError(
            f"{source} has metadata format {props.get(PREFIX + 'format')!r}, this code reads "
            f"{FORMAT!r}; re-export it"
        )
    values: dict[str, Any] = {}
    for key in (*COMMON_KEYS, *KIND_KEYS[kind]):
        if PREFIX + key not in props:
            raise MetadataError(f"{source} lacks metadata {PREFIX}{key}")
        values[key] = _decode(key, props[PREFIX + key])
    variant = values["variant"]
    if variant not in VARIANTS:
        raise MetadataError(f"{source} has unknown variant {variant!r}")
    max_len = values["max_len"]
    if not isinstance(max_len, int) or max_len < 1:
        raise MetadataError(f"{source} has an invalid max_len {max_len!r}")
    if kind == "recs":
        _check_recs(values, source)
    else:
        _check_sentiment(values, source)
    return ModelMetadata(kind, values["version"], variant, max_len, values)


def _check_recs(values: dict[str, Any], source: str) -> None:
    vocab = values["vocab"]
    if not isinstance(vocab, list) or not vocab or not all(isinstance(v, str) for v in vocab):
        raise MetadataError(f"{source} has an empty or malformed vocabulary")
    if vocab_sha256(vocab) != values["vocab_sha256"]:
        raise MetadataError(f"{source}: vocabulary does not match its recorded hash")
    if values["num_items"] != len(vocab) + FIRST_ITEM:
        raise MetadataError(
            f"{source}: vocabulary has {len(vocab)} items but the graph scores "
            f"{values['num_items']} indices (expected vocab + {FIRST_ITEM})"
        )
    if len(set(vocab)) != len(vocab):
        raise MetadataError(f"{source}: vocabulary has duplicate item ids")
    popular = values["popular"]
    if not isinstance(popular, list) or not all(isinstance(p, str) for p in popular):
        raise MetadataError(f"{source} has a malformed popular-items list")
    top_k = values["top_k"]
    if not isinstance(top_k, int) or top_k < 1:
        raise MetadataError(f"{source} has an invalid top_k {top_k!r}")
    if (values["words_per_search"], values["word_buckets"]) != (WORDS_PER_SEARCH, WORD_BUCKETS):
        raise MetadataError(
            f"{source} was trained with {values['words_per_search']} words per search in "
            f"{values['word_buckets']} buckets; this code encodes {WORDS_PER_SEARCH} in "
            f"{WORD_BUCKETS}"
        )


def _check_sentiment(values: dict[str, Any], source: str) -> None:
    labels = values["labels"]
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(x, str) for x in labels)
    ):
        raise MetadataError(f"{source} has malformed labels {labels!r}")
    if "neutral" not in labels:
        raise MetadataError(f"{source}: labels {labels!r} lack 'neutral' (used for empty text)")
    if not isinstance(values["tokenizer"], dict) or not values["tokenizer"]:
        raise MetadataError(f"{source} has an empty or malformed tokenizer")
