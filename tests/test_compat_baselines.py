"""The fixes to EasyEdit's baselines (``easyedit/compat/baselines.py``): a plain import applies none of them, the
harness's context applies each and restores EasyEdit's own code on exit, and each fix still works and is still
needed (remove it when its "still" test fails)."""

import importlib
import inspect
import json
import subprocess
import sys
import types

import pytest
import torch
from helpers import TARGET

import easyedit_liveedit  # noqa: F401  (registers LiveEdit; applies no baseline fix)
from easyedit_liveedit.easyedit.compat import baselines

# What the harness's context changes on each EasyEdit target (the others' behaviour is absent there).
APPLIED = {
    "wheel": {"SERAC_MULTI entry", "MEND.edit", "SERAC_MULTI.embedding_logsim_matrix", "SentenceTransformer",
              "model_parallel"},
    "main": {"SERAC_MULTI entry", "MEND entry", "SERAC_MULTI.embedding_logsim_matrix", "SentenceTransformer"},
}  # fmt: skip

# In one fresh process: the import fixes alone (without which easyeditor does not import here), then every easyeditor
# module the plugin's import reaches, a snapshot of every public callable of every loaded easyeditor module (and of
# every public callable a class among them defines), then `import easyedit_liveedit`, and the same snapshot again.
_SNAPSHOT = """
import importlib, importlib.util, inspect, json, os, sys
# the fixes' module alone, by its file: importing anything of the package would run its register()
package = importlib.util.find_spec("easyedit_liveedit").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("fixes", os.path.join(package, "easyedit", "compat", "imports.py"))
fixes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixes)
fixes.apply()
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
assert not any(m.split(".")[0] == "easyedit_liveedit" for m in sys.modules), "the plugin was imported too early"

def snapshot():
    objects = {}
    for module_name, module in sorted((k, v) for k, v in sys.modules.items() if k.split(".")[0] == "easyeditor"):
        for name, value in list(vars(module).items()):
            if name.startswith("_") or not callable(value):
                continue
            objects[f"{module_name}.{name}"] = value
            if inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if not attribute.startswith("_") or attribute in ("__init__", "__call__"):
                        objects[f"{module_name}.{name}.{attribute}"] = member
    return objects

before = snapshot()
import easyedit_liveedit
after = snapshot()
changed = sorted(k for k in before if k not in after or after[k] is not before[k])
added = sorted(k for k in after if k not in before)
print(json.dumps({"checked": len(before), "changed": changed, "added": added}))
"""


def _easyeditor_modules_the_plugin_imports() -> list[str]:
    code = "import sys, json, easyedit_liveedit; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'easyeditor')))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_plain_import_changes_no_public_callable_of_easyeditor():
    """Guards: ``import easyedit_liveedit`` replaces no public callable of any easyeditor module it loads, nor any
    public method of their classes (``MultimodalEditor.edit``, ``MEND.forward``, every executor, ...): each is the
    very same object before and after. The only new names are the two hparams classes ``register()`` exposes.

    Seen failing when ``register()`` also wrapped ``MultimodalEditor.edit`` (``changed`` named it). The list of nine
    objects this replaced passed that, and compared two processes that had both imported the plugin (importing its
    ``compat.imports`` ran ``register()``); here the fixes' file is loaded alone.
    """
    modules = _easyeditor_modules_the_plugin_imports()
    result = subprocess.run([sys.executable, "-c", _SNAPSHOT, json.dumps(modules)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checked"] > 1000 and report["changed"] == []
    exposed = ("easyeditor.LiveEditMultimodalHparams", "easyeditor.LiveEditMultimodalTrainingHparams")
    assert set(exposed) <= set(report["added"])  # the classes, and below them their own fields and methods
    assert all(name in exposed or name.startswith(tuple(f"{e}." for e in exposed)) for name in report["added"])


def test_the_context_patches_and_restores_every_fix_and_nests():
    before = _in_process_state()
    with baselines.baseline_fixes():
        inside = _in_process_state()
        with baselines.baseline_fixes():
            assert _in_process_state() == inside
        assert _in_process_state() == inside  # the inner exit left the outer's fixes in place
    assert _in_process_state() == before
    assert {key for key in before if inside[key] is not before[key]} == APPLIED[TARGET]


def _in_process_state() -> dict:
    m = importlib.import_module
    d = m("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
    th = m("easyeditor.trainer.training_hparams")
    return {
        "SERAC_MULTI entry": d["SERAC_MULTI"].__func__,
        "MEND entry": d["MEND"].__func__,
        "MEND.edit": m("easyeditor.trainer.algs.MEND").MEND.edit,
        "SERAC_MULTI.embedding_logsim_matrix": m("easyeditor.trainer.algs.SERAC").SERAC_MULTI.embedding_logsim_matrix,
        "SentenceTransformer": m("easyeditor.models.ike.ike_main").SentenceTransformer,
        "model_parallel": th.MENDMultimodalTrainingHparams.__dict__.get("model_parallel", "absent"),
    }


# model_parallel missing from the wheel's multimodal training hparams
def test_training_hparams_still_lack_model_parallel_field():
    """Needed on the wheel; EasyEdit main defines the field (the fix then does nothing)."""
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    for name in ("MENDMultimodalTrainingHparams", "SERACMultimodalTrainingHparams"):
        fields = getattr(training_hparams, name).__dataclass_fields__
        assert ("model_parallel" not in fields) == (TARGET == "wheel")


def test_training_hparams_default_model_parallel_to_false_inside_the_context_only():
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    with baselines.baseline_fixes():
        assert training_hparams.MENDMultimodalTrainingHparams.model_parallel is False
        assert training_hparams.SERACMultimodalTrainingHparams.model_parallel is False
    assert hasattr(training_hparams.MENDMultimodalTrainingHparams, "model_parallel") == (TARGET == "main")


# MEND's multimodal executor passes label strings
def test_mend_executor_still_builds_label_strings():
    """Needed on the wheel; EasyEdit main's executor builds token ids, and the fix is not applied there."""
    mend_main = importlib.import_module("easyeditor.models.mend.mend_main")
    source = inspect.getsource(mend_main.MendMultimodalRewriteExecutor.apply_to_model)
    assert ("labels = trg" in source) == (TARGET == "wheel")
    mend = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    undo = baselines._mend_label_strings_to_ids(mend, mend_main.MendMultimodalRewriteExecutor)
    assert len(undo) == (1 if TARGET == "wheel" else 0)
    for step in undo:
        step()


# MEND's and SERAC's executors on EasyEdit main read one request dict; main's editor passes a list of one
def test_main_executors_still_read_a_single_request():
    """Needed on EasyEdit main (its non-sequential edit and edit_dataset pass a list); the wheel's take the list."""
    for name, cls, _ in baselines._ONE_REQUEST_EXECUTORS:
        source = inspect.getsource(getattr(importlib.import_module(name), cls).apply_to_model)
        assert (baselines._READS_ONE_REQUEST in source) == (TARGET == "main"), cls


def test_one_request_of_a_list_is_handed_to_an_executor_that_reads_one():
    class Executor:  # reads one request, as EasyEdit main's MEND and SERAC executors do
        def apply_to_model(self, model, tok, request, hparams, copy=False, **kwargs):
            src = [request["prompt"]]
            return src[0], {}

    executor = Executor()
    table = {"MEND": executor.apply_to_model}
    undo = baselines._one_request_from_a_list(Executor, ("MEND",), table)
    assert len(undo) == 2 and table["MEND"].__self__ is executor
    assert baselines._one_request_from_a_list(Executor, ("MEND",), table) == []  # already wrapped
    assert table["MEND"](None, None, [{"prompt": "a"}], None) == ("a", {})
    assert executor.apply_to_model(None, None, {"prompt": "b"}, None) == ("b", {})  # a dict passes through
    with pytest.raises(ValueError, match="Executor edits one request at a time, got a list of 2"):
        executor.apply_to_model(None, None, [{"prompt": "c"}, {"prompt": "d"}], None)
    for step in reversed(undo):
        step()
    assert "apply_to_model" in vars(Executor) and not hasattr(Executor.apply_to_model, "_unwraps_one_request")


def test_mend_edit_gets_right_aligned_token_id_labels_from_strings(small_world):
    mend = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    with baselines.baseline_fixes():  # EasyEdit's MEND.edit is wrapped inside the context, where it needs the fix
        assert hasattr(mend.edit, "__wrapped__") == (TARGET == "wheel")
    assert not hasattr(mend.edit, "__wrapped__")

    class Recorder:  # stands in for MEND: the wrapper reads `.model` and hands the batch on
        model = small_world.load_model()

        def edit(self, batch, condition=None):
            self.seen = batch
            return "edited"

    undo = baselines._mend_label_strings_to_ids(Recorder)
    assert len(undo) == 1
    assert baselines._mend_label_strings_to_ids(Recorder) == []  # already wrapped: left to the outer context
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


# SERAC's multimodal executor keeps only its first (empty-memory) SERAC
def test_serac_executor_still_edits_its_unchanged_serac():
    serac_main = importlib.import_module("easyeditor.models.serac.serac_main")
    source = inspect.getsource(serac_main.SeracMultimodalRewriteExecutor.apply_to_model)
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
    shipped = {key: alg_dict[key] for key in ("SERAC", "SERAC_MULTI")}
    with baselines.baseline_fixes():
        for key in shipped:  # the entries bound at import time call the wrapper(s), around EasyEdit's own method
            assert alg_dict[key].__func__ is serac_main.SeracMultimodalRewriteExecutor.apply_to_model
            assert inspect.unwrap(alg_dict[key].__func__) is shipped[key].__func__
    assert {key: alg_dict[key] for key in shipped} == shipped

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
    undo = baselines._serac_keeps_its_memory(Executor, table)
    assert len(undo) == 2  # the method and the table's entry
    assert baselines._serac_keeps_its_memory(Executor, table) == []
    assert table["SERAC_MULTI"].__self__ is executor and table["MEND"] is print
    assert table["SERAC_MULTI"](None, None, ["a"], None) == (("a",), {})
    assert executor.apply_to_model(None, None, ["b"], None)[0] == ("a", "b")
    assert executor.apply_to_model(None, None, ["c"], None, False, False, True)[0] == ("a", "b", "c")
    assert executor.alg == ("a", "b")  # keep_original_weight (positional here): the memory was not replaced
    assert not executor.alg.training  # answers in eval mode: no dropout, no autograd in SERAC's forward
    assert executor.alg.language_projection == "from the archive"


# SERAC runs its classifier over the whole memory on every forward
def test_serac_still_encodes_its_whole_memory_on_every_forward():
    serac = importlib.import_module("easyeditor.trainer.algs.SERAC").SERAC_MULTI
    source = inspect.getsource(serac.embedding_logsim_matrix)
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
    undo = baselines._serac_encodes_memory_once(serac)
    assert baselines._serac_encodes_memory_once(serac) == []
    encode = serac.embedding_logsim_matrix
    undo[0]()  # keep the wrapped function; EasyEdit's own is back on the class
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
    assert isinstance(self.classifier, torch.nn.Module) and not isinstance(
        self.classifier, baselines._EncodeEachTextOnce
    )
    assert not isinstance(self.classifier_tok, types.MethodType)  # EasyEdit's own tokenizer is back
    assert encoded == [12, 2, 1]  # the memory once, the questions once, then only the new edit
    with torch.no_grad():
        next(self.classifier.parameters()).mul_(1.5)  # an updated classifier invalidates what was cached
        encode(self, memory, questions)
    assert encoded[3:] == [12, 2]
    encoded.clear()
    encode(self, memory, questions)  # grad on (training): EasyEdit's code untouched
    assert encoded == [12, 2]


# IKE builds its sentence encoder on every edit
def test_ike_still_builds_its_encoder_on_every_call():
    ike_main = importlib.import_module("easyeditor.models.ike.ike_main")
    source = inspect.getsource(ike_main.apply_ike_to_multimodal_model)
    assert "SentenceTransformer(hparams.sentence_model_name)" in source


def test_ike_encoder_is_built_once_per_name():
    ike_main = importlib.import_module("easyeditor.models.ike.ike_main")
    with baselines.baseline_fixes():
        assert ike_main.SentenceTransformer.cache_info() is not None
        assert baselines._ike_loads_its_encoder_once(ike_main) == []  # already cached: left to the outer context
    assert not hasattr(ike_main.SentenceTransformer, "cache_info")
    built = []

    class Encoder:  # stands in for SentenceTransformer: counts how often it is built
        def __init__(self, name):
            built.append(name)

    module = types.ModuleType("ike_main_stand_in")
    module.SentenceTransformer = Encoder
    assert len(baselines._ike_loads_its_encoder_once(module)) == 1
    first = module.SentenceTransformer("all-MiniLM-L6-v2")
    assert module.SentenceTransformer("all-MiniLM-L6-v2") is first
    module.SentenceTransformer("other")
    assert built == ["all-MiniLM-L6-v2", "other"]
