"""Routing functions against hand computations; masks, empty rows, large libraries."""

from __future__ import annotations

import math

import pytest
import torch

from easyedit_liveedit.liveedit.routing import (
    hard_filter,
    masked_softmax,
    paired_similarity,
    route,
    similarity,
    soft_weights,
)

K, DM = 2, 8


def hand_similarity(a: list, b: list) -> float:
    """mean over slots of the slot dot product, / sqrt(d_m); plain Python."""
    k, dm = len(a), len(a[0])
    return sum(sum(x * y for x, y in zip(a[j], b[j], strict=True)) for j in range(k)) / k / math.sqrt(dm)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_similarity_matches_hand_computation():
    torch.manual_seed(0)
    a, b = torch.randn(3, K, DM), torch.randn(4, K, DM)
    sim = similarity(a, b)
    assert sim.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert sim[i, j].item() == pytest.approx(hand_similarity(a[i].tolist(), b[j].tolist()), abs=1e-6)


def test_similarity_is_slot_aligned():
    """Swapping the slots of one side changes the similarity (slot j only meets slot j)."""
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert similarity(a, b).item() == 0.0
    assert similarity(a, a).item() == pytest.approx(1.0 / math.sqrt(2))


def test_paired_similarity_is_the_diagonal():
    torch.manual_seed(0)
    a, b = torch.randn(5, K, DM), torch.randn(5, K, DM)
    torch.testing.assert_close(paired_similarity(a, b), similarity(a, b).diagonal())


def test_hard_filter_drops_experts_not_strictly_above_the_sentinel():
    visual = torch.tensor([[0.5, 0.1, 0.3, 0.31], [0.0, 2.0, -1.0, 0.0]])
    sentinel = torch.tensor([0.3, -0.5])
    keep = hard_filter(visual, sentinel)
    assert keep.tolist() == [[True, False, False, True], [True, True, False, True]]
    keep = hard_filter(visual, sentinel, has_image=torch.tensor([True, False]))
    assert keep.tolist() == [[True, False, False, True], [False] * 4]


def test_soft_weights_match_hand_computation():
    a = [1.0, 2.0, -1.0, 0.5]
    keep = [True, True, False, True]
    w = soft_weights(torch.tensor([a]), torch.tensor([keep]))[0].tolist()
    z = sum(math.exp(x) for x, k in zip(a, keep, strict=True) if k)
    expected = [sigmoid(x) * math.exp(x) / z if k else 0.0 for x, k in zip(a, keep, strict=True)]
    assert w == pytest.approx(expected, abs=1e-7)
    assert w[2] == 0.0


def test_weights_are_zero_when_nothing_is_kept_and_never_nan():
    a = torch.tensor([[0.3, -2.0, 1e4], [1.0, 2.0, 3.0]], requires_grad=True)
    keep = torch.tensor([[False, False, False], [False, True, False]])
    w = soft_weights(a, keep)
    assert torch.equal(w[0], torch.zeros(3))
    assert w[1].tolist() == pytest.approx([0.0, sigmoid(2.0), 0.0])
    w.sum().backward()
    assert torch.isfinite(a.grad).all()
    assert torch.equal(a.grad[0], torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_masked_softmax_low_precision_and_extreme_logits(dtype):
    logits = torch.tensor([[-1e4, 5.0, 60.0], [1.0, 1.0, 1.0]], dtype=dtype)
    keep = torch.tensor([[True, True, False], [False, False, False]])
    p = masked_softmax(logits, keep)
    assert torch.isfinite(p).all()
    assert p[0].float().tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert torch.equal(p[1], torch.zeros(3, dtype=dtype))


def test_route_composes_both_stages_and_rows_are_independent():
    torch.manual_seed(0)
    B, N = 4, 7
    in_phi, in_psi, sent = torch.randn(B, K, DM), torch.randn(B, K, DM), torch.randn(B, K, DM)
    ex_phi, ex_psi = torch.randn(N, K, DM), torch.randn(N, K, DM)
    has_image = torch.tensor([True, True, False, True])
    keep, weights = route(in_phi, in_psi, sent, ex_phi, ex_psi, has_image)
    for b in range(B):
        kept = [
            has_image[b].item()
            and hand_similarity(in_phi[b].tolist(), ex_phi[m].tolist())
            > hand_similarity(in_phi[b].tolist(), sent[b].tolist())
            for m in range(N)
        ]
        assert keep[b].tolist() == kept
        a = [hand_similarity(in_psi[b].tolist(), ex_psi[m].tolist()) for m in range(N)]
        z = sum(math.exp(x) for x, k in zip(a, kept, strict=True) if k)
        expected = [sigmoid(x) * math.exp(x) / z if k else 0.0 for x, k in zip(a, kept, strict=True)]
        assert weights[b].tolist() == pytest.approx(expected, abs=1e-6)
        one_keep, one_w = route(
            in_phi[b : b + 1], in_psi[b : b + 1], sent[b : b + 1], ex_phi, ex_psi, has_image[b : b + 1]
        )
        assert torch.equal(one_keep[0], keep[b])
        torch.testing.assert_close(one_w[0], weights[b])
    assert not weights[2].any()  # the text-only input


def test_route_handles_a_hundred_thousand_experts():
    g = torch.Generator().manual_seed(0)
    B, N = 8, 100_000
    in_phi, in_psi, sent = (torch.randn(B, K, DM, generator=g) for _ in range(3))
    ex_phi, ex_psi = torch.randn(N, K, DM, generator=g), torch.randn(N, K, DM, generator=g)
    keep, weights = route(in_phi, in_psi, sent, ex_phi, ex_psi)
    assert keep.shape == weights.shape == (B, N)
    assert torch.isfinite(weights).all()
    # spot-check a few columns against the direct formula
    for m in (0, 12_345, N - 1):
        expected_keep = paired_similarity(in_phi, ex_phi[m].expand(B, -1, -1)) > paired_similarity(in_phi, sent)
        assert torch.equal(keep[:, m], expected_keep)
    # each row's weights are a sigmoid-damped distribution over its kept set
    row_sums = weights.sum(dim=1)
    assert (row_sums <= 1.0 + 1e-5).all() and (row_sums[keep.any(dim=1)] > 0).all()


def test_averaged_weights_share_each_input_equally_among_its_kept_experts():
    """Guards the paper's ablation "experts averaged" (``soft_weights: average``): every expert an input kept gets
    ``1 / |kept|`` whatever the textual similarities, a row sums to 1 where anything is kept and is 0 where nothing
    is; ``route`` passes the choice on. Seen failing with the ``average`` branch of ``soft_weights`` returning the
    learned weights (rows summed to less than 1 and moved with ``a``), and with ``route`` not passing ``weighting``."""
    a = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -2.0, 1e4, 0.0], [1.0, 2.0, 3.0, 4.0]])
    keep = torch.tensor([[True, True, False, True], [False, False, False, False], [False, True, False, False]])
    w = soft_weights(a, keep, "average")
    torch.testing.assert_close(w, torch.tensor([[1 / 3, 1 / 3, 0.0, 1 / 3], [0.0] * 4, [0.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(soft_weights(torch.randn(3, 4), keep, "average"), w)  # the similarities play no part
    torch.manual_seed(0)
    B, N = 4, 7
    in_phi, in_psi, sent = torch.randn(B, K, DM), torch.randn(B, K, DM), torch.randn(B, K, DM)
    ex_phi, ex_psi = torch.randn(N, K, DM), torch.randn(N, K, DM)
    keep, weights = route(in_phi, in_psi, sent, ex_phi, ex_psi, weighting="average")
    assert keep.any(dim=1).all() and not keep.all()  # every input keeps something, not everything
    counts = keep.sum(dim=1, keepdim=True).float()
    torch.testing.assert_close(weights, keep.float() / counts)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B))
    with pytest.raises(ValueError, match="weighting is 'mean'; expected one of learned, average"):
        soft_weights(a, keep[:3, :4], "mean")
