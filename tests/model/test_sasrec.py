"""SASRec shapes, causality, padding invariance, OOV handling and checkpoint round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recstream.model.checkpoint import save_checkpoint
from recstream.model.features import ACTION_IDS, FIRST_ITEM, OOV, WORDS_PER_SEARCH
from recstream.model.sasrec import ChunkedSoftmaxLoss, SASRec, load_recs

V = 30
MAX_LEN = 8


def make_model(seed: int = 0, use_side_info: bool = True) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(
        n_items=V,
        max_len=MAX_LEN,
        dim=16,
        layers=2,
        heads=2,
        dropout=0.0,
        use_side_info=use_side_info,
    ).eval()


def next_items(items: torch.Tensor) -> torch.Tensor:
    """Each position's target: the next token's item (0, no target, after the last)."""
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = 0
    return targets


def train_steps(
    model: SASRec, batch: tuple[torch.Tensor, ...], targets: torch.Tensor, **loss_options: Any
) -> torch.Tensor:
    """30 Adam steps (lr 0.01) on one batch in training mode; returns the last step's loss."""
    items, actions, words, lengths = batch
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model.loss(items, actions, words, lengths, targets, **loss_options)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


def inputs(batch: int = 3, length: int = 6, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(FIRST_ITEM, V, (batch, length), generator=g)
    actions = torch.full((batch, length), ACTION_IDS["view"])
    words = torch.zeros(batch, length, WORDS_PER_SEARCH, dtype=torch.long)
    # one search token per row at position 1
    items[:, 1] = 0
    actions[:, 1] = ACTION_IDS["search"]
    words[:, 1, :2] = torch.randint(1, 100, (batch, 2), generator=g)
    lengths = torch.tensor([length, length - 2, 2][:batch])
    return items, actions, words, lengths


def test_shapes_and_pad_oov_masked() -> None:
    model = make_model()
    items, actions, words, lengths = inputs()
    hidden = model(items, actions, words, lengths)
    assert hidden.shape == (3, 6, 16)
    scores = model.score_last(items, actions, words, lengths)
    assert scores.shape == (3, V)
    assert torch.isneginf(scores[:, :FIRST_ITEM]).all()
    assert torch.isfinite(scores[:, FIRST_ITEM:]).all()


@pytest.mark.parametrize(("layers", "heads"), [(2, 2), (1, 1), (3, 4)])
def test_last_hidden_is_the_full_encoder_at_each_row_s_last_position(
    layers: int, heads: int
) -> None:
    torch.manual_seed(3)
    model = SASRec(n_items=V, max_len=MAX_LEN, dim=16, layers=layers, heads=heads, dropout=0.0)
    model.eval()
    items, actions, words, _ = inputs(batch=4, length=MAX_LEN)
    items[:, MAX_LEN // 2 :] += 1  # padding positions hold garbage: they must not count
    lengths = torch.tensor([MAX_LEN, 1, 3, MAX_LEN - 1])
    hidden = model(items, actions, words, lengths)
    expected = hidden[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.last_hidden(items, actions, words, lengths), expected)


def test_last_hidden_follows_the_encoder_in_training_mode_without_dropout() -> None:
    model = make_model().train()
    items, actions, words, lengths = inputs()
    expected = model(items, actions, words, lengths)[torch.arange(3), lengths - 1]
    torch.testing.assert_close(model.last_hidden(items, actions, words, lengths), expected)


def test_padded_columns_are_minus_infinity_and_the_rest_unchanged() -> None:
    model = make_model()
    batch = inputs()
    plain = model.score_last(*batch)
    padded = model.score_last(*batch, columns=V + 5)
    assert padded.shape == (3, V + 5)
    # A wider matmul may block its sums differently: equal to rounding, not bit for bit
    # (CI's CPU differed in the last bits).
    torch.testing.assert_close(padded[:, :V], plain, rtol=1e-6, atol=1e-6)
    assert torch.isneginf(padded[:, V:]).all()
    assert torch.equal(model.score_last(*batch, columns=V), plain)
    with pytest.raises(ValueError, match="fewer than"):
        model.score_last(*batch, columns=V - 1)


def test_changing_a_future_token_leaves_earlier_positions_unchanged() -> None:
    model = make_model()
    items, actions, words, lengths = inputs(batch=1)
    lengths = torch.tensor([6])
    before = model(items, actions, words, lengths)
    changed = items.clone()
    changed[0, 4] = FIRST_ITEM + (int(items[0, 4]) - FIRST_ITEM + 1) % (V - FIRST_ITEM)
    after = model(changed, actions, words, lengths)
    assert torch.allclose(before[0, :4], after[0, :4], atol=1e-6)
    assert not torch.allclose(before[0, 4:], after[0, 4:], atol=1e-6)


def test_padding_does_not_change_scores() -> None:
    model = make_model()
    items, actions, words, _ = inputs(batch=1, length=4)
    lengths = torch.tensor([4])
    short = model.score_last(items, actions, words, lengths)
    pad = torch.zeros(1, 3, dtype=torch.long)
    padded = model.score_last(
        torch.cat([items, pad + 7], 1),  # garbage in padding must not matter either
        torch.cat([actions, pad], 1),
        torch.cat([words, torch.zeros(1, 3, WORDS_PER_SEARCH, dtype=torch.long)], 1),
        lengths,
    )
    assert torch.allclose(short, padded, atol=1e-5)


def test_batch_rows_are_independent() -> None:
    model = make_model()
    items, actions, words, lengths = inputs()
    together = model.score_last(items, actions, words, lengths)
    alone = model.score_last(items[2:3, :2], actions[2:3, :2], words[2:3, :2], lengths[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-5)


def test_oov_input_scores_finite() -> None:
    model = make_model()
    items, actions, words, lengths = inputs()
    items[:, 0] = OOV
    assert torch.isfinite(model.score_last(items, actions, words, lengths)[:, FIRST_ITEM:]).all()


def test_side_info_changes_scores_only_when_used() -> None:
    items, actions, words, lengths = inputs()
    other_words = words.clone()
    other_words[:, 1, 0] += 1
    with_side = make_model(use_side_info=True)
    a = with_side.score_last(items, actions, words, lengths)
    b = with_side.score_last(items, actions, other_words, lengths)
    assert not torch.allclose(a, b)
    without = make_model(use_side_info=False)
    a = without.score_last(items, actions, words, lengths)
    b = without.score_last(items, actions, other_words, lengths)
    assert torch.allclose(a, b)


def test_loss_is_finite_and_trains() -> None:
    model = make_model()
    model.train()
    items, actions, words, lengths = inputs()
    targets = next_items(items)
    first = float(model.loss(items, actions, words, lengths, targets).detach())
    loss = train_steps(model, (items, actions, words, lengths), targets)
    assert torch.isfinite(loss) and float(loss.detach()) < first
    empty = model.loss(items, actions, words, lengths, torch.zeros_like(targets))
    assert float(empty.detach()) == 0.0


@pytest.mark.parametrize("items", [7, 1024, 2500])  # below, at and above one chunk
def test_chunked_softmax_loss_matches_cross_entropy(items: int) -> None:
    g = torch.Generator().manual_seed(items)
    h = torch.randn(9, 16, generator=g, requires_grad=True)
    weight = torch.randn(items, 16, generator=g).requires_grad_()
    bias = torch.randn(items, generator=g).requires_grad_()
    target = torch.randint(0, items, (9,), generator=g)
    target[1] = target[0]  # a repeated target accumulates both rows' gradients
    expected = F.cross_entropy(F.linear(h, weight, bias), target)
    want = torch.autograd.grad(expected * 2.0, (h, weight, bias))
    loss = ChunkedSoftmaxLoss.apply(h, weight, bias, target)
    got = torch.autograd.grad(loss * 2.0, (h, weight, bias))
    assert torch.allclose(loss, expected, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_sampled_softmax_loss_trains_and_matches_full_with_every_item() -> None:
    model = make_model()
    items, actions, words, lengths = inputs()
    targets = next_items(items)
    full = model.loss(items, actions, words, lengths, targets)
    # asking for the whole catalogue (or more) is the full softmax itself
    same = model.loss(items, actions, words, lengths, targets, negatives=V - FIRST_ITEM)
    assert torch.equal(full, same)
    torch.manual_seed(0)
    sampled = model.loss(items, actions, words, lengths, targets, negatives=5)
    assert torch.isfinite(sampled) and not torch.equal(sampled, full)
    train_steps(model, (items, actions, words, lengths), targets, negatives=8)
    model.eval()
    assert float(model.loss(items, actions, words, lengths, targets).detach()) < float(
        full.detach()
    )


def test_sampled_negative_equal_to_target_is_masked() -> None:
    torch.manual_seed(0)
    # two real items; targets are always the first, one negative is drawn per batch
    model = SASRec(n_items=FIRST_ITEM + 2, max_len=MAX_LEN, dim=16, heads=2, dropout=0.0).eval()
    items = torch.full((2, 3), FIRST_ITEM + 1)
    actions = torch.full((2, 3), ACTION_IDS["view"])
    words = torch.zeros(2, 3, WORDS_PER_SEARCH, dtype=torch.long)
    lengths = torch.tensor([3, 2])
    targets = torch.full((2, 3), FIRST_ITEM)
    with torch.no_grad():
        losses = {float(model.loss(items, actions, words, lengths, targets, 1)) for _ in range(40)}
    # drawing the target leaves it alone in the softmax (loss 0); the other item costs > 0
    assert 0.0 in losses and any(loss > 0.0 for loss in losses)


def test_ffn_mult_sets_the_feed_forward_size() -> None:
    model = SASRec(n_items=V, dim=16, heads=2, ffn_mult=4)
    layer = model.encoder.layers[0]
    assert isinstance(layer, torch.nn.TransformerEncoderLayer)
    assert layer.linear1.out_features == 64


def test_without_item_bias_the_bias_stays_zero() -> None:
    torch.manual_seed(0)
    model = SASRec(n_items=V, max_len=MAX_LEN, dim=16, heads=2, dropout=0.0, item_bias=False)
    items, actions, words, lengths = inputs()
    targets = torch.roll(items, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(items, actions, words, lengths, targets).backward()
        optimizer.step()
    assert not model.item_bias.requires_grad and not model.item_bias.any()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = make_model(seed=3)
    hparams = {"n_items": V, "max_len": MAX_LEN, "dim": 16, "layers": 2, "heads": 2, "dropout": 0.0}
    meta = {"kind": "recs", "hparams": hparams, "vocab": [f"i{i}" for i in range(V - 2)]}
    save_checkpoint(tmp_path, "recs", model, meta)
    loaded, loaded_meta = load_recs(tmp_path)
    assert not loaded.training
    assert loaded_meta["vocab"] == meta["vocab"]
    batch = inputs()
    assert torch.equal(model.score_last(*batch), loaded.score_last(*batch))


def test_load_recs_rejects_other_kinds(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "recs", make_model(), {"kind": "sentiment", "hparams": {}})
    with pytest.raises(ValueError, match="not 'recs'"):
        load_recs(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_recs(tmp_path / "missing")


def test_uniform_bce_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = SASRec(n_items=V, max_len=MAX_LEN, dim=16, heads=2, dropout=0.0).eval()
    with torch.no_grad():
        model.item_bias.copy_(torch.randn(V))
    h = torch.randn(4, 16)
    target = torch.tensor([2, 5, 9, 5])
    torch.manual_seed(7)
    got = model.uniform_bce(h, target, 6)
    torch.manual_seed(7)
    drawn = torch.randint(FIRST_ITEM, V, (6,))
    emb, bias = model.item_emb.weight, model.item_bias
    rows = []
    for row, t in zip(h, target.tolist(), strict=True):
        negs = [int(d) for d in drawn if int(d) != t]
        pos = -F.logsigmoid(row @ emb[t] + bias[t])
        neg = torch.stack([-F.logsigmoid(-(row @ emb[d] + bias[d])) for d in negs]).mean()
        rows.append(pos + neg)
    assert torch.allclose(got, torch.stack(rows).mean(), atol=1e-6)


def test_uniform_bce_ignores_a_draw_equal_to_the_target() -> None:
    # one real item: every draw is the target, so only the positive term is left
    model = SASRec(n_items=FIRST_ITEM + 1, max_len=MAX_LEN, dim=16, heads=2, dropout=0.0)
    h = torch.randn(3, 16)
    target = torch.full((3,), FIRST_ITEM)
    positive = (h @ model.item_emb.weight[FIRST_ITEM] + model.item_bias[FIRST_ITEM]).detach()
    got = model.uniform_bce(h, target, 4)
    assert torch.allclose(got, F.softplus(-positive).mean(), atol=1e-6)


def test_loss_with_bce_term_adds_it_and_trains() -> None:
    model = make_model()
    items, actions, words, lengths = inputs()
    targets = next_items(items)
    ce = model.loss(items, actions, words, lengths, targets)
    assert torch.equal(ce, model.loss(items, actions, words, lengths, targets, bce_weight=0.5))
    keep = targets >= FIRST_ITEM
    h = model(items, actions, words, lengths)[keep]
    torch.manual_seed(3)
    bce = model.uniform_bce(h, targets[keep], 8)
    torch.manual_seed(3)
    both = model.loss(items, actions, words, lengths, targets, bce_negatives=8, bce_weight=0.5)
    assert torch.allclose(both, ce + 0.5 * bce, atol=1e-6)
    first = float(both.detach())
    train_steps(model, (items, actions, words, lengths), targets, bce_negatives=8)
    model.eval()
    torch.manual_seed(3)
    after = model.loss(items, actions, words, lengths, targets, bce_negatives=8, bce_weight=0.5)
    assert float(after.detach()) < first
