"""LLaVA-OneVision and Qwen2-VL, EasyEdit main's Hugging Face backbones, under LiveEdit (EasyEdit main only).

Tiny, randomly initialised models of the real architectures with working processors (``chat_vlms.py``), loaded by
path as EasyEdit main loads the real ones; batches are made by EasyEdit main's own ``prepare_multimodal_hf_edit``.
"""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from chat_vlms import BUILDERS
from helpers import TARGET
from PIL import Image

from easyedit_liveedit import LiveEdit, LiveEditMultimodalHparams
from easyedit_liveedit.backbones import ChatVLMForEditing, adapter_for
from easyedit_liveedit.liveedit.networks import Experts

pytestmark = pytest.mark.skipif(
    TARGET != "main", reason="EasyEdit main's Hugging Face backbones; the PyPI wheel has no path for them"
)
PROMPTS = ["what digit is shown here ?", "which number is written ?"]
TARGETS = ["seven", "nine two"]


def _image(seed: int, size: tuple[int, int] = (20, 24)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory) -> SimpleNamespace:
    """The tiny model of one family, loaded by path with its processor, as EasyEdit main's editor loads it."""
    from transformers import AutoProcessor

    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    classes = {
        "llava-onevision": "LlavaOnevisionForConditionalGeneration",
        "qwen2-vl": "Qwen2VLForConditionalGeneration",
    }
    cls = getattr(importlib.import_module("transformers"), classes[request.param])
    vlm = cls.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return SimpleNamespace(name=request.param, folder=folder, vlm=vlm, processor=processor)


def _hparams(family, **overrides: Any) -> LiveEditMultimodalHparams:
    values = dict(
        alg_name="LiveEdit", name=str(family.folder), model_name=str(family.folder), model_class=family.name,
        tokenizer_class=".", tokenizer_name=".", device="cpu", edit_layer=1, cross_attn_dim=32, num_heads=4,
        num_sentinel_tokens=16, dtype="float32",
    )  # fmt: skip
    values.update(overrides)
    return LiveEditMultimodalHparams.from_dict(values)


def _batch(family, n: int = 2, seed: int = 0, image: bool = True, targets: list[str] | None = None) -> dict:
    """``n`` questions with their answers, made by EasyEdit main's ``prepare_multimodal_hf_edit`` (one image each)."""
    from easyeditor.evaluate import prepare_multimodal_hf_edit

    images = [_image(seed + i, (20 + 4 * i, 24)) for i in range(n)] if image else None
    made = prepare_multimodal_hf_edit(_hparams(family), family.processor, (targets or TARGETS)[:n], PROMPTS[:n],
                                      images, "image" if image else "text")  # fmt: skip
    return {**made["multimodal_inputs"], "labels": made["labels"]}


@pytest.fixture
def editor(family):
    editor = LiveEdit(family.vlm, _hparams(family), processor=family.processor)
    yield editor
    editor.detach_hooks()  # the module-scoped model outlives this editor


def _capture_inputs_embeds(module: torch.nn.Module) -> tuple[dict, Any]:
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, _args, kwargs):
        seen.update({k: kwargs[k] for k in ("inputs_embeds", "attention_mask") if kwargs.get(k) is not None})

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("with_image", [True, False])
def test_layout_matches_the_positions_the_forward_really_uses(family, editor, with_image):
    """Guards: image positions are where the forward puts the image features, answer positions are where EasyEdit
    main puts the labels, prompt positions hold the question's own tokens."""
    batch = _batch(family, 1 if not with_image else 2, image=with_image)
    language_model = editor.adapter.language_model(editor.model)
    seen, handle = _capture_inputs_embeds(language_model)
    try:
        with torch.no_grad():
            editor.model(batch)
    finally:
        handle.remove()
    with torch.no_grad():
        _, layout = editor.hidden_states(batch)
    embeds, real = seen["inputs_embeds"], seen["attention_mask"].bool()
    assert torch.equal(layout.answer, batch["labels"] != -100)
    token_embeds = family.vlm.get_input_embeddings()(batch["input_ids"])
    replaced = (embeds != token_embeds).any(-1) & real  # positions the forward filled with image features
    assert torch.equal(layout.image, replaced)
    assert bool(layout.image.any()) == with_image
    tok = family.processor.tokenizer
    for b in range(batch["input_ids"].shape[0]):
        question = tok(PROMPTS[b], add_special_tokens=False).input_ids
        prompt_ids = batch["input_ids"][b][layout.prompt[b]].tolist()
        assert prompt_ids[-len(question) :] == question  # the question ends the prompt; role words come before it
        assert not (layout.image[b] | layout.prompt[b] | layout.answer[b])[~real[b]].any()
    assert not (layout.image & layout.prompt).any() and not (layout.prompt & layout.answer).any()


def test_prompt_embeddings_are_what_the_forward_feeds_its_text_model(family, editor):
    batch = _batch(family, 2)
    seen, handle = _capture_inputs_embeds(editor.adapter.language_model(editor.model))
    try:
        with torch.no_grad():
            editor.model(batch)
    finally:
        handle.remove()
    with torch.no_grad():
        embeds, mask = editor.adapter.prompt_embeddings(editor.model, batch)
    assert torch.equal(embeds, seen["inputs_embeds"]) and torch.equal(mask, seen["attention_mask"])


def test_add_edits_makes_one_expert_and_leaves_every_base_weight_bit_identical(family, editor):
    before = {k: v.clone() for k, v in family.vlm.state_dict().items()}
    ids = editor.add_edits(_batch(family, 1))
    assert len(ids) == 1 and len(editor.library) == 1
    after = family.vlm.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _add_strong_experts(editor: LiveEdit, batch: dict) -> None:
    """Experts with the edit's real keys and random factors, so their residual is surely non-zero."""
    made = editor.make_experts(batch)
    g = torch.Generator().manual_seed(7)
    editor.library.add(Experts(psi=made.psi, phi=made.phi, U=torch.randn(made.U.shape, generator=g),
                               V=torch.randn(made.V.shape, generator=g)))  # fmt: skip


@pytest.fixture
def routing(monkeypatch):
    """Routing seam: ``routing.rows`` decides which inputs the hard filter lets reach every expert."""
    import easyedit_liveedit.liveedit.library as library

    state = SimpleNamespace(rows=None)

    def chosen_rows(visual_sim, sentinel_sim, has_image=None):
        keep = torch.zeros_like(visual_sim, dtype=torch.bool)
        keep[state.rows] = True
        return keep if has_image is None else keep & has_image[:, None]

    monkeypatch.setattr(library, "hard_filter", chosen_rows)
    return state


def test_edited_forward_differs_only_for_inputs_routed_to_an_expert(family, editor, routing):
    _add_strong_experts(editor, _batch(family, 2, seed=1))
    routing.rows = [0]
    batch = _batch(family, 2, seed=2)
    with torch.no_grad():
        plain = editor.model(batch).logits
        edited = editor(batch).logits
    assert (edited[0] - plain[0]).abs().amax() > 1e-3
    assert torch.equal(edited[1], plain[1])
    with torch.no_grad():  # EasyEdit main's call: the model's inputs as keywords
        assert torch.equal(editor(**{k: v for k, v in batch.items() if k != "labels"}).logits, edited)
        assert torch.equal(family.vlm(**{k: v for k, v in batch.items() if k != "labels"}).logits, plain)


def test_generation_with_the_kv_cache_equals_the_routed_forward(family, editor, routing):
    """Guards: greedy generation (the model's own generate, KV cache, routed once on the prompt) gives, token by token,
    the argmax of the routed teacher-forced forward over the prompt and the tokens generated so far."""
    _add_strong_experts(editor, _batch(family, 1, seed=1))
    routing.rows = [0]
    prompt = _batch(family, 1, seed=3, targets=[""])  # the question with the generation prompt, no answer
    prompt.pop("labels")
    answer = editor.generate(prompt, max_new_tokens=4)
    assert editor.generate(prompt, max_new_tokens=0) == [""]
    new_ids = family.processor.tokenizer(answer[0], add_special_tokens=False).input_ids
    generated = torch.tensor([new_ids])
    full = {**prompt, "input_ids": torch.cat([prompt["input_ids"], generated], 1),
            "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(generated)], 1)}  # fmt: skip
    if "mm_token_type_ids" in full:
        full["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(generated)], 1)
    with torch.no_grad():
        logits = editor(full).logits[0]
        plain = editor.model(full).logits[0]
    T = prompt["input_ids"].shape[1]
    predicted = logits[T - 1 : T - 1 + len(new_ids)].argmax(-1).tolist()
    assert new_ids and predicted == new_ids
    assert plain[T - 1 :].argmax(-1).tolist() != logits[T - 1 :].argmax(-1).tolist()  # the experts changed it


def test_bare_model_asks_to_be_wrapped(family):
    with pytest.raises(NotImplementedError, match="ChatVLMForEditing"):
        adapter_for(family.vlm)
    assert isinstance(LiveEdit(family.vlm, _hparams(family), processor=family.processor).model, ChatVLMForEditing)


@pytest.fixture(scope="module")
def archive(family, small_world, tmp_path_factory):
    """LiveEdit meta-trained for 8 steps by ``LiveEditMultimodalTrainer`` (EasyEdit main's run() loop, its
    ``get_model`` building the model from ``name``) on EasyEdit main's ``VQADataset`` batches of the small toy world's
    records, rendered for this family by main's own collate (the processor's chat template)."""
    from easyeditor import VQADataset

    from easyedit_liveedit import LiveEditMultimodalTrainer, LiveEditMultimodalTrainingHparams

    results = tmp_path_factory.mktemp(f"{family.name}-results")
    images = str(small_world.layout.images)
    config = LiveEditMultimodalTrainingHparams.from_dict(dict(
        alg="LiveEdit", name=str(family.folder), model_name=family.name, model_class=family.name, tokenizer_class=".",
        tokenizer_name=".", device="cpu", edit_layer=1, cross_attn_dim=32, num_heads=4, num_sentinel_tokens=16,
        dtype="float32", questions="dataset", batch_size=4, val_batch_size=4, max_iters=8, log_interval=4,
        val_interval=4, val_steps=2, results_dir=str(results), coco_image=images, rephrase_image=images,
    ))  # fmt: skip
    train = VQADataset(str(small_world.split("vqa_train")), size=16, config=config)
    val = VQADataset(str(small_world.split("vqa_eval")), size=8, config=config)
    LiveEditMultimodalTrainer(config, train, val).run()
    return results


def test_meta_training_writes_an_archive_of_the_networks_only(family, archive):
    saved = torch.load(archive / "models" / "LiveEdit" / family.name, weights_only=True)
    assert {"model", "opt", "val_stats", "step"} <= set(saved)
    assert all(k.startswith(("generator.", "edit_extractor.", "input_extractor.", "sentinel", "expert_norm."))
               for k in saved["model"])  # fmt: skip
    results = json.loads((archive / "results.json").read_text())["results"]
    assert results["loc/acc_val"] == 1.0  # text-only questions never route to an expert


def test_main_editor_edits_and_undoes_through_liveedit(family, archive, tmp_path, monkeypatch):
    """EasyEdit main's own ``MultimodalEditor``, built by ``from_hparams`` from the model's folder with the archive
    the trainer wrote, edits with LiveEdit and, with ``sequential_edit=False``, undoes each edit (main calls what the
    entry returns)."""
    from easyedit_liveedit.easyedit.entry import attached_editor

    hparams = _hparams(family, archive=str(archive / "models" / "LiveEdit" / family.name))
    for i in range(2):
        _image(i).save(tmp_path / f"{i}.png")
    monkeypatch.chdir(tmp_path)  # main's editor writes logs/ into the working directory
    editors = importlib.import_module("easyeditor.editors.multimodal_editor")
    editor = editors.MultimodalEditor.from_hparams(hparams)
    images = [str(tmp_path / f"{i}.png") for i in range(2)]
    metrics, _, _ = editor.edit(
        prompts=PROMPTS, targets=TARGETS, image=images, rephrase_prompts=PROMPTS[::-1], rephrase_image=images,
        locality_inputs={"text": {"prompt": ["what is one plus one ?"] * 2, "ground_truth": ["two"] * 2},
                         "vision": {"prompt": PROMPTS, "ground_truth": TARGETS, "image": images[::-1]}},
        sequential_edit=False,
    )  # fmt: skip
    assert len(metrics) == 2 and {"rewrite_acc", "locality_acc", "multimodal_locality_acc"} <= set(metrics[0]["post"])
    assert len(attached_editor(editor.model).library) == 0  # each edit undone
    metrics, _, _ = editor.edit(prompts=PROMPTS, targets=TARGETS, image=images, sequential_edit=True)
    assert len(attached_editor(editor.model).library) == 2
