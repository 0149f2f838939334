"""SASRec: a causal Transformer over a user's history that scores the next item.

Each token of a history is embedded as

    item embedding (0 for searches and padding)
  + action embedding (view, add_to_cart, purchase, search)      [side information]
  + mean of its hashed query-word embeddings (searches only)    [side information]
  + a learned position embedding, counted back from the last token,

then a pre-LN causal ``nn.TransformerEncoder`` turns it into one hidden vector
per position.  The score of item ``i`` after position ``t`` is ``h_t · e_i + b_i``
with the item table itself (tied embeddings) and a learned per-item bias, which
picks up item popularity within the first few hundred steps.  With ``use_side_info=False`` the
model reads item embeddings and positions only (the training data then holds no
search tokens).

Positions count back from the most recent token (the last valid token has
position 0), so the token being scored always has the same position whatever
the history length, as with the left padding of the original SASRec, while the
inputs stay right-padded.

Export-friendly by construction: tensors in, tensors out, no Python branching on
tensor values, a boolean causal mask with ``is_causal=True``, and the last valid
position gathered through ``lengths``.  Right padding needs no key-padding mask:
a valid position only attends to earlier positions, which are valid too.

Training uses cross-entropy over the full catalogue at every position
(:meth:`SASRec.loss`), which beats the one-negative binary loss of the original
paper (Petrov & Macdonald, RecSys 2023; Klenitskiy & Vasilev, RecSys 2023).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recstream.model.checkpoint import load_meta, load_state
from recstream.model.features import FIRST_ITEM, N_ACTIONS, WORD_BUCKETS

CHECKPOINT_NAME = "recs"


class SASRec(nn.Module):
    """Self-attentive sequential recommender with optional action and query side information."""

    score_mask: Tensor

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        dim: int = 64,
        layers: int = 2,
        heads: int = 1,
        dropout: float = 0.3,
        use_side_info: bool = True,
        word_buckets: int = WORD_BUCKETS,
        n_actions: int = N_ACTIONS,
    ) -> None:
        """``n_items`` is the vocabulary size, padding (0) and OOV (1) included."""
        super().__init__()
        if n_items <= FIRST_ITEM:
            raise ValueError("the vocabulary must hold at least one real item")
        self.n_items = n_items
        self.max_len = max_len
        self.dim = dim
        self.use_side_info = use_side_info
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.pos_emb = nn.Embedding(max_len, dim)
        self.action_emb = nn.Embedding(n_actions, dim, padding_idx=0)
        self.word_emb = nn.Embedding(word_buckets, dim, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        # PAD and OOV are never recommended.
        score_mask = torch.zeros(n_items)
        score_mask[:FIRST_ITEM] = float("-inf")
        self.register_buffer("score_mask", score_mask, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for emb in (self.item_emb, self.pos_emb, self.action_emb, self.word_emb):
            nn.init.normal_(emb.weight, std=self.dim**-0.5)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()

    def embed(self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor) -> Tensor:
        """Token embeddings ``[B, L, D]`` (padding positions zeroed)."""
        length = items.shape[1]
        steps = torch.arange(length, device=items.device).unsqueeze(0)
        valid = steps < lengths.unsqueeze(1)
        back = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0, max=self.max_len - 1)
        x = self.item_emb(items) * math.sqrt(self.dim)
        if self.use_side_info:
            word_vecs = self.word_emb(words).sum(dim=2)
            n_words = (words > 0).sum(dim=2, keepdim=True).clamp(min=1)
            x = x + self.action_emb(actions) + word_vecs / n_words
        x = x + self.pos_emb(back)
        return self.emb_dropout(x) * valid.unsqueeze(-1)

    def forward(self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor) -> Tensor:
        """Hidden states ``[B, L, D]``; position ``t`` has seen tokens ``0..t`` only."""
        length = items.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        return self.encoder(self.embed(items, actions, words, lengths), mask=causal, is_causal=True)

    def score_last(self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor) -> Tensor:
        """Scores ``[B, V]`` of every vocab index as the next item; PAD and OOV are -inf."""
        hidden = self.forward(items, actions, words, lengths)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        h = hidden.gather(1, last).squeeze(1)
        return h @ self.item_emb.weight.t() + self.item_bias + self.score_mask

    def loss(
        self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor, targets: Tensor
    ) -> Tensor:
        """Mean cross-entropy over the full catalogue at every position with a target.

        ``targets [B, L]`` holds the vocab index of the next item per position,
        0 where there is none to learn (padding, a following search, OOV).
        """
        hidden = self.forward(items, actions, words, lengths)
        keep = targets >= FIRST_ITEM
        if not bool(keep.any()):
            return hidden.sum() * 0.0
        h = hidden[keep]
        logits = h @ self.item_emb.weight[FIRST_ITEM:].t() + self.item_bias[FIRST_ITEM:]
        return F.cross_entropy(logits, targets[keep] - FIRST_ITEM)


def load_recs(folder: str | Path) -> tuple[SASRec, dict[str, Any]]:
    """Load ``recs.pt`` + ``recs.json`` of a checkpoint folder: the model (eval mode), its meta."""
    folder = Path(folder)
    meta = load_meta(folder, CHECKPOINT_NAME)
    if meta.get("kind") != "recs":
        raise ValueError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not 'recs'")
    model = SASRec(**meta["hparams"])
    model.load_state_dict(load_state(folder, CHECKPOINT_NAME, meta))
    return model.eval(), meta
