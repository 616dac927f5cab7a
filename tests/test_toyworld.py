"""The digits world on its SMALL configuration: data, tokenizer, EasyEdit's datasets and metrics, caching."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch

import easyedit_liveedit  # noqa: F401  (applies the EasyEdit shims)
from easyedit_liveedit import toyworld
from easyedit_liveedit.toyworld import pretrain
from easyedit_liveedit.toyworld.digits import facts
from easyedit_liveedit.toyworld.digits.pretrain import instance_contrastive_loss
from easyedit_liveedit.toyworld.facts import DIGIT_WORDS
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT
from easyedit_liveedit.toyworld.records import RECORD_FIELDS
from easyedit_liveedit.toyworld.scans import Pools, load_scans

MEND_TRAINING_YAML = PROJECT_ROOT / "hparams/TRAINING/MEND/toy-blip2.yaml"


@pytest.fixture(scope="session")
def small_model(small_world):
    return small_world.load_model()


@pytest.fixture()
def hparams(small_world):
    """EasyEdit's MEND training hparams from the toy YAML, pointed at the small world."""
    module = importlib.import_module("easyeditor.trainer.training_hparams")
    return small_world.apply_paths(module.MENDMultimodalTrainingHparams.from_hparams(str(MEND_TRAINING_YAML)))


def _records(world, name):
    return json.loads(world.split(name).read_text())


def test_digits_config_meets_the_required_sizes():
    kinds, config = len(facts.VQA_KINDS), toyworld.DIGITS
    assert kinds * (config.n_train_images - config.n_dev_images) >= 4000
    assert kinds * config.n_dev_images >= 1000  # the routing probe's 1,000 sequential edits, on dev
    assert kinds * config.n_eval_images >= 2000


def test_splits_are_disjoint_and_free_of_conflicts(small_world):
    train, evaluation = _records(small_world, "vqa_train"), _records(small_world, "vqa_eval")
    dev = _records(small_world, "vqa_dev")
    config = small_world.config
    assert len(train) == len(facts.VQA_KINDS) * (config.n_train_images - config.n_dev_images)
    assert len(dev) == len(facts.VQA_KINDS) * config.n_dev_images
    assert len(evaluation) == len(facts.VQA_KINDS) * config.n_eval_images
    for split in (train, dev, evaluation):
        keys = [(r["image"], r["kind"]) for r in split]
        assert len(keys) == len(set(keys)), "two edits of one image with one question kind"
        for record in split:
            assert set(RECORD_FIELDS) <= set(record)
            assert record["alt"] != record["pred"]
            assert record["rephrase"] != record["src"]
            assert record["image_rephrase"] != record["image"]
            assert facts.KIND_BY_NAME[record["kind"]].answer(record["label"]) == record["pred"]
    names = ("vqa_train", "vqa_dev", "vqa_eval", "caption_train", "caption_dev", "caption_eval")
    seen = {name: {r["image"] for r in _records(small_world, name)} for name in names}
    assert seen["caption_dev"] == seen["vqa_dev"] and seen["caption_train"] == seen["vqa_train"]
    mloc = {r["m_loc"] for r in train + dev + evaluation}
    cls = {r["image"] for r in _records(small_world, "classification")}
    assert not seen["vqa_train"] & seen["vqa_eval"]
    assert not seen["vqa_dev"] & (seen["vqa_train"] | seen["vqa_eval"])
    assert not (seen["vqa_train"] | seen["vqa_dev"] | seen["vqa_eval"]) & (mloc | cls)
    assert not mloc & cls


def test_dev_scans_are_carved_from_the_train_pool():
    """Guards the dev split's pool: its scans come out of the train pool, dealt digit by digit; ``train`` keeps the
    rest (the train split's scans), and the eval, m_loc and classification pools do not move."""
    _, labels = load_scans()
    sizes = (1000, 420, 177, 200)
    without = Pools.split(labels, sizes, 0, n_dev=1)
    pools = Pools.split(labels, sizes, 0, n_dev=200)
    assert (pools.eval, pools.mloc, pools.cls) == (without.eval, without.mloc, without.cls)
    assert sorted(pools.train + pools.dev) == sorted(without.train + without.dev)
    assert not set(pools.train) & set(pools.dev) and len(pools.dev) == 200
    assert sorted(np.bincount(labels[pools.dev], minlength=10)) == [20] * 10
    small = Pools.split(labels, (40, 20, 10, 10), 0, n_dev=8)
    assert len(set(labels[small.dev])) == 8  # dealt digit by digit: eight dev scans show eight digits
    with pytest.raises(ValueError, match="n_dev=40"):
        Pools.split(labels, (40, 20, 10, 10), 0, n_dev=40)


def test_probe_split_refuses_the_eval_split_and_names_the_dev_split():
    """Guards item 3 of the world's contract: probes read dev; only the final scoring reads eval."""
    for name in toyworld.EVAL_SPLITS:
        with pytest.raises(ValueError, match=f"{name!r} is an eval split.*{name.replace('eval', 'dev')!r}"):
            toyworld.probe_split(name)
    assert [toyworld.probe_split(n) for n in ("vqa_dev", "caption_dev", "dev", "vqa_train")] == [
        "vqa_dev",
        "caption_dev",
        "dev",
        "vqa_train",
    ]


def test_classification_prompt_lists_every_class(small_world):
    for record in _records(small_world, "classification"):
        assert all(name in record["prompt"] for name in DIGIT_WORDS)
        assert record["answer"] == DIGIT_WORDS[record["label"]]


def test_tokenizer_fits_easyedit(small_world):
    tok = small_world.tokenizer()
    assert type(tok).__name__ == "GPT2Tokenizer"
    assert tok.padding_side == "right"
    assert tok("\n", add_special_tokens=False).input_ids  # Blip2OPT reads its first id
    assert tok.encode("seven") == tok("seven", add_special_tokens=False).input_ids  # no BOS
    for kind in facts.VQA_KINDS:
        for question in kind.templates:
            prompt = pretrain.VQA_TEMPLATE.format(question)
            full = tok.encode(prompt + kind.answer(3))
            assert full[: len(tok.encode(prompt))] == tok.encode(prompt)  # prompts_len masks the prompt only
            assert len(full) == len(tok.encode(prompt)) + len(tok.encode(kind.answer(3)))


def test_easyedit_datasets_collate_batches_that_feed_the_backbone(small_world, small_model, hparams):
    dataset = importlib.import_module("easyeditor.dataset")
    for cls, name in ((dataset.VQADataset, "vqa_train"), (dataset.CaptionDataset, "caption_train")):
        with small_world.easyedit_patches():
            data = cls(str(small_world.split(name)), size=4, config=hparams)
            batch = data.collate_fn([data[0], data[1]])
        assert len(data) == 4
        size = small_world.config.image_size
        assert batch["edit_inner"]["image"].shape == (2, 3, size, size)
        for key in ("edit_inner", "edit_outer", "edit_outer_image", "loc", "loc_image"):
            out = small_model(batch[key])
            assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss), key
            # Exactly the answer tokens are supervised: prompts_len masks the prompt and nothing more.
            n_answer = [len(small_world.tokenizer().encode(t)) for t in (data[0]["target"], data[1]["target"])]
            if cls is dataset.VQADataset and key in ("edit_inner", "edit_outer", "edit_outer_image"):
                assert (out.labels != -100).sum(dim=1).tolist() == n_answer


def test_easyedit_metric_scores_the_unedited_model(small_world, small_model, hparams):
    """EasyEdit's compute_multimodal_edit_results agrees with the toy world's batched pretraining metric."""
    evaluate = importlib.import_module("easyeditor.evaluate")
    dataset = importlib.import_module("easyeditor.dataset")
    with small_world.easyedit_patches():
        data = dataset.VQADataset(str(small_world.split("vqa_eval")), size=6, config=hparams)
    tok = small_world.tokenizer()
    encoder = pretrain.Encoder(tok)
    for i in range(len(data)):
        item = dict(data[i])
        item["target"] = item["pred"]  # score the true answer: how well the unedited model knows it
        result = evaluate.compute_multimodal_edit_results(small_model, "blip2", hparams, tok, item, "cpu")
        assert set(result) >= {"rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_output"}
        ours = pretrain.answer_accuracy(
            small_model, encoder, item["image"][None], [pretrain.Example(0, item["prompt"], item["pred"])]
        )
        assert float(result["rewrite_acc"]) == pytest.approx(ours)


def test_build_is_cached_and_load_is_exact(small_world, small_model, tmp_path_factory):
    again = toyworld.load("small", cache=small_world.layout.root.parent, progress=False)
    assert again.manifest == small_world.manifest  # not rebuilt: the manifest records the build's own timing
    reloaded = again.load_model()
    from safetensors.torch import load_file

    saved = load_file(str(small_world.layout.checkpoint))
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert small_world.manifest["sizes"]["parameters"] == sum(p.numel() for p in reloaded.parameters())


def test_small_build_is_deterministic(small_world, tmp_path):
    other = toyworld.build("small", cache=tmp_path, progress=False, evaluate_limit=1)
    assert other.split("vqa_train").read_text() == small_world.split("vqa_train").read_text()
    from safetensors.torch import load_file

    ours, theirs = load_file(str(small_world.layout.checkpoint)), load_file(str(other.layout.checkpoint))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_unknown_config_name_is_rejected():
    with pytest.raises(ValueError, match="toy world config 'huge'"):
        toyworld.build("huge")


def test_multimodal_editor_builds_the_toy_backbone(small_world):
    """EasyEdit's MultimodalEditor, from the toy MEND YAML, builds the pretrained toy model itself."""
    mend_hparams = importlib.import_module("easyeditor.models.mend.mend_multimodal_hparams")
    hparams = small_world.apply_paths(
        mend_hparams.MENDMultimodalHparams.from_hparams(str(PROJECT_ROOT / "hparams/MEND/toy-blip2.yaml"))
    )
    editors = importlib.import_module("easyeditor.editors.multimodal_editor")
    with small_world.easyedit_patches():
        editor = editors.MultimodalEditor.from_hparams(hparams)
    from PIL import Image
    from safetensors.torch import load_file

    size = small_world.config.image_size
    assert editor.vis_tok(Image.new("RGB", (64, 64), "white")).shape == (3, size, size)
    saved = load_file(str(small_world.layout.checkpoint))
    assert torch.equal(editor.model.query_tokens.detach(), saved["query_tokens"])
    assert type(editor.tok).__name__ == "GPT2Tokenizer"


def test_instance_contrast_is_symmetric_infonce_over_two_views(small_world, small_model):
    """Equal embeddings for every view give uniform logits, so the loss is exactly log(n); otherwise it trains
    the image encoder (gradient reaches the Q-Former)."""
    size = small_world.config.image_size
    images = torch.rand(6, 3, size, size)
    head = torch.nn.Linear(small_model.query_tokens.shape[1] * small_model.query_tokens.shape[2], 8)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(1.0)
    loss = instance_contrastive_loss(small_model, head, images, torch.Generator().manual_seed(0), 0.1)
    assert loss.item() == pytest.approx(math.log(6), rel=1e-5)

    torch.nn.init.normal_(head.weight)
    small_model.requires_grad_(True)
    try:
        loss = instance_contrastive_loss(small_model, head, images, torch.Generator().manual_seed(0), 0.1)
        loss.backward()
        assert torch.isfinite(loss)
        assert small_model.query_tokens.grad is not None and small_model.query_tokens.grad.abs().sum() > 0
    finally:
        small_model.requires_grad_(False)
        small_model.zero_grad(set_to_none=True)
