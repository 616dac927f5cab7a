"""Each shim in compat.py has two tests: it still works, and it is still needed (remove it when that fails)."""

import importlib
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import BatchEncoding

import easyedit_liveedit  # noqa: F401  (applies the shims)
from easyedit_liveedit import compat


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# 1. torchvision beside the CPU torch
def test_torchvision_import_still_fails_without_the_shim():
    result = _python("import torchvision")
    assert result.returncode != 0
    assert "torchvision::nms does not exist" in result.stderr


def test_torchvision_imports_and_transforms_work_with_the_shim():
    assert compat.apply()["torchvision_ops_declared"] is True
    from torchvision import transforms

    image = torch.rand(3, 8, 8)
    assert transforms.Resize((4, 4), antialias=True)(image).shape == (3, 4, 4)


# 2. Q-Former helpers moved to transformers.pytorch_utils
def test_qformer_helpers_still_missing_from_modeling_utils():
    # Read the source rather than importing it: importing transformers.modeling_utils pulls in torchvision.
    source = Path(importlib.util.find_spec("transformers.modeling_utils").origin).read_text()
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        assert not re.search(rf"\b{name}\b", source), f"transformers.modeling_utils has {name} again"


def test_easyeditor_qformer_imports_with_the_moved_helpers():
    qformer = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    import transformers.pytorch_utils as pytorch_utils

    assert qformer.apply_chunking_to_forward is pytorch_utils.apply_chunking_to_forward


# 3. cuda:{device} hard-coded in EasyEdit
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_device_still_fails_on_this_machine():
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to("cuda:0")
    with pytest.raises(RuntimeError):  # EasyEdit's `device: 0`
        torch.zeros(1).to(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_to_cpu_redirects_every_way_easyeditor_names_cuda():
    evaluate_utils = importlib.import_module("easyeditor.evaluate.evaluate_utils")
    with compat.cuda_to_cpu():
        layer = torch.nn.Linear(2, 2).to("cuda:0")
        made = torch.zeros(2).to(device=torch.device("cuda:0"))
        moved = torch.ones(2).cuda()
        module_cuda = torch.nn.Linear(2, 2).cuda()
        encoded = BatchEncoding({"input_ids": torch.ones(1, 2)}).to("cuda:0")  # SERAC's tokenizer(...).to(device)
        positional = torch.ones(2).to("cuda:1", torch.float16)
        index = torch.ones(2).to(0)
        keyword_index = torch.ones(2).to(device=0)
        module_index = torch.nn.Linear(2, 2).to(0)
        assert torch.ones(2).to(torch.float64).dtype == torch.float64  # dtypes pass through
    moved_tensors = (layer.weight, made, moved, positional, index, keyword_index, module_index.weight,
                     module_cuda.weight, encoded["input_ids"])  # fmt: skip
    assert {t.device.type for t in moved_tensors} == {"cpu"}
    assert positional.dtype == torch.float16
    # Outside the context, nothing is redirected, and torch's own methods are back.
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to("cuda:0")
    assert "to" not in torch.Tensor.__dict__ and "cuda" not in torch.Tensor.__dict__
    assert torch.nn.Module.to.__name__ == "to" and not hasattr(torch.nn.Module.to, "__wrapped__")
    # And EasyEdit's own helpers that hard-code f"cuda:{device}" get through it.
    assert "cuda:{device}" in open(evaluate_utils.__file__).read()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_to_cpu_nests_and_restores_on_the_outermost_exit():
    with compat.cuda_to_cpu():
        with compat.cuda_to_cpu():
            pass
        assert torch.ones(1).to(0).device.type == "cpu"  # still active after the inner context ended
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to(0)


# 4. The hard-coded EVA ViT-g
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
    with compat.vision_tower_builder(tiny_tower):
        tower, ln_vision = blip2.Blip2Base.init_vision_encoder("eva_clip_g", 364, 0, False, "fp32", None)
    assert seen == {"img_size": 364}
    assert tower.num_features == 4 and ln_vision.normalized_shape == (4,)
    assert blip2.create_eva_vit_g is original


# 5. model_parallel missing from the wheel's multimodal training hparams
def test_training_hparams_still_lack_model_parallel_field():
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    for name in ("MENDMultimodalTrainingHparams", "SERACMultimodalTrainingHparams"):
        assert "model_parallel" not in getattr(training_hparams, name).__dataclass_fields__


def test_training_hparams_default_model_parallel_to_false():
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    assert training_hparams.MENDMultimodalTrainingHparams.model_parallel is False
    assert compat.apply()["model_parallel_defaulted"] == [
        "MENDMultimodalTrainingHparams",
        "SERACMultimodalTrainingHparams",
    ]


# 6. easyeditor.util shadowed by a star import
def test_ike_package_still_exports_a_util_module():
    ike = importlib.import_module("easyeditor.models.ike")
    assert ike.util is not sys.modules["easyeditor.util"]
    assert compat.apply()["easyeditor_util_unshadowed"] is True


def test_easyeditor_util_alg_dict_imports_after_the_plugin():
    result = _python("import easyedit_liveedit, easyeditor.util.alg_dict as d; print(sorted(d.ALG_MULTIMODAL_DICT))")
    assert result.returncode == 0, result.stderr
    assert "['IKE', 'LiveEdit', 'MEND', 'SERAC', 'SERAC_MULTI']" in result.stdout


def test_apply_is_idempotent():
    assert compat.apply() is compat.apply()


# 9. MEND's multimodal executor passes label strings
def test_mend_executor_still_builds_label_strings():
    import inspect

    mend_main = importlib.import_module("easyeditor.models.mend.mend_main")
    source = inspect.getsource(mend_main.MendMultimodalRewriteExecutor.apply_to_model)
    assert "labels = trg" in source


def test_mend_edit_gets_right_aligned_token_id_labels_from_strings(small_world):
    mend = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    assert compat.apply()["mend_label_strings_converted"] is True
    assert mend.edit.__wrapped__ is not None  # EasyEdit's MEND.edit is wrapped once

    class Recorder:  # stands in for MEND: the wrapper reads `.model` and hands the batch on
        model = small_world.load_model()

        def edit(self, batch, condition=None):
            self.seen = batch
            return "edited"

    assert compat._mend_label_strings_to_ids(Recorder) is True
    assert compat._mend_label_strings_to_ids(Recorder) is False  # idempotent
    tok = small_world.tokenizer()
    recorder = Recorder()
    assert recorder.edit({"labels": [" seven", " nine two"], "text_input": ["a", "b"]}) == "edited"
    labels = recorder.seen["labels"]
    seven, nine_two = (tok(t, add_special_tokens=False).input_ids for t in (" seven", " nine two"))
    assert labels.shape == (2, len(nine_two))
    assert labels[1].tolist() == nine_two
    assert labels[0].tolist() == [-100] * (len(nine_two) - len(seven)) + seven
    tensor_labels = torch.tensor([[5, 6]])
    recorder.edit({"labels": tensor_labels})
    assert recorder.seen["labels"] is tensor_labels  # EasyEdit's trainer batches pass through untouched


# 10. SERAC's multimodal executor keeps only its first (empty-memory) SERAC
def test_serac_executor_still_edits_its_unchanged_serac():
    import inspect

    serac_main = importlib.import_module("easyeditor.models.serac.serac_main")
    source = inspect.getsource(serac_main.SeracMultimodalRewriteExecutor.apply_to_model.__wrapped__)
    assert "self.alg.edit(" in source
    assert "self.alg = " not in source
    executor_source = inspect.getsource(serac_main.SeracMultimodalRewriteExecutor)
    assert "SERAC_MULTI(" in executor_source and ".eval()" not in executor_source  # built in training mode
    serac = importlib.import_module("easyeditor.trainer.algs.SERAC").SERAC_MULTI
    assert "new_model = SERAC_MULTI(" in inspect.getsource(serac.edit)  # every edit builds a new SERAC ...
    assert "self.language_projection = torch.nn.Linear(" in inspect.getsource(serac.__init__)  # ... new projection


def test_serac_executor_keeps_the_serac_it_returns():
    serac_main = importlib.import_module("easyeditor.models.serac.serac_main")
    alg_dict = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
    assert compat.apply()["serac_memory_kept"] is True
    for key in ("SERAC", "SERAC_MULTI"):  # the entries bound at import time call the wrapper
        assert alg_dict[key].__func__ is serac_main.SeracMultimodalRewriteExecutor.apply_to_model

    class Memory(tuple):  # stands in for SERAC_MULTI: its memory, a training flag as nn.Module has, a projection
        training = True
        language_projection = None

        def eval(self):
            self.training = False
            return self

    class Executor:  # EasyEdit's behaviour: every call edits `self.alg` and returns a new object, in training mode,
        def __init__(self):  # with a new projection
            self.alg = Memory()
            self.alg.language_projection = "from the archive"

        def apply_to_model(self, model, tok, requests, hparams, copy=False, return_orig_weights=False,
                           keep_original_weight=False, **kwargs):  # fmt: skip
            edited = Memory(self.alg + tuple(requests))
            edited.language_projection = "fresh random"
            return edited, {}

    executor = Executor()
    table = {"SERAC_MULTI": executor.apply_to_model, "MEND": print}
    assert compat._serac_keeps_its_memory(Executor, table) is True
    assert compat._serac_keeps_its_memory(Executor, table) is False  # idempotent
    assert table["SERAC_MULTI"].__self__ is executor and table["MEND"] is print
    assert table["SERAC_MULTI"](None, None, ["a"], None) == (("a",), {})
    assert executor.apply_to_model(None, None, ["b"], None)[0] == ("a", "b")
    assert executor.apply_to_model(None, None, ["c"], None, False, False, True)[0] == ("a", "b", "c")
    assert executor.alg == ("a", "b")  # keep_original_weight (positional here): the memory was not replaced
    assert not executor.alg.training  # answers in eval mode: no dropout, no autograd in SERAC's forward
    assert executor.alg.language_projection == "from the archive"


# 11. SERAC runs its classifier over the whole memory on every forward
def test_serac_still_encodes_its_whole_memory_on_every_forward():
    import inspect

    serac = importlib.import_module("easyeditor.trainer.algs.SERAC").SERAC_MULTI
    source = inspect.getsource(serac.embedding_logsim_matrix.__wrapped__)
    assert "self.classifier(**cls_ctx_input)" in source  # every remembered text, at every call


def _serac_like(small_world):
    """The attributes ``SERAC_MULTI.embedding_logsim_matrix`` reads, with the toy world's scope classifier."""
    from types import SimpleNamespace

    from transformers import AutoModel, AutoTokenizer

    folder = small_world.scope_classifier()
    config = SimpleNamespace(
        device="cpu", cls_name=str(folder), dist_heads=1, bound_embeds=False, cos=False, square=True
    )
    classifier = AutoModel.from_pretrained(folder).eval()
    return SimpleNamespace(
        classifier=classifier, classifier_tok=AutoTokenizer.from_pretrained(folder), config=config, scale=1.0
    )


def test_serac_encodes_each_remembered_text_once(small_world):
    serac = importlib.import_module("easyeditor.trainer.algs.SERAC").SERAC_MULTI
    assert compat.apply()["serac_memory_encoded_once"] is True  # wrapped at import
    assert compat._serac_encodes_memory_once(serac) is False  # idempotent
    encode = serac.embedding_logsim_matrix
    words = "zero one two three four five six seven eight nine ten eleven".split()
    memory = [f"is this digit a {word}?" for word in words]
    questions = ["which digit is written here?", "what is one plus one?"]
    self = _serac_like(small_world)
    encoded = []
    self.classifier.register_forward_hook(
        lambda module, args, kwargs, out: encoded.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    with torch.no_grad():
        expected = encode.__wrapped__(self, memory, questions)
        encoded.clear()
        first = encode(self, memory, questions)
        again = encode(self, memory + ["one more edit"], questions)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again[:, :-1], expected, rtol=1e-5, atol=1e-5)
    assert isinstance(self.classifier, torch.nn.Module) and not isinstance(self.classifier, compat._EncodeEachTextOnce)
    assert not isinstance(self.classifier_tok, types.MethodType)  # EasyEdit's own tokenizer is back
    assert encoded == [12, 2, 1]  # the memory once, the questions once, then only the new edit
    with torch.no_grad():
        next(self.classifier.parameters()).mul_(1.5)  # an updated classifier invalidates what was cached
        encode(self, memory, questions)
    assert encoded[3:] == [12, 2]
    encoded.clear()
    encode(self, memory, questions)  # grad on (training): EasyEdit's code untouched
    assert encoded == [12, 2]


# 12. IKE builds its sentence encoder on every edit
def test_ike_still_builds_its_encoder_on_every_call():
    import inspect

    ike_main = importlib.import_module("easyeditor.models.ike.ike_main")
    source = inspect.getsource(ike_main.apply_ike_to_multimodal_model)
    assert "SentenceTransformer(hparams.sentence_model_name)" in source


def test_ike_encoder_is_built_once_per_name():
    ike_main = importlib.import_module("easyeditor.models.ike.ike_main")
    assert compat.apply()["ike_encoder_loaded_once"] is True
    assert compat._ike_loads_its_encoder_once(ike_main) is False  # idempotent
    built = []

    class Encoder:  # stands in for SentenceTransformer: counts how often it is built
        def __init__(self, name):
            built.append(name)

    module = types.ModuleType("ike_main_stand_in")
    module.SentenceTransformer = Encoder
    assert compat._ike_loads_its_encoder_once(module) is True
    first = module.SentenceTransformer("all-MiniLM-L6-v2")
    assert module.SentenceTransformer("all-MiniLM-L6-v2") is first
    module.SentenceTransformer("other")
    assert built == ["all-MiniLM-L6-v2", "other"]
