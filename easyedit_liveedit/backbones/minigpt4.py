"""EasyEdit's ``MiniGPT4``: the image sits inside a fixed prompt template, after a BOS, before the text.

``easyeditor.trainer.blip2_models.mini_gpt4.MiniGPT4.forward`` (the wheel) builds, for a batch with an image::

    [BOS] [###Human: <Img>] [32 image tokens] [</Img> ] [text_input + "\\n"] [padding]

- the image tokens are ``llama_proj`` of the Q-Former's query outputs (``encode_img``), wrapped by
  ``prompt_wrap`` in the template ``'###Human: <Img><ImageHere></Img> '`` (hard-coded in ``forward``): the
  text before and after ``<ImageHere>`` is tokenised on its own, without special tokens;
- ``text_input`` gets ``end_sym`` (``"\\n"``) appended and is tokenised without special tokens, right-padded
  with ``pad = eos``; its first ``prompts_len`` tokens are the prompt (EasyEdit counts them with
  ``add_special_tokens=False`` for MiniGPT-4), the rest (answer and ``"\\n"``) are the answer.

A text-only batch (``image=None``) is just ``[text_input + "\\n"] [padding]``: no BOS, no template.
The BOS and the template are neither image, prompt nor answer tokens (see ``span_layout``).

The layout follows the forward's own loss mask, quirks included: EasyEdit's ``VQADataset`` counts
``prompts_len`` on ``"Question: {} Short answer: "`` with its trailing space, which LLaMA's tokenizer encodes
as one extra ``"▁"`` token that ``text_input`` does not have (there the space joins the answer's first word),
so on those batches the first answer token counts as prompt, for the forward's loss and here alike. LiveEdit's
trainer renders questions as the editor does by default (``questions.py``), without that space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..liveedit.backbone import BackboneAdapter, TokenLayout, span_layout

# The template MiniGPT4.forward hard-codes around the image (tests check the wheel still says exactly this).
VQA_PROMPT = "###Human: <Img><ImageHere></Img> "
IMAGE_SLOT = "<ImageHere>"


class MiniGPT4Adapter(BackboneAdapter):
    """``easyeditor.trainer.blip2_models.mini_gpt4.MiniGPT4`` (MiniGPT-4 on Vicuna / LLaMA)."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.llama_model.model.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.llama_model

    def hidden_size(self, model: nn.Module) -> int:
        return model.llama_model.config.hidden_size

    def tokenizer(self, model: nn.Module) -> Any:
        return model.llama_tokenizer

    def prompts_len(self, model: nn.Module, prompts: list[str]) -> list[int]:
        # EasyEdit's datasets and prepare_multimodal_edit count MiniGPT-4 prompts without special tokens.
        tok = model.llama_tokenizer
        return [len(tok.encode(prompt, add_special_tokens=False)) for prompt in prompts]

    def template_lengths(self, model: nn.Module) -> tuple[int, int]:
        """Tokens of the template before and after the image slot, tokenised as ``prompt_wrap`` does."""
        before, after = VQA_PROMPT.split(IMAGE_SLOT)
        tok = model.llama_tokenizer
        return (
            len(tok(before, add_special_tokens=False).input_ids),
            len(tok(after, add_special_tokens=False).input_ids),
        )

    def layout(self, model: nn.Module, samples: dict[str, Any], attention_mask: Tensor) -> TokenLayout:
        if samples.get("image") is None:  # forward's text-only branch: the text alone
            return span_layout(attention_mask, 0, 0, 0, samples["prompts_len"])
        n_before, n_after = self.template_lengths(model)
        n_image = model.query_tokens.shape[1]  # one LLaMA token per Q-Former query
        image_start = 1 + n_before  # after the BOS and the template's head
        text_start = image_start + n_image + n_after
        return span_layout(attention_mask, image_start, n_image, text_start, samples["prompts_len"])

    def prompt_embeddings(self, model: nn.Module, samples: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # The construction of MiniGPT4.forward, with the model's own encode_img / prompt_wrap, minus end_sym and
        # answer (the wheel's MiniGPT4 generates only through predict_answers, which wraps no template).
        tok = model.llama_tokenizer
        embed = model.llama_model.model.embed_tokens
        device = model.llama_model.device
        tokens = tok(samples["text_input"], return_tensors="pt", padding="longest", add_special_tokens=False)
        tokens = tokens.to(device)
        embeds = embed(tokens.input_ids)  # (B, T_text, d)
        mask = tokens.attention_mask
        image = samples.get("image")
        if image is not None:
            image_embeds, image_atts = model.encode_img(image)  # (B, n_query, d)
            wrapped, wrapped_atts = model.prompt_wrap(image_embeds, image_atts, VQA_PROMPT)
            bos = torch.full((image.shape[0], 1), tok.bos_token_id, dtype=torch.long, device=device)
            embeds = torch.cat([embed(bos), wrapped.to(embeds.dtype), embeds], dim=1)
            mask = torch.cat([wrapped_atts[:, :1], wrapped_atts, mask], dim=1)
        return embeds, mask
