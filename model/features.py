"""Token features shared by training (torch) and serving (numpy): no torch here.

A user's history is a sequence of tokens.  Each click is an item token with its
action; each search is a token with no item (index 0) and the ``search`` action,
whose content is the hashed words of its query.  Training and the worker both
build inputs through these functions, so a model sees the same encoding online
as it saw offline.

Item vocabulary indices: 0 is padding (and "no item" for search tokens), 1 is the
out-of-vocabulary item, real items start at 2.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

PAD: Final = 0
OOV: Final = 1
FIRST_ITEM: Final = 2

#: Action ids; 0 is padding.
ACTION_IDS: Final = {"view": 1, "add_to_cart": 2, "purchase": 3, "search": 4}
N_ACTIONS: Final = len(ACTION_IDS) + 1

#: Hashed query words per search token, and the hash space (0 is padding).
WORDS_PER_SEARCH: Final = 4
WORD_BUCKETS: Final = 4_096

_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(query: str) -> list[str]:
    """Lower-cased word tokens of a query (CJK runs stay whole words)."""
    return _WORD.findall(query.lower())


def hash_word(word: str, buckets: int = WORD_BUCKETS) -> int:
    """A stable hash of one word into ``1..buckets-1`` (0 is padding)."""
    return 1 + zlib.crc32(word.encode("utf-8")) % (buckets - 1)


def query_hashes(
    query: str, width: int = WORDS_PER_SEARCH, buckets: int = WORD_BUCKETS
) -> list[int]:
    """The first ``width`` hashed words of a query, right-padded with 0."""
    hashes = [hash_word(w, buckets) for w in query_words(query)[:width]]
    return hashes + [PAD] * (width - len(hashes))
