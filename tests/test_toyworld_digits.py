"""The pretrained ``digits`` backbone genuinely answers: >= 90% on held-out questions of every kind.

The digits world ships no backbone, so this test pretrains one (10-17 minutes on 2 cores): it is marked ``rebuild``
and runs with ``make test-rebuild``, not in CI."""

from __future__ import annotations

import pytest
import torch

import easyedit_liveedit  # noqa: F401  (applies the EasyEdit shims)
from easyedit_liveedit import toyworld
from easyedit_liveedit.toyworld.evaluate import pre_edit_accuracy, worst_kind


@pytest.mark.rebuild
def test_digits_backbone_answers_every_kind():
    built = toyworld.load("digits")  # builds into the cache on first use (minutes), then loads
    world = toyworld.load("digits")
    assert world.manifest == built.manifest  # the second load reuses the cached build
    model = world.load_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Measured here (not read from the manifest), with EasyEdit's metric code, on the eval split.
        accuracy = pre_edit_accuracy(model, world.tokenizer(), world.layout, world.config.image_size, limit=60)
    finally:
        torch.set_num_threads(threads)
    name, value = worst_kind(accuracy)
    assert value >= 0.9, f"{name} = {value:.3f} < 0.9: {accuracy}"
    sizes = world.manifest["sizes"]
    assert sizes["vqa_train"] >= 4000 and sizes["vqa_dev"] >= 1000 and sizes["vqa_eval"] >= 2000
