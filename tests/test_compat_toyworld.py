"""The toy world's EasyEdit shims (``toyworld/easyedit_shims.py``): the EVA ViT-g builder, the image processor size
and the Blip2OPT checkpoint, each still working and still needed, on the small toy world."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from easyedit_liveedit import toyworld
from easyedit_liveedit.toyworld import backbone
from easyedit_liveedit.toyworld import easyedit_shims as shims


def test_easyedit_still_hard_codes_364_pixels():
    """The reason for the image-size shim: if EasyEdit stops hard-coding the size, the shim is no longer needed."""
    for name in shims._MODULES_WITH_IMAGE_PROCESSOR:
        assert "image_size=364" in inspect.getsource(importlib.import_module(name))


def test_image_processor_size_applies_inside_the_context_only():
    vqa = importlib.import_module("easyeditor.dataset.vqa")
    original = vqa.BlipImageEvalProcessor
    image = Image.new("RGB", (50, 40), "white")
    with shims.image_processor_size(24):
        for name in shims._MODULES_WITH_IMAGE_PROCESSOR:
            processor = importlib.import_module(name).BlipImageEvalProcessor(image_size=364, mean=None, std=None)
            assert processor(image).shape == (3, 24, 24)
    assert vqa.BlipImageEvalProcessor is original
    assert original(image_size=364)(image).shape == (3, 364, 364)


def test_image_processor_size_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size must be a positive int"):
        with shims.image_processor_size(0):
            pass


def wheel_blip2opt(layout: toyworld.Layout) -> torch.nn.Module:
    """The wheel's Blip2OPT on the toy world's files, given no ``num_query_token`` (EasyEdit's editor gives none)."""
    blip2_opt = importlib.import_module("easyeditor.trainer.blip2_models.blip2_opt").Blip2OPT
    return blip2_opt(
        vit_model="eva_clip_g",
        img_size=364,
        freeze_vit=True,
        opt_model=str(layout.opt),
        state_dict_file=str(layout.vision_weights),
        qformer_name_or_path=str(layout.qformer),
    )


def test_wheel_blip2opt_does_not_load_the_checkpoint(small_world):
    """The reason for section 8: without it EasyEdit's constructor leaves 32 random query tokens."""
    with shims.vision_tower_builder(backbone.build_vision_tower):
        model = wheel_blip2opt(small_world.layout)
    assert model.query_tokens.shape[1] == 32
    assert model.opt_model.dtype == torch.float16


def test_blip2_checkpoint_loads_every_tensor_exactly(small_world):
    layout = small_world.layout
    blip2_opt = importlib.import_module("easyeditor.trainer.blip2_models.blip2_opt").Blip2OPT
    original_init = blip2_opt.__init__
    with shims.vision_tower_builder(backbone.build_vision_tower), shims.blip2_checkpoint(layout.checkpoint):
        model = wheel_blip2opt(layout)
    assert blip2_opt.__init__ is original_init
    saved = load_file(str(layout.checkpoint))
    assert model.query_tokens.shape[1] == small_world.config.num_query_tokens
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
        assert state[name].dtype == tensor.dtype == (torch.float32 if tensor.is_floating_point() else torch.int64)


def test_blip2_checkpoint_requires_an_existing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        with shims.blip2_checkpoint(tmp_path / "missing.safetensors"):
            pass


def test_blip2_still_builds_eva_vit_g():
    blip2 = importlib.import_module("easyeditor.trainer.blip2_models.blip2")
    assert blip2.create_eva_vit_g.__module__.endswith("eva_vit")


def test_vision_tower_builder_replaces_eva_for_init_vision_encoder():
    blip2 = importlib.import_module("easyeditor.trainer.blip2_models.blip2")
    seen = {}

    def tiny_tower(img_size, drop_path_rate, use_grad_checkpoint, precision, state_dict_file):
        seen["img_size"] = img_size
        tower = torch.nn.Linear(4, 4)
        tower.num_features = 4
        return tower

    original = blip2.create_eva_vit_g
    with shims.vision_tower_builder(tiny_tower):
        tower, ln_vision = blip2.Blip2Base.init_vision_encoder("eva_clip_g", 364, 0, False, "fp32", None)
    assert seen == {"img_size": 364}
    assert tower.num_features == 4 and ln_vision.normalized_shape == (4,)
    assert blip2.create_eva_vit_g is original
