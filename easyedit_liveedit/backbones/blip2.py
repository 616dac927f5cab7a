"""EasyEdit's ``Blip2OPT``: Q-Former query tokens prepended to the OPT input, then prompt and answer."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import BackboneAdapter, TokenLayout, prefix_layout


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
