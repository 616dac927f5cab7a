"""What LiveEdit needs to know about a vision-language backbone, and nothing more.

An adapter answers three questions for one model family: which decoder layers there are, which module
receives the token-level attention mask (so the hook can see where padding is), and which positions of
a sequence are image, prompt and answer tokens. The editor never reaches into a backbone otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenLayout:
    """Boolean masks ``(B, T)`` over the language model's input positions."""

    image: Tensor  # image tokens (h_v)
    prompt: Tensor  # question tokens (h_p); never answer tokens
    answer: Tensor  # answer tokens (h_o); empty at generation time

    def to(self, device: torch.device) -> TokenLayout:
        return TokenLayout(self.image.to(device), self.prompt.to(device), self.answer.to(device))


class BackboneAdapter(ABC):
    """Family-specific facts about a vision-language model; stateless."""

    @abstractmethod
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder layers, in order."""

    @abstractmethod
    def language_model(self, model: nn.Module) -> nn.Module:
        """The module called with ``attention_mask=`` of shape ``(B, T)`` over every input position."""

    @abstractmethod
    def hidden_size(self, model: nn.Module) -> int:
        """Width ``d`` of the decoder's hidden states."""

    @abstractmethod
    def layout(self, model: nn.Module, samples: dict[str, Any], attention_mask: Tensor) -> TokenLayout:
        """Image / prompt / answer positions of ``samples`` (EasyEdit's multimodal batch dict).

        Args:
            model: the backbone.
            samples: with ``image`` (tensor or None), ``text_input`` and ``prompts_len``.
            attention_mask: ``(B, T)`` the language model received; 1 on real tokens.
        """

    @abstractmethod
    def prompt_embeddings(self, model: nn.Module, samples: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``inputs_embeds (B, T, d)`` and ``attention_mask (B, T)`` of image + prompt only, for generation.

        ``samples["text_input"]`` holds the prompts; they must tokenise to equal lengths (no padding).
        """

    @abstractmethod
    def tokenizer(self, model: nn.Module) -> Any:
        """The language model's tokenizer (decodes generated ids, finds the end-of-answer token)."""

    def prompts_len(self, model: nn.Module, prompts: list[str]) -> list[int]:
        """``prompts_len`` of ``prompts`` as EasyEdit's data code counts it for this family.

        Generation builds its own samples, so it must count like the edit samples did, or the routing keys
        would read a different set of prompt tokens. EasyEdit counts ``tok.encode(prompt)`` (special tokens
        included) for every backbone but MiniGPT-4.
        """
        tok = self.tokenizer(model)
        return [len(tok.encode(prompt)) for prompt in prompts]

    def check_edit_layer(self, model: nn.Module, edit_layer: int) -> None:
        """Raise ``ValueError`` naming ``edit_layer`` if the backbone has no such layer."""
        n = len(self.decoder_layers(model))
        if not 0 <= edit_layer < n:
            raise ValueError(f"hparams key 'edit_layer' is {edit_layer}, but {type(model).__name__} has {n} layers")


def prefix_layout(attention_mask: Tensor, num_image_tokens: int, prompts_len: list[int]) -> TokenLayout:
    """Layout of ``[image tokens][prompt][answer][padding]`` sequences (BLIP-2 style, right padding).

    Args:
        attention_mask: ``(B, T)``; 1 on real tokens.
        num_image_tokens: image tokens at the start of every sequence (0 for text-only inputs).
        prompts_len: text tokens of each sample's prompt.
    """
    return span_layout(attention_mask, 0, num_image_tokens, num_image_tokens, prompts_len)


def span_layout(
    attention_mask: Tensor, image_start: int, num_image_tokens: int, text_start: int, prompts_len: list[int]
) -> TokenLayout:
    """Layout of sequences whose image tokens sit anywhere before the text (right padding).

    Positions before ``text_start`` that are not image tokens (a BOS, a prompt template around the image)
    are neither image, prompt nor answer: they are the same for every input, so they carry nothing to route on.

    Args:
        attention_mask: ``(B, T)``; 1 on real tokens.
        image_start: position of the first image token (the same in every row).
        num_image_tokens: image tokens per sequence (0 for text-only inputs).
        text_start: position of the first text token of ``text_input`` (the same in every row).
        prompts_len: text tokens of each sample's prompt, counted from ``text_start``.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]  # (1, T)
    prompt_end = text_start + torch.tensor(prompts_len, device=attention_mask.device)[:, None]  # (B, 1)
    real = attention_mask.bool()
    image = real & (positions >= image_start) & (positions < image_start + num_image_tokens)
    prompt = real & (positions >= text_start) & (positions < prompt_end)
    answer = real & (positions >= prompt_end)
    return TokenLayout(image=image, prompt=prompt, answer=answer)
