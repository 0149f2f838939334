"""The review sentiment model: one small Transformer text encoder for every language.

Input is the character ids of :mod:`recstream.model.text_tokens` (right-padded,
``lengths`` valid ids per row).  The model:

1. embeds each position as the sum of its character embedding and the hashed
   embeddings of the character n-grams (2 .. ``ngram_max``) ending there
   (fastText-style sub-word hashing, computed in the graph from neighbouring ids);
2. merges every ``stride`` positions into one "patch" (a strided convolution), adds
   a learned patch position embedding, so that attention runs over
   ``ceil(T / stride)`` patches — that keeps a batch of 256-character reviews cheap
   on one CPU core;
3. runs ``layers`` pre-norm Transformer encoder blocks over the patches with a
   key padding mask built from ``lengths``;
4. pools the valid patches (mean and max) and, as an order-free "bag of n-grams"
   path that does not depend on where a word falls in the patches, the valid
   character embeddings (mean and max), and classifies the four into
   ``(negative, neutral, positive)``;
5. adds a linear "bag of n-grams" path straight to those logits (a logistic
   regression over TF-IDF features, computed in the graph): every word (a run of
   up to ``word_max`` word characters, see
   :func:`recstream.model.text_tokens.word_char_mask`), every pair of words
   separated by one space, and every character n-gram up to ``linear_ngrams``
   (any script) is hashed into one of ``word_buckets`` rows of a
   ``[word_buckets, 3]`` table.  Each occurrence is weighted by its bucket's
   inverse document frequency (a buffer filled from the training split); words
   and pairs form one group, character n-grams another, and each group's
   weighted rows are summed and divided by the group's L2 norm.  Scripts without
   spaces (Chinese) have no word characters and rely on the character n-grams.
   The word characters are a buffer too, filled from the tokenizer;
6. adds a linear map of the ``lexicon`` input (the tokenizer's lexicon scores,
   :mod:`recstream.model.sentiment_lexicon`) to the logits.

The Transformer's classifier starts at zero, so an untrained encoder adds nothing
and the linear paths can be fitted first (see
:mod:`recstream.model.train_sentiment`).

``forward`` is tensors in, tensors out, with no branching on tensor values, so it
exports to ONNX with dynamic batch and sequence axes.  Padding never changes the
output: padded positions are zeroed before patching and masked after.  A row of
length 0 gives finite but meaningless logits; callers flag empty text instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, cast

import torch
import torch.nn.functional as F
from torch import nn

from recstream.model.checkpoint import load_meta, load_state, save_checkpoint
from recstream.model.sentiment_lexicon import LEXICON_FEATURES
from recstream.streams.records import LABELS

CHECKPOINT_NAME: Final = "sentiment"
KIND: Final = "sentiment"
#: Multiplier of the rolling n-gram hash (a prime above any character id).
_HASH_PRIME: Final = 1_000_003
#: Modulus of the word hashes (a prime below 2**31, so products stay in int64).
_WORD_MODULUS: Final = 2_147_483_629
#: Id of the space character (the tokenizer always puts it first).
_SPACE_ID: Final = 1


class EncoderBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block with an additive key mask."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """``x [B, P, D]``; ``key_bias [B, 1, 1, P]`` is 0 for real keys, very negative else."""
        batch, patches, dim = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(batch, patches, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_bias, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, patches, dim)))
        return x + self.dropout(self.ff(self.norm2(x)))


class SentimentEncoder(nn.Module):
    """``forward(tokens [B,T] int64, lengths [B] int64, lexicon [B,F] float) -> logits [B,3]``.

    ``char_dim`` is the per-character embedding size, ``dim`` the Transformer width
    after patching ``stride`` characters together.
    """

    def __init__(
        self,
        vocab_size: int,
        ngram_buckets: int = 1 << 17,
        ngram_max: int = 5,
        char_dim: int = 32,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
        stride: int = 4,
        max_len: int = 256,
        dropout: float = 0.1,
        word_buckets: int = 0,
        word_max: int = 16,
        linear_ngrams: int = 0,
    ) -> None:
        super().__init__()
        self.ngram_buckets = ngram_buckets
        self.ngram_max = ngram_max
        self.stride = stride
        self.max_len = max_len
        self.word_buckets = word_buckets
        self.word_max = word_max
        self.linear_ngrams = linear_ngrams
        # The first embedding is the character table (the exporter reads its size).
        self.chars = nn.Embedding(vocab_size, char_dim, padding_idx=0, sparse=True)
        # The last n-gram row is the (zero) padding row.
        self.ngrams = nn.Embedding(
            ngram_buckets + 1, char_dim, padding_idx=ngram_buckets, sparse=True
        )
        self.patch = nn.Conv1d(char_dim, dim, kernel_size=stride, stride=stride)
        self.positions = nn.Embedding(-(-max_len // stride), dim)
        self.patch_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, ff_mult * dim, dropout) for _ in range(layers)
        )
        self.out_norm = nn.LayerNorm(2 * dim + 2 * char_dim)
        self.dropout = nn.Dropout(dropout)
        self.classify = nn.Linear(2 * dim + 2 * char_dim, len(LABELS))
        self.register_buffer("word_chars", torch.zeros(vocab_size, dtype=torch.bool))
        # Term weight per bucket: idf, times the polarity ratio when trained with it
        # (``train_sentiment.term_weights``); the padding row weighs nothing.
        idf = torch.ones(word_buckets + 1)
        idf[word_buckets] = 0.0
        self.register_buffer("word_idf", idf)
        # Linear paths (zero-initialised: they start as "no opinion"); last row pads.
        self.words = nn.Embedding(word_buckets + 1, len(LABELS), padding_idx=word_buckets)
        self.lexicon = nn.Linear(LEXICON_FEATURES, len(LABELS), bias=False)
        with torch.no_grad():
            self.words.weight.zero_()
            self.lexicon.weight.zero_()
            self.classify.weight.zero_()
            self.classify.bias.zero_()
            nn.init.normal_(self.chars.weight[1:], std=0.1)
            nn.init.normal_(self.ngrams.weight[:-1], std=0.1)
            nn.init.normal_(self.positions.weight, std=0.02)

    def embed(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Character + hashed n-gram embeddings, ``[B, T, char_dim]``.

        N-grams look back only (positions before the text are 0), so right padding
        never changes a valid position; padded positions get the zero padding rows.
        """
        width = tokens.shape[1]
        pad = torch.full_like(tokens, self.ngram_buckets)
        x = self.chars(torch.where(valid, tokens, torch.zeros_like(tokens)))
        hashed = tokens
        for n in range(2, self.ngram_max + 1):
            back = F.pad(tokens, (n - 1, 0))[:, :width]
            # Polynomial rolling hash; "+ n" keeps n-grams of different sizes apart.
            hashed = (hashed * _HASH_PRIME + back + n) % self.ngram_buckets
            x = x + self.ngrams(torch.where(valid, hashed, pad))
        return x

    def set_word_chars(self, mask: torch.Tensor) -> None:
        """Mark which character ids are word characters (``bool [vocab_size]``)."""
        word_chars = cast(torch.Tensor, self.word_chars)
        if mask.shape != word_chars.shape:
            raise ValueError(f"word mask {tuple(mask.shape)} != {tuple(word_chars.shape)}")
        with torch.no_grad():
            word_chars.copy_(mask.to(torch.bool))

    def set_word_idf(self, idf: torch.Tensor) -> None:
        """Set the per-bucket term weights (``float [word_buckets]``): idf, or idf times
        the polarity ratio (``train_sentiment.term_weights``)."""
        if idf.shape != (self.word_buckets,):
            raise ValueError(f"idf {tuple(idf.shape)} != ({self.word_buckets},)")
        with torch.no_grad():
            cast(torch.Tensor, self.word_idf)[: self.word_buckets] = idf

    def word_ids(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hashed rows of the linear path, ``[B, (2 + linear_ngrams) T]``.

        A word ends at position ``t`` when ``t`` is a word character and ``t + 1`` is
        not; its hash covers the run of word characters ending there (at most
        ``word_max``).  A pair is counted when exactly one space separates the word
        from the previous one.  With ``linear_ngrams`` every character n-gram
        (n = 1 .. ``linear_ngrams``, any script) ending at ``t`` is added too.
        ``word_buckets`` marks an unused slot.
        """
        width = tokens.shape[1]
        word_chars = cast(torch.Tensor, self.word_chars)
        is_word = word_chars[tokens] & valid
        span = max(self.word_max, self.linear_ngrams)
        tokens_before = F.pad(tokens, (span - 1, 0))
        words_before = F.pad(is_word, (span - 1, 0))
        run = is_word
        length = torch.zeros_like(tokens)
        word_hash = torch.zeros_like(tokens)
        rolling = torch.zeros_like(tokens)
        grams = []
        for n in range(1, span + 1):
            start = span - n
            rolling = (rolling * _HASH_PRIME + tokens_before[:, start : start + width]) % (
                _WORD_MODULUS
            )
            if n <= self.linear_ngrams:
                grams.append(rolling)
            if n <= self.word_max:
                run = run & words_before[:, start : start + width]
                # ``run`` only turns off as n grows: this keeps the hash of the whole run.
                word_hash = torch.where(run, rolling, word_hash)
                length = torch.where(run, n, length)
        ends = is_word & ~F.pad(is_word[:, 1:], (0, 1))
        steps = torch.arange(width, device=tokens.device).unsqueeze(0)
        gap = steps - length  # position of the character before the word
        before = torch.gather(tokens, 1, gap.clamp(min=0))
        previous = (gap - 1).clamp(min=0)
        paired = ends & (gap >= 1) & (before == _SPACE_ID) & torch.gather(is_word, 1, previous)
        pair_hash = (torch.gather(word_hash, 1, previous) * _HASH_PRIME + word_hash + 1) % (
            _WORD_MODULUS
        )
        pad = torch.full_like(tokens, self.word_buckets)
        singles = torch.where(ends, word_hash % self.word_buckets, pad)
        pairs = torch.where(paired, pair_hash % self.word_buckets, pad)
        if not grams:
            return torch.cat([singles, pairs], dim=1)
        # Character n-grams (windows reaching before the text include its start).
        sizes = torch.arange(1, len(grams) + 1, device=tokens.device)
        hashed = (torch.stack(grams, dim=-1) + sizes) % self.word_buckets
        hashed = torch.where(valid.unsqueeze(-1), hashed, self.word_buckets)
        return torch.cat([singles, pairs, hashed.flatten(1)], dim=1)

    def word_logits(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The bag-of-n-grams path, ``[B, 3]``: per group, term-weighted rows / L2 norm."""
        ids = self.word_ids(tokens, valid)
        idf = cast(torch.Tensor, self.word_idf)[ids]  # [B, N]
        rows = self.words(ids) * idf.unsqueeze(-1)  # [B, N, 3]
        split = 2 * tokens.shape[1]  # words and pairs first, character n-grams after
        logits = torch.zeros_like(rows[:, 0])
        for group in (slice(0, split), slice(split, None)):
            norm = torch.sqrt((idf[:, group] ** 2).sum(1, keepdim=True)).clamp(min=1e-6)
            logits = logits + rows[:, group].sum(1) / norm
        return logits

    def linear_logits(
        self, tokens: torch.Tensor, valid: torch.Tensor, lexicon: torch.Tensor
    ) -> torch.Tensor:
        """The two linear paths and the classifier's bias, ``[B, 3]``."""
        logits = self.lexicon(lexicon) + self.classify.bias
        if self.word_buckets:
            logits = logits + self.word_logits(tokens, valid)
        return logits

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, lexicon: torch.Tensor
    ) -> torch.Tensor:
        """Logits over ``(negative, neutral, positive)`` for right-padded ``tokens``."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        valid = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        chars = self.embed(tokens, valid)  # [B, T, char_dim]
        char_weight = valid.unsqueeze(-1).to(chars.dtype)
        char_count = torch.clamp(lengths, min=1).unsqueeze(1).to(chars.dtype)
        bag_mean = chars.sum(1) / char_count
        bag_max = (chars + (char_weight - 1.0) * 1e4).amax(1)
        # Right-pad by stride - 1 so the last, partial patch is kept: P = ceil(T / stride).
        x = self.patch(F.pad(chars.transpose(1, 2), (0, self.stride - 1))).transpose(1, 2)
        patch_ids = torch.arange(x.shape[1], device=tokens.device)
        last = self.positions.num_embeddings - 1
        x = self.patch_norm(x + self.positions(patch_ids.clamp(max=last)))
        patch_lengths = torch.clamp((lengths + self.stride - 1) // self.stride, min=1)
        keep = patch_ids.unsqueeze(0) < patch_lengths.unsqueeze(1)  # [B, P]
        key_bias = ((~keep).to(x.dtype) * -1e9).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, P]
        for block in self.blocks:
            x = block(x, key_bias)
        weight = keep.unsqueeze(-1).to(x.dtype)
        mean = (x * weight).sum(1) / patch_lengths.unsqueeze(1).to(x.dtype)
        top = (x + (weight - 1.0) * 1e4).amax(1)
        pooled = self.out_norm(torch.cat([mean, top, bag_mean, bag_max], dim=-1))
        encoded = F.linear(self.dropout(pooled), self.classify.weight)  # bias: linear_logits
        return encoded + self.linear_logits(tokens, valid, lexicon)


def save_sentiment(folder: Path, model: SentimentEncoder, meta: dict[str, Any]) -> None:
    """Write ``sentiment.pt`` + ``sentiment.json`` (``meta`` must hold ``hparams``)."""
    save_checkpoint(folder, CHECKPOINT_NAME, model, {**meta, "kind": KIND})


def load_sentiment(folder: Path | str) -> tuple[SentimentEncoder, dict[str, Any]]:
    """Load a checkpoint folder: ``(SentimentEncoder in eval mode, meta)``."""
    folder = Path(folder)
    meta = load_meta(folder, CHECKPOINT_NAME)
    if meta.get("kind") != KIND:
        raise ValueError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not {KIND!r}")
    model = SentimentEncoder(**meta["hparams"])
    model.load_state_dict(load_state(folder, CHECKPOINT_NAME, meta))
    model.eval()
    return model, meta
