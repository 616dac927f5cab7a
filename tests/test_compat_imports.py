"""Each import fix (``easyedit/compat/imports.py``) has two tests: it still works, and it is still needed (remove the
fix when the second fails)."""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TARGET

import easyedit_liveedit  # noqa: F401  (applies the import fixes)
from easyedit_liveedit.easyedit.compat import imports


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# 1. torchvision beside the CPU torch
def test_torchvision_import_still_fails_without_the_shim():
    result = _python("import torchvision")
    assert result.returncode != 0
    assert "torchvision::nms does not exist" in result.stderr


def test_torchvision_imports_and_transforms_work_with_the_shim():
    assert imports.apply()["torchvision_ops_declared"] is True
    from torchvision import transforms

    image = torch.rand(3, 8, 8)
    assert transforms.Resize((4, 4), antialias=True)(image).shape == (3, 4, 4)


# 2. Q-Former helpers moved to transformers.pytorch_utils
def test_qformer_helpers_still_missing_from_modeling_utils():
    """Needed on the wheel, whose Q-Former imports them from ``modeling_utils``; EasyEdit main's imports them from
    ``pytorch_utils`` (nothing restored there)."""
    # Read the source rather than importing it: importing transformers.modeling_utils pulls in torchvision.
    source = Path(importlib.util.find_spec("transformers.modeling_utils").origin).read_text()
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        assert not re.search(rf"\b{name}\b", source), f"transformers.modeling_utils has {name} again"
    restored = imports.apply()["transformers_helpers_restored"]
    assert restored == (list(imports._MOVED_TO_PYTORCH_UTILS) if TARGET == "wheel" else [])


def test_easyeditor_qformer_imports_with_the_moved_helpers():
    qformer = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    import transformers.pytorch_utils as pytorch_utils

    assert qformer.apply_chunking_to_forward is pytorch_utils.apply_chunking_to_forward


# 4. EasyEdit's Q-Former on transformers 5: post_init never called, get_head_mask removed
def _tiny_qformer_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8)


def test_qformer_fix_is_applied_exactly_where_transformers_needs_it():
    """Needed on EasyEdit main's stack (transformers 5); nothing to do on the wheel's (transformers 4)."""
    assert imports.apply()["qformer_transformers5"] == (["post_init", "get_head_mask"] if TARGET == "main" else [])


def test_qformer_still_fails_to_build_and_run_without_the_fix(monkeypatch):
    qformer = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    if TARGET == "wheel":  # transformers 4: the Q-Former builds and runs on its own
        assert "init_weights" not in vars(qformer.BertPreTrainedModel)
        model = qformer.BertModel(_tiny_qformer_config(), add_pooling_layer=False)
        assert model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state.shape == (1, 3, 8)
        return
    monkeypatch.delattr(qformer.BertPreTrainedModel, "init_weights")
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        qformer.BertModel(_tiny_qformer_config(), add_pooling_layer=False)
    monkeypatch.undo()
    model = qformer.BertModel(_tiny_qformer_config(), add_pooling_layer=False)
    monkeypatch.delattr(qformer.BertPreTrainedModel, "get_head_mask")
    with pytest.raises(AttributeError, match="get_head_mask"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_qformer_builds_loads_and_runs_with_the_fix(tmp_path):
    """``from_pretrained`` (what ``Blip2Base.init_Qformer`` calls) round-trips the weights, and the forward runs."""
    from safetensors.torch import save_file

    qformer = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    model = qformer.BertLMHeadModel(_tiny_qformer_config()).eval()
    model.config.save_pretrained(tmp_path)  # untied copies: EasyEdit's class declares no tied weights to save
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = qformer.BertLMHeadModel.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(
        loaded.bert(input_ids=ids).last_hidden_state, model.bert(input_ids=ids).last_hidden_state
    )


# 5. EasyEdit's copied OPT, LLaMA and Q-Former re-draw the weights transformers 5's from_pretrained loaded
def _round_trip_mismatches(module_name: str, tmp_path) -> list[str]:
    """Weights of a tiny EasyEdit copy that differ after ``save_pretrained`` + ``from_pretrained``."""
    from transformers import LlamaConfig, OPTConfig

    module = importlib.import_module(f"easyeditor.trainer.blip2_models.{module_name}")
    if module_name == "modeling_opt":
        config = OPTConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, ffn_dim=16, num_attention_heads=2,
                           max_position_embeddings=32, word_embed_proj_dim=8, tie_word_embeddings=False)  # fmt: skip
        cls = module.OPTForCausalLM
    else:
        config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=32)  # fmt: skip
        cls = module.LlamaForCausalLM
    model = cls(config)
    model.save_pretrained(tmp_path / module_name)
    loaded = cls.from_pretrained(tmp_path / module_name).state_dict()
    return [name for name, tensor in model.state_dict().items() if not torch.equal(loaded[name], tensor)]


def test_copied_models_keep_the_weights_they_load(tmp_path):
    """With the fix (applied on import), the loaded copies equal the saved ones, on either stack."""
    for module_name in ("modeling_opt", "modeling_llama"):
        assert _round_trip_mismatches(module_name, tmp_path) == [], module_name


def test_copied_models_still_redraw_loaded_weights_without_the_fix(tmp_path, monkeypatch):
    """Needed on EasyEdit main's stack (transformers 5): without the fix every Linear and Embedding weight comes out
    of ``from_pretrained`` re-drawn at random; on the wheel's stack the fix is not applied and nothing is lost."""
    wrapped = imports.apply()["loaded_weights_kept"]
    assert wrapped == (["BertPreTrainedModel", "OPTPreTrainedModel", "LlamaPreTrainedModel"] if TARGET == "main"
                       else [])  # fmt: skip
    if TARGET == "wheel":
        return
    opt = importlib.import_module("easyeditor.trainer.blip2_models.modeling_opt").OPTPreTrainedModel
    monkeypatch.setattr(opt, "_init_weights", opt._init_weights.__wrapped__)
    lost = _round_trip_mismatches("modeling_opt", tmp_path)
    assert "model.decoder.layers.0.fc1.weight" in lost and "lm_head.weight" in lost


# 6. The rotary caches of EasyEdit's LLaMA copy (MiniGPT-4), left uninitialised by transformers 5's from_pretrained
def _tiny_llama(tmp_path):
    llama = importlib.import_module("easyeditor.trainer.blip2_models.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)  # fmt: skip
    llama.LlamaForCausalLM(config).save_pretrained(tmp_path)
    return llama


def test_rotary_caches_come_out_of_from_pretrained_wrong_only_on_transformers5(tmp_path):
    """Needed on EasyEdit main's stack: ``from_pretrained`` leaves the caches unlike ``__init__``'s (the check the fix
    makes finds them stale); on the wheel's stack they are right and the fix leaves them alone."""
    llama = _tiny_llama(tmp_path)
    rotary = llama.LlamaForCausalLM.from_pretrained(tmp_path).model.layers[0].self_attn.rotary_emb
    assert imports._rebuild_rotary_caches(rotary) == (TARGET == "main")
    assert imports._rebuild_rotary_caches(rotary) is False  # rebuilt (or right) once: nothing left to do


def test_llama_from_pretrained_answers_as_the_model_that_was_saved(tmp_path):
    """With the fix (applied on import), the loaded copy's logits equal the saved model's, on either stack."""
    llama = _tiny_llama(tmp_path)
    ids = torch.tensor([[1, 5, 7, 2]])
    fresh = llama.LlamaForCausalLM.from_pretrained(tmp_path)
    saved = llama.LlamaForCausalLM(fresh.config)
    saved.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, saved(input_ids=ids).logits)


# 7. easyeditor.util shadowed by a star import
def test_a_method_package_still_exports_a_util_module():
    """The wheel's ``easyeditor.models.ike`` and EasyEdit main's ``easyeditor.models.melo`` export a ``util`` module,
    which ``easyeditor/__init__``'s star imports bind over ``easyeditor.util``."""
    shadowing = importlib.import_module("easyeditor.models.ike" if TARGET == "wheel" else "easyeditor.models.melo")
    assert shadowing.util is not sys.modules["easyeditor.util"]
    assert imports.apply()["easyeditor_util_unshadowed"] is True


def test_easyeditor_util_alg_dict_imports_after_the_plugin():
    """The README's command: LiveEdit beside the target's own multimodal editors."""
    result = _python("import easyedit_liveedit, easyeditor.util.alg_dict as d; print(sorted(d.ALG_MULTIMODAL_DICT))")
    assert result.returncode == 0, result.stderr
    expected = {
        "wheel": "['IKE', 'LiveEdit', 'MEND', 'SERAC', 'SERAC_MULTI']",
        "main": "['GRACE', 'IKE', 'LiveEdit', 'LoRA', 'MEND', 'SERAC', 'SERAC_MULTI', 'WISE']",
    }
    assert expected[TARGET] in result.stdout


def test_apply_is_idempotent():
    assert imports.apply() is imports.apply()
