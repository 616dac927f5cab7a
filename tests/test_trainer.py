"""Helpers of the LiveEdit trainer that decide which (input, edit) pairs the routing losses treat as in scope."""

import pytest
import torch

from easyedit_liveedit.liveedit.train_step import (
    IGNORE_INDEX,
    answer_accuracy,
    random_prefix,
    same_image,
    scored_positions,
)


def test_same_image_matches_pixel_identical_images_only():
    a, b = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    nearly_a = a.clone()
    nearly_a[0, 0, 0] += 1e-6
    images = torch.stack([a, b, a, nearly_a])
    expected = torch.tensor(
        [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(same_image(images), expected)


def test_random_prefix_switches_on_a_prefix_per_input():
    torch.manual_seed(0)
    switch = random_prefix(64, 5, torch.device("cpu"))
    lengths = switch.sum(dim=1)
    assert torch.equal(switch, torch.arange(5)[None] < lengths[:, None])  # always a prefix
    assert set(lengths.tolist()) == set(range(6))  # every length 0..M occurs in 64 draws


def test_scored_positions_keep_the_last_answer_tokens_of_each_row():
    X = IGNORE_INDEX
    # row 0: prompt, space, two answer tokens, padding; row 1: prompt, space, one answer token
    labels = torch.tensor([[X, X, 5, 7, 8, X], [X, X, X, 5, 9, X]])
    supervised = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)  # predict labels[t + 1]
    assert torch.equal(scored_positions(labels), supervised)
    expected = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(scored_positions(labels, [2, 1]), expected)
    logits = torch.zeros(2, 6, 10)
    logits[0, 1, 5] = logits[0, 2, 7] = logits[1, 2, 5] = 1.0  # spaces right, row 0's answer half right
    assert answer_accuracy(logits, labels) == pytest.approx(3 / 5)  # 3 of the 5 supervised positions
    assert answer_accuracy(logits, labels, [2, 1]) == pytest.approx(1 / 3)  # 1 of the 3 answer tokens
