"""The fixes to EasyEdit's baselines (``easyedit/compat/baselines.py``): a plain import applies none of them, the
harness's context applies each and restores EasyEdit's own code on exit, and each fix still works and is still
needed (remove it when its "still" test fails)."""

import importlib
import subprocess
import sys
import types

import torch

import easyedit_liveedit  # noqa: F401  (registers LiveEdit; applies no baseline fix)
from easyedit_liveedit.easyedit.compat import baselines

# What `import easyedit_liveedit` must leave exactly as easyeditor ships it: EasyEdit's multimodal entries, the
# executors and classes behind them, and what the fixes patch.
_SHIPPED_OBJECTS = """
import importlib, json
m = importlib.import_module
d = m("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
objects = {
    "ALG_MULTIMODAL_DICT[MEND]": d["MEND"].__func__, "ALG_MULTIMODAL_DICT[SERAC_MULTI]": d["SERAC_MULTI"].__func__,
    "ALG_MULTIMODAL_DICT[IKE]": d["IKE"],
    "MEND executor": type(d["MEND"].__self__), "SERAC executor": type(d["SERAC_MULTI"].__self__),
    "MEND.edit": m("easyeditor.trainer.algs.MEND").MEND.edit,
    "SeracMultimodalRewriteExecutor.apply_to_model":
        m("easyeditor.models.serac.serac_main").SeracMultimodalRewriteExecutor.apply_to_model,
    "SERAC_MULTI.embedding_logsim_matrix": m("easyeditor.trainer.algs.SERAC").SERAC_MULTI.embedding_logsim_matrix,
    "ike_main.SentenceTransformer": m("easyeditor.models.ike.ike_main").SentenceTransformer,
}
th = m("easyeditor.trainer.training_hparams")
def describe(o):
    code = getattr(o, "__code__", None)
    filename = code.co_filename if code else None
    return [getattr(o, "__module__", None), getattr(o, "__qualname__", None), filename, hasattr(o, "__wrapped__")]
state = {k: describe(o) for k, o in objects.items()}
state["model_parallel defaults"] = [hasattr(th.MENDMultimodalTrainingHparams, "model_parallel"),
                                    hasattr(th.SERACMultimodalTrainingHparams, "model_parallel")]
"""


def _shipped_state(after: str) -> dict:
    """The objects above, as seen in a fresh process after running ``after``."""
    code = _SHIPPED_OBJECTS.replace("import importlib, json", f"import importlib, json\n{after}")
    result = subprocess.run(
        [sys.executable, "-c", code + "print(json.dumps(state))"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_plain_import_leaves_easyeditors_own_editors_exactly_as_shipped():
    """Guards: importing the plugin changes nothing of EasyEdit's MEND, SERAC or IKE. Compared with a process that
    applied only the import fixes (without which easyeditor does not import here), every object is the very same
    one, defined in easyeditor's own files."""
    shipped = _shipped_state("from easyedit_liveedit.easyedit.compat import imports; imports.apply()")
    plugged = _shipped_state("import easyedit_liveedit")
    assert plugged == shipped
    for name, (module, _, filename, wrapped) in ((k, v) for k, v in plugged.items() if len(v) == 4):
        assert module.startswith(("easyeditor", "sentence_transformers")) and not wrapped, name
        assert filename is None or "easyeditor" in filename, name
    assert plugged["model_parallel defaults"] == [False, False]


def test_the_context_patches_and_restores_every_fix_and_nests():
    before = _in_process_state()
    with baselines.baseline_fixes():
        inside = _in_process_state()
        with baselines.baseline_fixes():
            assert _in_process_state() == inside
        assert _in_process_state() == inside  # the inner exit left the outer's fixes in place
    assert _in_process_state() == before
    assert all(inside[key] is not before[key] for key in before), "a fix did not apply"


def _in_process_state() -> dict:
    m = importlib.import_module
    d = m("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
    th = m("easyeditor.trainer.training_hparams")
    return {
        "SERAC_MULTI entry": d["SERAC_MULTI"].__func__,
        "MEND.edit": m("easyeditor.trainer.algs.MEND").MEND.edit,
        "SERAC_MULTI.embedding_logsim_matrix": m("easyeditor.trainer.algs.SERAC").SERAC_MULTI.embedding_logsim_matrix,
        "SentenceTransformer": m("easyeditor.models.ike.ike_main").SentenceTransformer,
        "model_parallel": th.MENDMultimodalTrainingHparams.__dict__.get("model_parallel", "absent"),
    }


# model_parallel missing from the wheel's multimodal training hparams
def test_training_hparams_still_lack_model_parallel_field():
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    for name in ("MENDMultimodalTrainingHparams", "SERACMultimodalTrainingHparams"):
        assert "model_parallel" not in getattr(training_hparams, name).__dataclass_fields__


def test_training_hparams_default_model_parallel_to_false_inside_the_context_only():
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    with baselines.baseline_fixes():
        assert training_hparams.MENDMultimodalTrainingHparams.model_parallel is False
        assert training_hparams.SERACMultimodalTrainingHparams.model_parallel is False
    assert not hasattr(training_hparams.MENDMultimodalTrainingHparams, "model_parallel")


# MEND's multimodal executor passes label strings
def test_mend_executor_still_builds_label_strings():
    import inspect

    mend_main = importlib.import_module("easyeditor.models.mend.mend_main")
    source = inspect.getsource(mend_main.MendMultimodalRewriteExecutor.apply_to_model)
    assert "labels = trg" in source


def test_mend_edit_gets_right_aligned_token_id_labels_from_strings(small_world):
    mend = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    with baselines.baseline_fixes():
        assert mend.edit.__wrapped__ is not None  # EasyEdit's MEND.edit is wrapped inside the context
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
    import inspect

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
        for key in shipped:  # the entries bound at import time call the wrapper
            assert alg_dict[key].__func__ is serac_main.SeracMultimodalRewriteExecutor.apply_to_model
            assert alg_dict[key].__func__.__wrapped__ is shipped[key].__func__
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
    import inspect

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
    import inspect

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
