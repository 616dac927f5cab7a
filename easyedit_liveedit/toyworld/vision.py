"""A small vision transformer that stands in for EasyEdit's hard-coded EVA ViT-g inside ``Blip2OPT``.

``build_vision_tower`` has ``create_eva_vit_g``'s signature and contract (tokens out, a ``num_features``
attribute, weights read from ``state_dict_file``), so ``easyedit_shims.vision_tower_builder(build_vision_tower)`` is
all ``Blip2Base.init_vision_encoder`` needs. Its shape comes from ``config.json`` next to the weights file,
since EasyEdit's call passes no size but the (ignored) 364-pixel ``img_size``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

LOG = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class VisionConfig:
    """Shape of the toy ViT."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> VisionConfig:
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path}: the toy vision tower's config is missing (build the toy world first)")
        return cls(**json.loads(path.read_text()))


class ToyViT(nn.Module):
    """Patch embedding, class token, pre-norm transformer blocks; returns every token, like EVA's ViT."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_features = config.width  # Blip2Base reads this for ln_vision and the Q-Former's encoder_width
        n_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, config.width) * 0.02)
        block = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            4 * config.width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(image).flatten(2).transpose(1, 2)  # (B, N, d)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, d)
        tokens = torch.cat([cls, patches], dim=1) + self.pos_embed  # (B, N+1, d)
        return self.norm(self.blocks(tokens))


def build_vision_tower(
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    use_checkpoint: bool = False,
    precision: str = "fp32",
    state_dict_file: str | None = None,
) -> ToyViT:
    """``create_eva_vit_g``'s replacement: a ToyViT shaped by the config next to ``state_dict_file``.

    ``img_size`` (EasyEdit passes 364), ``drop_path_rate``, ``use_checkpoint`` and ``precision`` are accepted
    for signature compatibility and ignored: the toy tower is fp32, has no drop-path and is tiny. The weights
    are loaded from ``state_dict_file`` when that file exists (a fresh tower is built before pretraining).
    """
    if not state_dict_file:
        raise ValueError("state_dict_file: the toy vision tower needs the path of its weights (hparams key)")
    path = Path(state_dict_file)
    model = ToyViT(VisionConfig.load(path.parent))
    if path.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))
    else:
        LOG.info("no weights at %s: the toy vision tower starts from random initialisation", path)
    return model
