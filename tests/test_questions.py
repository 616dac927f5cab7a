"""Meta-training sees every question rendered exactly as EasyEdit's editor renders an edit (questions.py)."""

import importlib

import pytest
import torch
from helpers import small_liveedit_hparams

from easyedit_liveedit import LiveEditMultimodalTrainer
from easyedit_liveedit.easyedit.questions import QUESTIONS, EditorQuestions


def _vqa(world, hparams, size):
    from easyeditor import VQADataset

    with world.easyedit_patches():
        return VQADataset(str(world.split("vqa_eval")), size=size, config=hparams)


def test_batches_render_each_question_as_prepare_multimodal_edit_does(small_world):
    prepare = importlib.import_module("easyeditor.evaluate").prepare_multimodal_edit
    hparams = small_liveedit_hparams(small_world, training=True)
    plain = _vqa(small_world, hparams, 3)
    items = [plain[0], plain[1], plain[2]]
    dataset_batch, editor_batch = plain.collate_fn(items), EditorQuestions(plain).collate_fn(items)
    tok = small_world.tokenizer()
    for name, (question, answer) in QUESTIONS.items():
        expected = [prepare(hparams, tok, it[answer], it[question], None) for it in items]
        assert editor_batch[name]["text_input"] == [e["text_input"][0] for e in expected], name
        assert editor_batch[name]["prompts_len"] == [e["prompts_len"][0] for e in expected], name
        assert editor_batch[name]["answer_tokens"] == [e["labels"].shape[1] for e in expected], name
        for key in ("image", "labels"):  # the rest of the batch is the dataset's own
            mine, theirs = editor_batch[name][key], dataset_batch[name][key]
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), (name, key)
    # VQADataset renders image questions differently (its template), so the wrapper changes what training sees
    assert dataset_batch["edit_inner"]["text_input"] != editor_batch["edit_inner"]["text_input"]
    assert dataset_batch["edit_inner"]["text_input"][0].startswith("Question: ")


@pytest.mark.parametrize("questions", ["editor", "dataset"])
def test_trainer_loads_batches_in_the_configured_rendering(small_world, tmp_path, questions):
    hparams = small_liveedit_hparams(
        small_world, training=True, batch_size=2, val_batch_size=2, max_iters=4, results_dir=str(tmp_path),
        questions=questions,
    )  # fmt: skip
    data = _vqa(small_world, hparams, 4)
    with small_world.easyedit_patches():
        trainer = LiveEditMultimodalTrainer(hparams, data, data)
    for loader in (trainer.train_loader, trainer.val_loader):
        rendered = next(iter(loader))["edit_inner"]["text_input"]
        assert all(text.startswith("Question: ") == (questions == "dataset") for text in rendered)


def test_caption_batches_with_locality_answers_of_unequal_length_are_made(small_world):
    """Guards the compatibility note of questions.py, on each target: EasyEdit's ``CaptionDataset.collate_fn`` cannot
    batch locality answers of unequal token length (this fails once EasyEdit pads them, so the fallback can go), and
    ``EditorQuestions`` makes the batch, its images and questions as the dataset's own. Seen failing with the fallback
    removed (ValueError from the tokenizer)."""
    from easyeditor import CaptionDataset

    hparams = small_liveedit_hparams(small_world, training=True)
    with small_world.easyedit_patches():
        data = CaptionDataset(str(small_world.split("caption_train")), size=40, config=hparams)
    items = [data[0], dict(data[1])]
    items[1]["multimodal_locality_ground_truth"] += " or " + items[0]["multimodal_locality_ground_truth"]
    tok = small_world.tokenizer()
    assert len({len(tok.encode(it["multimodal_locality_ground_truth"])) for it in items}) == 2
    with pytest.raises(ValueError):
        data.collate_fn(items)
    batch = EditorQuestions(data).collate_fn(items)
    single = [EditorQuestions(data).collate_fn([item]) for item in items]
    assert torch.equal(batch["edit_inner"]["image"], torch.cat([s["edit_inner"]["image"] for s in single]))
    for name in QUESTIONS:
        assert batch[name]["text_input"] == [t for s in single for t in s[name]["text_input"]], name
    assert data.tok is not None and not hasattr(data.tok, "_tok")  # the dataset keeps its own tokenizer
