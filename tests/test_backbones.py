"""Backbone adapters: token layouts and the errors a wrong model or layer gives."""

import pytest
import torch

from easyedit_liveedit.backbones import adapter_for, prefix_layout


def test_prefix_layout_marks_image_prompt_answer_and_ignores_padding():
    # two samples: 2 image tokens, then prompt (3 / 1 tokens), answer, right padding
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]])
    layout = prefix_layout(attention_mask, num_image_tokens=2, prompts_len=[3, 1])
    assert layout.image.tolist() == [[1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]
    assert layout.prompt.int().tolist() == [[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]]
    assert layout.answer.int().tolist() == [[0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0]]


def test_prefix_layout_text_only():
    layout = prefix_layout(torch.ones(1, 4, dtype=torch.long), num_image_tokens=0, prompts_len=[2])
    assert not layout.image.any()
    assert layout.prompt.int().tolist() == [[1, 1, 0, 0]]
    assert layout.answer.int().tolist() == [[0, 0, 1, 1]]


def test_unknown_backbone_names_its_class():
    with pytest.raises(NotImplementedError, match="Linear"):
        adapter_for(torch.nn.Linear(2, 2))
