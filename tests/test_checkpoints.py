"""The vision-language glue of EasyEdit's BLIP-2 and MiniGPT-4 (``easyedit/checkpoints.py``): loaded from LAVIS-format
checkpoints written from tiny real-architecture models, or refused with an error naming the hparams key."""

from __future__ import annotations

import importlib
import inspect
from types import SimpleNamespace

import pytest
import torch

from easyedit_liveedit import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams, MultimodalEditor
from easyedit_liveedit.bench import tiny_backbones as tiny
from easyedit_liveedit.easyedit import compat
from easyedit_liveedit.easyedit.checkpoints import load_glue
from easyedit_liveedit.easyedit.models import build_backbone
from easyedit_liveedit.toyworld.easyedit_shims import image_processor_size, vision_tower_builder
from easyedit_liveedit.toyworld.vision import build_vision_tower


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """A tiny BLIP-2-OPT's files and a LAVIS checkpoint of the glue of one seeded build (the "released" weights)."""
    root = tmp_path_factory.mktemp("blip2")
    layout = tiny.blip2_files(root / "files")
    torch.manual_seed(123)
    released = tiny.build_blip2(layout)
    path = tiny.write_lavis_checkpoint(released, root / "blip2_pretrained_opt_tiny.pth")
    return SimpleNamespace(layout=layout, checkpoint=path, state=torch.load(path)["model"], root=root)


def fresh_blip2(blip2, seed: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny.build_blip2(blip2.layout)


def hparams_for(model_name: str = "blip2", **values):
    return SimpleNamespace(model_name=model_name, source="test.yaml", **values)


def test_the_wheel_loads_neither_blip2_checkpoint_nor_minigpt4_pretrained_ckpt():
    """Why ``load_glue`` exists: the wheel's constructors take no such argument (EasyEdit main's do)."""
    blip2_opt = importlib.import_module("easyeditor.trainer.blip2_models.blip2_opt").Blip2OPT
    mini_gpt4 = importlib.import_module("easyeditor.trainer.blip2_models.mini_gpt4").MiniGPT4
    assert "qformer_checkpoint" not in inspect.signature(blip2_opt.__init__).parameters
    assert "pretrained_ckpt" not in inspect.signature(mini_gpt4.__init__).parameters


def test_blip2_glue_equals_the_lavis_checkpoint_and_nothing_else_changes(blip2):
    model = fresh_blip2(blip2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(model.opt_proj.weight, blip2.state["opt_proj.weight"])  # random before
    report = load_glue(model, hparams_for(qformer_checkpoint=str(blip2.checkpoint)))
    after = model.state_dict()
    assert report.loaded == {"qformer_checkpoint": len(blip2.state)}
    assert {k.split(".")[0] for k in blip2.state} == {"query_tokens", "Qformer", "ln_vision", "opt_proj"}
    for name, tensor in blip2.state.items():
        assert torch.equal(after[name], tensor), name
    untouched = [k for k in after if k not in blip2.state]
    assert untouched and all(k.startswith(("visual_encoder.", "opt_model.")) for k in untouched)
    for name in untouched:
        assert torch.equal(after[name], before[name]), name


def test_a_model_already_holding_the_checkpoint_is_left_alone(blip2):
    """The behaviour EasyEdit main has (it loads the checkpoint itself): then nothing is written again."""
    model = fresh_blip2(blip2)
    hparams = hparams_for(qformer_checkpoint=str(blip2.checkpoint))
    load_glue(model, hparams)
    versions = {name: p._version for name, p in model.named_parameters()}
    report = load_glue(model, hparams)
    assert report.already == ["qformer_checkpoint"] and report.loaded == {}
    assert versions == {name: p._version for name, p in model.named_parameters()}


def test_glue_is_loaded_in_the_models_own_dtype(blip2):
    model = fresh_blip2(blip2)
    model.opt_proj.half()
    load_glue(model, hparams_for(qformer_checkpoint=str(blip2.checkpoint)))
    assert model.opt_proj.weight.dtype == torch.float16
    assert torch.equal(model.opt_proj.weight, blip2.state["opt_proj.weight"].half())


@pytest.mark.parametrize("value", [None, "missing attribute"])
def test_no_checkpoint_is_refused_naming_the_key(blip2, value):
    model = fresh_blip2(blip2)
    hparams = hparams_for() if value == "missing attribute" else hparams_for(qformer_checkpoint=None)
    with pytest.raises(
        ValueError, match=r"test.yaml: key 'qformer_checkpoint' is (null|missing).*randomly initialised"
    ):
        load_glue(model, hparams)


def test_a_missing_file_is_refused_naming_the_key(blip2, tmp_path):
    with pytest.raises(FileNotFoundError, match="key 'qformer_checkpoint' points to .*nothere.pth"):
        load_glue(fresh_blip2(blip2), hparams_for(qformer_checkpoint=str(tmp_path / "nothere.pth")))


def test_a_checkpoint_without_the_projection_is_refused_and_the_model_is_unchanged(blip2, tmp_path):
    partial = {k: v for k, v in blip2.state.items() if not k.startswith("opt_proj")}
    path = tmp_path / "partial.pth"
    torch.save({"model": partial}, path)
    model = fresh_blip2(blip2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"key 'qformer_checkpoint': .*partial.pth lacks 2 .*opt_proj.bias"):
        load_glue(model, hparams_for(qformer_checkpoint=str(path)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_checkpoint_of_another_size_is_refused_naming_the_tensor(blip2, tmp_path):
    state = dict(blip2.state, **{"opt_proj.weight": torch.zeros(2560, 64)})
    path = tmp_path / "big.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"holds opt_proj.weight of shape \(2560, 64\)"):
        load_glue(fresh_blip2(blip2), hparams_for(qformer_checkpoint=str(path)))


def test_a_file_that_is_not_lavis_format_is_refused(blip2, tmp_path):
    path = tmp_path / "flat.pth"
    torch.save(dict(blip2.state), path)  # a bare state dict, without {"model": ...}
    with pytest.raises(ValueError, match=r"key 'qformer_checkpoint': .*flat.pth is not a LAVIS-style checkpoint"):
        load_glue(fresh_blip2(blip2), hparams_for(qformer_checkpoint=str(path)))


def test_minigpt4_loads_llama_proj_and_checks_what_the_wheel_loaded(blip2, tmp_path):
    """MiniGPT-4's two files: the BLIP-2 (FlanT5) Q-Former checkpoint, which the wheel loads itself (its t5_proj has no
    place in MiniGPT-4), and MiniGPT-4's own projection, which it does not."""
    released = fresh_blip2(blip2, seed=5)
    qformer = tiny.write_lavis_checkpoint(released, tmp_path / "flant5.pth", "minigpt4",
                                          **{"t5_proj.weight": torch.zeros(3, 3)})  # fmt: skip
    torch.manual_seed(11)
    source = tiny.build_minigpt4(tmp_path / "source", blip2.layout, qformer)
    projection = tiny.write_minigpt4_checkpoint(source, tmp_path / "pretrained_minigpt4.pth")
    expected = torch.load(projection)["model"]
    torch.manual_seed(12)
    model = tiny.build_minigpt4(tmp_path / "model", blip2.layout, qformer)
    assert not torch.equal(model.llama_proj.weight, expected["llama_proj.weight"])
    report = load_glue(
        model, hparams_for("minigpt4", qformer_checkpoint=str(qformer), pretrained_ckpt=str(projection))
    )
    assert report.already == ["qformer_checkpoint"] and report.loaded == {"pretrained_ckpt": 2}
    assert report.ignored == {"qformer_checkpoint": 1, "pretrained_ckpt": 0}
    assert torch.equal(model.llama_proj.weight, expected["llama_proj.weight"])
    assert torch.equal(model.query_tokens, released.query_tokens)
    with pytest.raises(ValueError, match="key 'pretrained_ckpt' is null"):
        load_glue(model, hparams_for("minigpt4", qformer_checkpoint=str(qformer), pretrained_ckpt=None))


def test_a_qformer_file_the_wheel_silently_skips_is_refused(blip2, tmp_path):
    """The wheel's MiniGPT4 loads its Q-Former checkpoint non-strictly: a file with other key names loads nothing."""
    state = torch.load(blip2.checkpoint)["model"]
    renamed = tmp_path / "renamed.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, renamed)
    model = tiny.build_minigpt4(tmp_path / "model", blip2.layout, renamed)
    projection = tiny.write_minigpt4_checkpoint(model, tmp_path / "proj.pth")
    with pytest.raises(ValueError, match=r"key 'qformer_checkpoint': .*renamed.pth lacks .* glue parameters"):
        load_glue(model, hparams_for("minigpt4", qformer_checkpoint=str(renamed), pretrained_ckpt=str(projection)))


def test_the_toy_worlds_full_checkpoint_counts_as_loaded(small_world):
    """The toy world's shim loads its full safetensors checkpoint while EasyEdit builds; ``load_glue`` sees that."""
    hparams = hparams_for(qformer_checkpoint=str(small_world.layout.checkpoint))
    assert load_glue(small_world.load_model(), hparams).already == ["qformer_checkpoint"]


def liveedit_values(blip2, **overrides):
    layout = blip2.layout
    values = dict(
        name=str(layout.opt), model_name="blip2", model_class="Blip2OPT", tokenizer_class="GPT2Tokenizer",
        tokenizer_name=str(layout.opt), qformer_name_or_path=str(layout.qformer),
        state_dict_file=str(layout.vision_weights), qformer_checkpoint=str(blip2.checkpoint), device=0, edit_layer=1,
        cross_attn_dim=16, num_heads=2, num_sentinel_tokens=4, archive=None,
    )  # fmt: skip
    values.update(overrides)
    return values


def test_the_plugins_editor_builds_blip2_with_its_checkpoint(blip2):
    hparams = LiveEditMultimodalHparams.from_dict({"alg_name": "LiveEdit", **liveedit_values(blip2)})
    with vision_tower_builder(build_vision_tower), image_processor_size(16):
        editor = MultimodalEditor(hparams)
    state = editor.model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in blip2.state.items())
    hparams.qformer_checkpoint = None
    with vision_tower_builder(build_vision_tower), image_processor_size(16):
        with pytest.raises(ValueError, match="key 'qformer_checkpoint' is null"):
            MultimodalEditor(hparams)


def test_the_trainers_backbone_has_its_checkpoint(blip2):
    hparams = LiveEditMultimodalTrainingHparams.from_dict({"alg": "LiveEdit", **liveedit_values(blip2)})
    with vision_tower_builder(build_vision_tower), compat.cuda_to_cpu():
        model = build_backbone(hparams)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in blip2.state.items())
