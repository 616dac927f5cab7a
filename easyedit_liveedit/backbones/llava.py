"""LLaVA-1.5 (transformers' ``LlavaForConditionalGeneration``) behind the smallest wrapper taking EasyEdit batches.

The installed easyeditor wheel (0.0.1.dev0) has no LLaVA path at all: its ``MultimodalEditor`` and
``get_model`` build only ``blip2`` and ``minigpt4``, and its datasets and metrics call ``model(samples)`` with
EasyEdit's sample dict (``image``, ``text_input``, ``prompts_len``, ``labels``). EasyEdit main adds
LLaVA-OneVision through a Hugging Face processor, not LLaVA-1.5. So LLaVA-1.5 is supported through LiveEdit's
own API: ``LiveEdit(LlavaForEditing(llava, tokenizer), hparams)``, where ``LlavaForEditing`` turns the sample
dict into the ``input_ids`` / ``pixel_values`` / ``attention_mask`` LLaVA's own forward expects, and LLaVA's
forward (not this file) splices the image features in at the ``<image>`` tokens. ``load_llava`` builds it from a
local weights folder (llava-hf's layout); the plugin's ``MultimodalEditor``, trainer and CLI build ``model_name:
llava`` with it (``easyedit/models.py``), since the wheel cannot.

Images: EasyEdit's datasets and editor process every image at 364 pixels with BLIP's processor, whose mean and
std are CLIP's; LLaVA-1.5's CLIP tower takes 336. Images of another size are resized (bicubic, antialiased) to the
tower's size before the forward. LLaVA's own processor pads the image to a square first; EasyEdit's squashes it.

A sequence with an image (right padding, the default ``image_prompt``)::

    [BOS] [USER: ] [<image> x N] [\\n] [text_input] [padding]

- ``N`` is the vision tower's patch count (576 for LLaVA-1.5's 336-pixel CLIP ViT-L/14, CLS dropped);
- ``text_input`` (prompt + " " + answer, EasyEdit's format) is tokenised without special tokens; the
  tokenizer's leading special tokens (LLaMA: BOS) open the sequence, before the template;
- ``prompts_len`` counts as EasyEdit counts for every backbone but MiniGPT-4, ``len(tok.encode(prompt))``,
  so it includes those special tokens: the prompt is the first ``prompts_len - len(specials)`` text tokens.
Text-only inputs (``image=None``) are ``[BOS] [text_input]``: no template, no image tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..liveedit.backbone import BackboneAdapter, TokenLayout, span_layout

LOG = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100


@dataclass
class LlavaEditOutput(ModelOutput):
    """What EasyEdit's Blip2OPT / MiniGPT4 return: logits with input-aligned labels (``-100`` off the answer)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    labels: Tensor | None = None
    attention_mask: Tensor | None = None


class LlavaForEditing(nn.Module):
    """``LlavaForConditionalGeneration`` called with EasyEdit's sample dict (see the module docstring)."""

    def __init__(self, llava: nn.Module, tokenizer: Any, image_prompt: str = "USER: <image>\n") -> None:
        """Wrap ``llava`` so it takes EasyEdit's sample dict; LLaVA's weights are not copied or changed.

        Args:
            llava: a ``LlavaForConditionalGeneration``.
            tokenizer: its tokenizer. The wrapper writes the image token id itself (``config.image_token_id``), so
                ``<image>`` is never tokenised from text here.
            image_prompt: the template put before ``text_input`` when there is an image; holds ``<image>`` once.
        """
        super().__init__()
        if image_prompt.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"image_prompt must contain {IMAGE_TOKEN!r} exactly once, got {image_prompt!r}")
        self.llava = llava
        self.tokenizer = tokenizer
        self.image_prompt = image_prompt
        before, after = image_prompt.split(IMAGE_TOKEN)
        self._before = tokenizer(before, add_special_tokens=False).input_ids if before else []
        self._after = tokenizer(after, add_special_tokens=False).input_ids if after else []
        self._specials = tokenizer.build_inputs_with_special_tokens([])  # what tok.encode adds (LLaMA: [BOS])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad)

    # ------------------------------------------------------------------ where the tokens go
    @property
    def num_image_tokens(self) -> int:
        """Image features LLaVA splices in per image: one per patch, plus the CLS under strategy ``full``."""
        vision = self.llava.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if self.llava.config.vision_feature_select_strategy == "full" else 0)

    @property
    def num_special_tokens(self) -> int:
        """Leading special tokens (counted in ``prompts_len``, placed at the start of the sequence)."""
        return len(self._specials)

    @property
    def image_start(self) -> int:
        """Position of the first image token."""
        return len(self._specials) + len(self._before)

    def text_start(self, has_image: bool) -> int:
        """Position of the first ``text_input`` token."""
        if not has_image:
            return len(self._specials)
        return self.image_start + self.num_image_tokens + len(self._after)

    def inputs(self, samples: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """``input_ids``, ``attention_mask`` and input-aligned ``labels``, each ``(B, T)``, right-padded."""
        has_image = samples.get("image") is not None
        head = list(self._specials)
        if has_image:
            head += self._before + [self.llava.config.image_token_id] * self.num_image_tokens + self._after
        rows, labels = [], []
        for text, prompt_len in zip(samples["text_input"], samples["prompts_len"], strict=True):
            text_ids = self.tokenizer(text, add_special_tokens=False).input_ids
            n_prompt = prompt_len - len(self._specials)
            if n_prompt < 0:
                raise ValueError(f"prompts_len {prompt_len} is shorter than the tokenizer's special tokens")
            rows.append(head + text_ids)
            labels.append([IGNORE_INDEX] * (len(head) + n_prompt) + text_ids[n_prompt:])
        T = max(map(len, rows))
        device = self.llava.device
        input_ids = torch.full((len(rows), T), self._pad_id, dtype=torch.long)
        label_ids = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, (row, label) in enumerate(zip(rows, labels, strict=True)):
            input_ids[b, : len(row)] = torch.tensor(row)
            label_ids[b, : len(row)] = torch.tensor(label)
            mask[b, : len(row)] = 1
        return input_ids.to(device), mask.to(device), label_ids.to(device)

    def pixel_values(self, image: Tensor) -> Tensor:
        """``image (B, 3, H, W)`` on LLaVA's device and dtype, resized to its vision tower's size if it differs."""
        size = self.llava.config.vision_config.image_size
        image = image.to(self.llava.device)
        if image.shape[-2:] != (size, size):
            LOG.debug("LLaVA: resizing images of %s pixels to the vision tower's %d", tuple(image.shape[-2:]), size)
            image = F.interpolate(
                image.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True
            )
        return image.to(self.llava.dtype)

    def forward(self, samples: dict[str, Any]) -> LlavaEditOutput:
        """LLaVA's teacher-forced forward on EasyEdit's sample dict; the loss is over the answer tokens."""
        input_ids, attention_mask, labels = self.inputs(samples)
        image = samples.get("image")
        pixel_values = None if image is None else self.pixel_values(image)
        out = self.llava(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            labels=labels,
            return_dict=True,
        )
        return LlavaEditOutput(loss=out.loss, logits=out.logits, labels=labels, attention_mask=attention_mask)


class LlavaAdapter(BackboneAdapter):
    """``LlavaForEditing`` around transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5)."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.llava.model.language_model.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        # LLaVA itself: its forward takes the full-length attention_mask and returns logits (lm_head included),
        # with or without pixel_values, so generation can call it with inputs_embeds and then token ids.
        return model.llava

    def hidden_size(self, model: nn.Module) -> int:
        return model.llava.config.text_config.hidden_size

    def tokenizer(self, model: nn.Module) -> Any:
        return model.tokenizer

    def layout(self, model: nn.Module, samples: dict[str, Any], attention_mask: Tensor) -> TokenLayout:
        has_image = samples.get("image") is not None
        prompts_len = [n - model.num_special_tokens for n in samples["prompts_len"]]  # text tokens only
        n_image = model.num_image_tokens if has_image else 0
        return span_layout(attention_mask, model.image_start, n_image, model.text_start(has_image), prompts_len)

    def prompt_embeddings(self, model: nn.Module, samples: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # What LLaVA's forward does with input_ids + pixel_values: embed the tokens, then put the projected image
        # features where the <image> tokens are.
        input_ids, mask, _ = model.inputs(samples)
        llava = model.llava
        embeds = llava.get_input_embeddings()(input_ids)  # (B, T, d)
        image = samples.get("image")
        if image is not None:
            features = llava.model.get_image_features(pixel_values=model.pixel_values(image))
            features = torch.cat(list(features), dim=0).to(embeds.dtype)  # (B * N, d)
            where = (input_ids == llava.config.image_token_id)[..., None].expand_as(embeds)
            embeds = embeds.masked_scatter(where, features)
        return embeds, mask


def load_llava(
    folder: str | os.PathLike,
    tokenizer_class: str = "AutoTokenizer",
    tokenizer_name: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> LlavaForEditing:
    """A ``LlavaForEditing`` from a local LLaVA-1.5 weights folder (llava-hf's layout), in eval mode.

    Args:
        folder: holds ``config.json`` and the weights of a ``LlavaForConditionalGeneration``.
        tokenizer_class: a ``transformers`` class name (the hparams' ``tokenizer_class``).
        tokenizer_name: the tokenizer's folder (default: ``folder``).
        torch_dtype: the dtype to load in (default: the checkpoint's).
        device_map: passed to ``from_pretrained`` (``"auto"`` shards the model over the visible devices).
    """
    import transformers

    llava = transformers.LlavaForConditionalGeneration.from_pretrained(
        str(folder), dtype=torch_dtype, device_map=device_map
    )
    tok = getattr(transformers, tokenizer_class).from_pretrained(str(tokenizer_name or folder))
    if tok.pad_token is None:  # as EasyEdit's datasets and editor do
        tok.pad_token = tok.eos_token
    return LlavaForEditing(llava.eval(), tok)
