"""EasyEdit main's Hugging Face backbones, LLaVA-OneVision and Qwen2-VL, behind the wrapper LiveEdit holds.

EasyEdit main builds them with ``from_pretrained`` and drives them through their ``AutoProcessor``: an edit or a scored
question is the processor's output for ``apply_chat_template`` of one user turn (an image, then the question) with the
generation prompt, followed by the answer (``prepare_multimodal_hf_edit``), and the model is called as
``model(**multimodal_inputs)``; labels are the answer's tokens at the end of the row (``build_target_labels``).
``ChatVLMForEditing`` takes that batch as one dict (the processor's tensors, plus ``labels``) and returns the logits
with the labels, as EasyEdit's BLIP-2 and MiniGPT-4 do. The model's own forward, not this file, puts the image
features where the processor wrote the image token.

A row (Qwen2-VL's template; LLaVA-OneVision's has no system turn and writes ``<image>\\n`` instead)::

    <|im_start|>system ... <|im_end|> <|im_start|>user <|vision_start|> [image tokens] <|vision_end|> question
    <|im_end|> <|im_start|>assistant\\n answer [padding]

- image tokens: the positions holding ``config.image_token_id`` (the forward scatters the image features there);
- answer: every real token after the last *answer header* (the text the template adds for the generation prompt,
  ``<|im_start|>assistant\\n``), so a question asked with its answer (teacher forcing) and one asked alone route alike;
- prompt: the other real tokens before the answer header that are not special tokens (the question, with the
  template's role words, which are the same in every row).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..liveedit.backbone import BackboneAdapter, TokenLayout

# class of the Hugging Face model -> EasyEdit main's family name for it
FAMILIES = {"LlavaOnevisionForConditionalGeneration": "llava-onevision", "Qwen2VLForConditionalGeneration": "qwen2-vl"}
# keys of a batch that are not the model's inputs
_NOT_INPUTS = ("labels", "answer_tokens")


@dataclass
class ChatVLMOutput(ModelOutput):
    """The logits, with the batch's input-aligned labels (``-100`` off the answer), as EasyEdit's BLIP-2 returns."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    labels: Tensor | None = None
    attention_mask: Tensor | None = None


class ChatVLMForEditing(nn.Module):
    """A LLaVA-OneVision or Qwen2-VL model called with EasyEdit main's processor batches as one dict."""

    def __init__(self, vlm: nn.Module, processor: Any) -> None:
        """Wrap ``vlm`` (its weights are neither copied nor changed) with its ``processor`` (chat template, tokenizer).

        Raises:
            ValueError: if the processor's chat template has no generation prompt (no answer header to find).
        """
        super().__init__()
        if type(vlm).__name__ not in FAMILIES:
            raise TypeError(f"ChatVLMForEditing wraps {', '.join(FAMILIES)}, got {type(vlm).__name__}")
        self.vlm = vlm
        self.processor = processor
        self.family = FAMILIES[type(vlm).__name__]
        self.answer_header = answer_header_ids(processor)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def forward(self, samples: dict[str, Any]) -> ChatVLMOutput:
        """The model's forward on one batch (EasyEdit main's ``multimodal_inputs``, plus ``labels`` if any)."""
        out = self.vlm(**model_inputs(samples), return_dict=True)
        return ChatVLMOutput(logits=out.logits, labels=samples.get("labels"), attention_mask=samples["attention_mask"])


def model_inputs(samples: dict[str, Any]) -> dict[str, Any]:
    """The model's own inputs among a batch's entries."""
    return {k: v for k, v in samples.items() if k not in _NOT_INPUTS}


def answer_header_ids(processor: Any) -> list[int]:
    """Token ids of what the chat template adds for the generation prompt (``<|im_start|>assistant\\n``)."""
    turn = [{"role": "user", "content": [{"type": "text", "text": "question"}]}]
    plain = processor.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
    prompted = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    if not prompted.startswith(plain) or prompted == plain:
        raise ValueError("the processor's chat template adds no generation prompt: LiveEdit cannot find the answer")
    return processor.tokenizer(prompted[len(plain) :], add_special_tokens=False).input_ids


def _last_occurrence(row: list[int], pattern: list[int]) -> int:
    """Start of the last occurrence of ``pattern`` in ``row``; -1 if there is none."""
    n = len(pattern)
    return next((i for i in range(len(row) - n, -1, -1) if row[i : i + n] == pattern), -1)


class ChatVLMAdapter(BackboneAdapter):
    """``ChatVLMForEditing`` around transformers' LLaVA-OneVision or Qwen2-VL (see the module docstring)."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.vlm.model.language_model.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.vlm.model.language_model  # the text model: called with the (B, T) attention mask

    def hidden_size(self, model: nn.Module) -> int:
        return model.vlm.config.text_config.hidden_size

    def tokenizer(self, model: nn.Module) -> Any:
        return model.tokenizer

    def layout(self, model: nn.Module, samples: dict[str, Any], attention_mask: Tensor) -> TokenLayout:
        ids = samples["input_ids"].to(attention_mask.device)  # (B, T)
        real = attention_mask.bool()
        image = real & (ids == model.vlm.config.image_token_id)
        special = torch.tensor(model.tokenizer.all_special_ids, device=ids.device)
        header = model.answer_header
        positions = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, T)
        header_start = []
        for b, row in enumerate(ids.tolist()):
            start = _last_occurrence(row, header)
            if start < 0:
                raise ValueError(
                    f"row {b} has no answer header {model.tokenizer.decode(header)!r}: ask with the processor's chat "
                    "template and add_generation_prompt=True, as EasyEdit main's prepare_multimodal_hf_edit does"
                )
            header_start.append(start)
        starts = torch.tensor(header_start, device=ids.device)[:, None]  # (B, 1)
        answer = real & (positions >= starts + len(header))
        prompt = real & ~image & (positions < starts) & ~torch.isin(ids, special)
        return TokenLayout(image=image, prompt=prompt, answer=answer)

    def prompt_embeddings(self, model: nn.Module, samples: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # What the model's forward feeds its text model: the token embeddings with the image features put where the
        # image tokens are (the model's own get_image_features and placeholder mask).
        inner = model.vlm.model
        ids = samples["input_ids"]
        embeds = inner.get_input_embeddings()(ids)  # (B, T, d)
        if samples.get("pixel_values") is not None:
            features = torch.cat(list(_IMAGE_FEATURES[model.family](inner, samples)), dim=0).to(embeds.dtype)
            mask, _ = inner.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=features)
            embeds = embeds.masked_scatter(mask, features)
        return embeds, samples["attention_mask"]

    def prompts_len(self, model: nn.Module, prompts: list[str]) -> list[int]:
        raise NotImplementedError(
            "chat VLMs are asked through their processor: pass its output to generate(), not text prompts"
        )

    def generate(
        self,
        model: nn.Module,
        samples: dict[str, Any],
        max_new_tokens: int,
        routed: Callable[[dict[str, Any]], AbstractContextManager],
    ) -> list[str]:
        # The model's own greedy generate (KV cache, and Qwen2-VL's multimodal positions), inside one routed pass:
        # routing is computed on the prompt and reused for every new token.
        inputs = model_inputs(samples)
        with routed(samples):
            out = model.vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in model.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _llava_onevision_features(inner: nn.Module, samples: dict[str, Any]) -> list[Tensor]:
    config = inner.config
    return inner.get_image_features(
        samples["pixel_values"],
        samples["image_sizes"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        batch_num_images=samples.get("batch_num_images"),
        return_dict=True,
    ).pooler_output


def _qwen2_vl_features(inner: nn.Module, samples: dict[str, Any]) -> list[Tensor]:
    return inner.get_image_features(samples["pixel_values"], samples["image_grid_thw"]).pooler_output


_IMAGE_FEATURES = {"llava-onevision": _llava_onevision_features, "qwen2-vl": _qwen2_vl_features}
