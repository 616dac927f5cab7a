"""EasyEdit's ``Blip2OPT``: Q-Former query tokens prepended to the OPT input, then prompt and answer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..liveedit.backbone import BackboneAdapter, TokenLayout, prefix_layout


class Blip2OPTAdapter(BackboneAdapter):
    """``easyeditor.trainer.blip2_models.Blip2OPT`` (BLIP-2-OPT and the toy world's backbone)."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.opt_model.model.decoder.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.opt_model

    def hidden_size(self, model: nn.Module) -> int:
        return model.opt_model.config.hidden_size

    def layout(self, model: nn.Module, samples: dict[str, Any], attention_mask: Tensor) -> TokenLayout:
        # Blip2OPT.forward: inputs_embeds = [opt_proj(Q-Former queries) | tokens of text_input]; it masks
        # the first prompts_len text tokens out of the loss, so those are the prompt.
        num_image_tokens = model.query_tokens.shape[1] if samples.get("image") is not None else 0
        return prefix_layout(attention_mask, num_image_tokens, samples["prompts_len"])

    def tokenizer(self, model: nn.Module) -> Any:
        return model.opt_tokenizer

    def prompt_embeddings(self, model: nn.Module, samples: dict[str, Any]) -> tuple[Tensor, Tensor]:
        # The same construction as Blip2OPT.forward (the wheel's Blip2OPT has no generate()).
        tokens = model.opt_tokenizer(samples["text_input"], return_tensors="pt", padding="longest")
        tokens = tokens.to(model.opt_model.device)
        embeds = model.opt_model.model.decoder.embed_tokens(tokens.input_ids)  # (B, T_text, d)
        mask = tokens.attention_mask
        image = samples.get("image")
        if image is not None:
            image_embeds = model.ln_vision(model.visual_encoder(image))  # (B, patches, d_vit)
            queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image.device)
            query_output = model.Qformer.bert(
                query_embeds=queries,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_atts,
                return_dict=True,
            )
            image_tokens = model.opt_proj(query_output.last_hidden_state).to(embeds.dtype)  # (B, n_query, d)
            embeds = torch.cat([image_tokens, embeds], dim=1)
            mask = torch.cat([torch.ones(image_tokens.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
        return embeds, mask
