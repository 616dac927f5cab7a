"""Helpers of the LiveEdit trainer that decide which (input, edit) pairs the routing losses treat as in scope."""

import torch

from easyedit_liveedit.trainer import random_prefix, same_image


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
