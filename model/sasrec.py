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

Scoring needs the hidden state of the last valid position only
(:meth:`SASRec.last_hidden`): every layer but the last runs over all positions, as
in training, and the last layer runs its attention query, feed-forward and norms for
that one position (its keys and values still come from every position).  The result
equals :meth:`SASRec.forward` at that position (to float rounding) at a fraction of
the last layer's work.

Training uses cross-entropy over the full catalogue at every position, or a
sampled softmax with many uniform negatives (:meth:`SASRec.loss`), optionally
plus a binary cross-entropy against uniform negatives; both softmax forms beat
the one-negative binary loss of the original paper (Petrov & Macdonald,
RecSys 2023; Klenitskiy & Vasilev, RecSys 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

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
        ffn_mult: int = 1,
        item_bias: bool = True,
        word_buckets: int = WORD_BUCKETS,
        n_actions: int = N_ACTIONS,
    ) -> None:
        """``n_items`` is the vocabulary size, padding (0) and OOV (1) included.

        ``ffn_mult`` sets each layer's feed-forward inner size to ``ffn_mult * dim``;
        ``item_bias=False`` scores with ``h_t · e_i`` alone (the bias stays zero).
        """
        super().__init__()
        if n_items <= FIRST_ITEM:
            raise ValueError("the vocabulary must hold at least one real item")
        self.n_items = n_items
        self.max_len = max_len
        self.dim = dim
        self.use_side_info = use_side_info
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(n_items), requires_grad=item_bias)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.action_emb = nn.Embedding(n_actions, dim, padding_idx=0)
        self.word_emb = nn.Embedding(word_buckets, dim, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ffn_mult * dim,
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

    def last_hidden(self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor) -> Tensor:
        """Hidden state ``[B, D]`` of each row's last valid position (``lengths - 1``).

        Equals :meth:`forward` gathered at that position, but the last layer works on
        that position alone: attention of its one query over the keys and values of
        positions ``0..lengths - 1``, then the feed-forward block.  In onnxruntime
        (int8, 50k items) a history of 16 tokens then costs about a sixth less, one of
        50 tokens over a quarter less (benchmarks/speed_log.md).
        """
        x = self.embed(items, actions, words, lengths)
        rows, length, dim = x.shape
        steps = torch.arange(length, device=items.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        layers = cast(Sequence[nn.TransformerEncoderLayer], self.encoder.layers)
        for layer in layers[:-1]:
            x = layer(x, src_mask=causal, is_causal=True)
        last = layers[-1]
        at = (lengths - 1).clamp(min=0)
        gather_at = at.view(-1, 1, 1).expand(-1, 1, dim)
        # Pre-LN (norm_first): x + attention(norm1(x)), then + feed_forward(norm2(.)).
        normed = last.norm1(x)
        attn = last.self_attn
        heads = attn.num_heads
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        q_bias, k_bias, v_bias = bias.chunk(3) if bias is not None else (None, None, None)
        q_weight, k_weight, v_weight = weight.chunk(3)
        split = (rows, -1, heads, dim // heads)  # -> [B, heads, positions, head dim]
        query = F.linear(normed.gather(1, gather_at), q_weight, q_bias)
        key = F.linear(normed, k_weight, k_bias)
        value = F.linear(normed, v_weight, v_bias)
        visible = (steps.unsqueeze(0) <= at.unsqueeze(1)).view(rows, 1, 1, length)
        mixed = F.scaled_dot_product_attention(
            query.view(split).transpose(1, 2),
            key.view(split).transpose(1, 2),
            value.view(split).transpose(1, 2),
            attn_mask=visible,
            dropout_p=attn.dropout if self.training else 0.0,
        )
        attended = attn.out_proj(mixed.transpose(1, 2).reshape(rows, 1, dim))
        h = x.gather(1, gather_at) + last.dropout1(attended)
        feed = last.linear2(last.dropout(last.activation(last.linear1(last.norm2(h)))))
        h = h + last.dropout2(feed)
        if self.encoder.norm is not None:
            h = self.encoder.norm(h)
        return h.squeeze(1)

    def score_last(
        self,
        items: Tensor,
        actions: Tensor,
        words: Tensor,
        lengths: Tensor,
        *,
        columns: int | None = None,
    ) -> Tensor:
        """Scores ``[B, V]`` of every vocab index as the next item; PAD and OOV are -inf.

        ``columns`` (>= V) pads the scores with -inf to that many columns, for the
        serving graph's grouped top-k.  The padding is added to the output layer's
        weights and bias, not to the scores: in an exported graph those are constants,
        which onnxruntime folds at load time, so the padding costs nothing per run.
        """
        h = self.last_hidden(items, actions, words, lengths)
        # Bias and mask added to each other first: in the exported graph that sum is a
        # constant, which onnxruntime folds into the output layer's bias at load time,
        # where ``+ bias + mask`` would run one more pass over the [B, V] scores
        # (~12 % of the serving run at 50k items; benchmarks/speed_log.md).
        weight, bias = self.item_emb.weight, self.item_bias + self.score_mask
        extra = (columns or self.n_items) - self.n_items
        if extra < 0:
            raise ValueError(f"columns={columns} is fewer than the {self.n_items} vocab indices")
        if extra:
            weight = F.pad(weight, (0, 0, 0, extra))
            bias = F.pad(bias, (0, extra), value=float("-inf"))
        return h @ weight.t() + bias

    def loss(
        self,
        items: Tensor,
        actions: Tensor,
        words: Tensor,
        lengths: Tensor,
        targets: Tensor,
        negatives: int = 0,
        bce_negatives: int = 0,
        bce_weight: float = 1.0,
    ) -> Tensor:
        """Mean cross-entropy at every position with a target, plus an optional BCE term.

        ``targets [B, L]`` holds the vocab index of the next item per position,
        0 where there is none to learn (padding, a following search, OOV).
        With ``negatives == 0`` the softmax runs over the full catalogue; with
        ``negatives > 0`` it is a sampled softmax over the target and that many
        items drawn uniformly (shared by the batch, a draw equal to the target
        masked out), their logits raised by ``log(catalogue / negatives)`` so
        the loss estimates the full one.  Sampling makes a step several times
        cheaper on large catalogues, where the full softmax dominates the cost.

        With ``bce_negatives > 0``, ``bce_weight`` times :meth:`uniform_bce` over
        that many uniform negatives is added: the target scored against random
        catalogue items one at a time, as the sampled evaluation protocol ranks it.
        """
        hidden = self.forward(items, actions, words, lengths)
        keep = targets >= FIRST_ITEM
        if not bool(keep.any()):
            return hidden.sum() * 0.0
        h = hidden[keep]
        target = targets[keep]
        loss = self._softmax_loss(h, target, negatives)
        if bce_negatives > 0 and bce_weight > 0:
            loss = loss + bce_weight * self.uniform_bce(h, target, bce_negatives)
        return loss

    def uniform_bce(self, h: Tensor, target: Tensor, negatives: int) -> Tensor:
        """Binary cross-entropy of each target (label 1) and of uniform negatives (label 0).

        ``negatives`` items are drawn uniformly from the catalogue, shared by the
        batch; per row the loss is ``softplus(-s_target)`` plus the mean of
        ``softplus(s_negative)`` over the draws that differ from the target.
        Unlike the softmax, this pins every score on an absolute scale against
        random items, the comparison the sampled protocol makes.
        """
        drawn = torch.randint(FIRST_ITEM, self.n_items, (negatives,), device=h.device)
        positive = (h * self.item_emb(target)).sum(dim=1) + self.item_bias[target]
        negative = h @ self.item_emb(drawn).t() + self.item_bias[drawn]
        other = (drawn.unsqueeze(0) != target.unsqueeze(1)).to(negative.dtype)
        negative_loss = (F.softplus(negative) * other).sum(dim=1) / other.sum(dim=1).clamp(min=1)
        return (F.softplus(-positive) + negative_loss).mean()

    def _softmax_loss(self, h: Tensor, target: Tensor, negatives: int) -> Tensor:
        """Cross-entropy of ``h`` rows against ``target``: full or sampled softmax."""
        catalogue = self.n_items - FIRST_ITEM
        if negatives <= 0 or negatives >= catalogue:
            weight, bias = self.item_emb.weight[FIRST_ITEM:], self.item_bias[FIRST_ITEM:]
            loss: Tensor = ChunkedSoftmaxLoss.apply(h, weight, bias, target - FIRST_ITEM)
            return loss
        drawn = torch.randint(FIRST_ITEM, self.n_items, (negatives,), device=h.device)
        positive = (h * self.item_emb(target)).sum(dim=1, keepdim=True) + self.item_bias[
            target
        ].unsqueeze(1)
        negative = h @ self.item_emb(drawn).t() + self.item_bias[drawn]
        negative = negative + math.log(catalogue / negatives)
        negative = negative.masked_fill(drawn.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(target))


class ChunkedSoftmaxLoss(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T + bias`` against ``target``, a slice of items at a time.

    The same value and gradients as ``F.cross_entropy(F.linear(h, weight, bias), target)``
    (up to float rounding), but the ``[N, V]`` logits never exist at once: the
    forward pass keeps only each row's log-sum-exp, the backward pass recomputes
    the logits ``CHUNK`` items at a time.  Slices that fit in the CPU caches make
    the full-catalogue softmax about twice as fast on large catalogues.
    """

    CHUNK = 1024

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        """Mean over rows of ``logsumexp(logits) - logits[target]``."""
        parts = [
            torch.logsumexp(torch.addmm(bias[s : s + ChunkedSoftmaxLoss.CHUNK], h, w.t()), dim=1)
            for s, w in zip(
                range(0, weight.shape[0], ChunkedSoftmaxLoss.CHUNK),
                weight.split(ChunkedSoftmaxLoss.CHUNK),
                strict=True,
            )
        ]
        lse = torch.logsumexp(torch.stack(parts, dim=1), dim=1)
        positive = (h * weight[target]).sum(dim=1) + bias[target]
        ctx.save_for_backward(h, weight, bias, target, lse)
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        """Softmax minus one-hot, scaled by ``grad / N``, pushed through the linear map."""
        h, weight, bias, target, lse = ctx.saved_tensors
        scale = grad / h.shape[0]
        grad_h = torch.zeros_like(h)
        grad_w = torch.empty_like(weight)
        grad_b = torch.empty_like(bias)
        for s in range(0, weight.shape[0], ChunkedSoftmaxLoss.CHUNK):
            w = weight[s : s + ChunkedSoftmaxLoss.CHUNK]
            probs = torch.addmm(bias[s : s + ChunkedSoftmaxLoss.CHUNK], h, w.t())
            probs.sub_(lse.unsqueeze(1)).exp_().mul_(scale)
            grad_h.addmm_(probs, w)
            torch.mm(probs.t(), h, out=grad_w[s : s + w.shape[0]])
            torch.sum(probs, dim=0, out=grad_b[s : s + w.shape[0]])
        grad_h -= scale * weight[target]
        grad_w.index_add_(0, target, h * -scale)
        grad_b.index_add_(0, target, torch.full_like(lse, -1.0) * scale)
        return grad_h, grad_w, grad_b, None


class SASRecEnsemble(nn.Module):
    """Several recommenders over one vocabulary, scored as one: ``score_last`` is the mean
    of the members' scores (PAD and OOV stay -inf).

    A member's log-probabilities (log-softmax) differ from its scores by one constant
    per history, so the mean of the scores ranks the items of a history exactly as the
    mean of the members' log-probabilities would, without a softmax over the catalogue.
    Members trained with other seeds make different mistakes, so their mean ranks
    better than each of them, at the cost of running every member.  The same
    ``score_last`` interface as :class:`SASRec`: it evaluates and exports alike.
    ``members`` are the members' hyper-parameters.
    """

    def __init__(self, members: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs two or more members, got {len(members)}")
        if len({int(h["n_items"]) for h in members}) != 1:
            raise ValueError("ensemble members must share one vocabulary size")
        self.members = nn.ModuleList(SASRec(**h) for h in members)

    def score_last(
        self,
        items: Tensor,
        actions: Tensor,
        words: Tensor,
        lengths: Tensor,
        *,
        columns: int | None = None,
    ) -> Tensor:
        """``[B, V]`` mean of the members' scores of every vocab index as the next item
        (``columns`` as in :meth:`SASRec.score_last`)."""
        members = cast(Sequence[SASRec], self.members)
        total = members[0].score_last(items, actions, words, lengths, columns=columns)
        for member in members[1:]:
            total = total + member.score_last(items, actions, words, lengths, columns=columns)
        return total / len(members)


def load_recs(folder: str | Path) -> tuple[SASRec | SASRecEnsemble, dict[str, Any]]:
    """Load ``recs.pt`` + ``recs.json`` of a checkpoint folder: the model (eval mode), its meta.

    A checkpoint whose hyper-parameters list ``members`` holds a :class:`SASRecEnsemble`.
    """
    folder = Path(folder)
    meta = load_meta(folder, CHECKPOINT_NAME)
    if meta.get("kind") != "recs":
        raise ValueError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not 'recs'")
    hparams = meta["hparams"]
    model = SASRecEnsemble(hparams["members"]) if "members" in hparams else SASRec(**hparams)
    model.load_state_dict(load_state(folder, CHECKPOINT_NAME, meta))
    return model.eval(), meta
