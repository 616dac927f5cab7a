"""LLaVA-1.5 end to end on a tiny random ``LlavaForConditionalGeneration`` saved to a local folder (576 image tokens):
meta-trained by the plugin's trainer (``model_name: llava``, which the wheel cannot build), edited through the
plugin's ``MultimodalEditor`` and through the command line (``model=llava``), on the small toy world's records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easyedit_liveedit import LiveEditMultimodalTrainer, MultimodalEditor
from easyedit_liveedit.backbones import LlavaForEditing
from easyedit_liveedit.backbones.llava import load_llava
from easyedit_liveedit.bench import tiny_backbones as tiny
from easyedit_liveedit.bench.archives import load_hparams
from easyedit_liveedit.easyedit import compat
from easyedit_liveedit.easyedit.entry import editor_for
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

METRICS = {"rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc"}


def paths(world, folder: Path) -> dict:
    """What a user's LLaVA YAML points at, plus LiveEdit networks small enough for the tiny model."""
    images = str(world.layout.images)
    return dict(name=str(folder), tokenizer_name=str(folder), coco_image=images, rephrase_image=images,
                edit_layer=1, cross_attn_dim=32, num_heads=4, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def llava(small_world, tmp_path_factory):
    """The tiny LLaVA folder and a LiveEdit archive meta-trained on it by the plugin's trainer."""
    from easyeditor import VQADataset

    root = tmp_path_factory.mktemp("llava")
    records = json.loads(small_world.split("vqa_train").read_text())
    folder = tiny.llava_folder(root / "llava-1.5-tiny", corpus=[f"{r['src']} {r['alt']}" for r in records])
    training = load_hparams(
        "LiveEdit", PROJECT_ROOT / "hparams/TRAINING/LiveEdit/llava.yaml",
        dict(paths(small_world, folder), batch_size=4, val_batch_size=4, max_iters=4, val_interval=3, val_steps=1,
             log_interval=2, final_eval=False, results_dir=str(root / "results")),
        training=True,
    )  # fmt: skip
    before = load_llava(folder, "LlamaTokenizer").llava.state_dict()
    with compat.cuda_to_cpu():
        train = VQADataset(str(small_world.split("vqa_train")), size=8, config=training)
        val = VQADataset(str(small_world.split("vqa_eval")), size=4, config=training)
        trainer = LiveEditMultimodalTrainer(training, train, val)
        initial = {k: v.clone() for k, v in trainer.model.net.state_dict().items()}
        trainer.run()
    return dict(folder=folder, trainer=trainer, archive=trainer.save_path, before=before, initial=initial, root=root)


def test_the_trainer_builds_llava_and_trains_only_liveedit(llava):
    trainer = llava["trainer"]
    model = trainer.model.model
    assert isinstance(model, LlavaForEditing) and model.num_image_tokens == 576
    saved = torch.load(llava["archive"], weights_only=True)
    assert any(not torch.equal(saved["model"][k], v) for k, v in llava["initial"].items())  # the networks learned
    state = model.llava.state_dict()
    for name, tensor in llava["before"].items():  # the backbone did not
        assert torch.equal(state[name], tensor), name


def test_a_llava_batch_routes_on_its_576_image_tokens(llava, small_world):
    from easyeditor import VQADataset

    trainer = llava["trainer"]
    with compat.cuda_to_cpu():
        ds = VQADataset(str(small_world.split("vqa_eval")), size=2, config=trainer.config)
        batch = ds.collate_fn([ds[0], ds[1]])["edit_inner"]
    _, layout = trainer.model.hidden_states(batch)
    assert layout.image.sum(dim=1).tolist() == [576, 576]


def test_the_plugins_editor_edits_llava(llava, small_world):
    from easyeditor import VQADataset

    hparams = load_hparams("LiveEdit", PROJECT_ROOT / "hparams/LiveEdit/llava.yaml",
                           dict(paths(small_world, llava["folder"]), archive=llava["archive"]))  # fmt: skip
    with compat.cuda_to_cpu():
        editor = MultimodalEditor(hparams)
        assert isinstance(editor.model, LlavaForEditing)
        ds = VQADataset(str(small_world.split("vqa_eval")), size=3, config=hparams)
        metrics, _, _ = editor.edit_dataset(ds, sequential_edit=True, verbose=False)
    assert len(metrics) == 3 and all(set(m["post"]) == METRICS for m in metrics)
    assert all(m["post"]["locality_acc"] == 1.0 for m in metrics)  # text-only questions route to no expert
    assert len(editor_for(editor.model, hparams).library) == 3


def test_the_command_line_edits_llava(llava, small_world, tmp_path):
    overrides = [f"+method.overrides.{k}={v}" for k, v in paths(small_world, llava["folder"]).items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [
        sys.executable, "-m", "easyedit_liveedit", "edit", "model=llava", "method=LiveEdit", "data=mmedit",
        f"data.train_json={small_world.split('vqa_train')}", f"data.eval_json={small_world.split('vqa_eval')}",
        f"method.archive={llava['archive']}", *overrides, "run.edits=[2]",
        "run.threads=1", "run.progress=false", f"run.output_dir={tmp_path}", f"run.archive_dir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (rows_file,) = tmp_path.glob("edit/*/rows.json")
    (row,) = json.loads(rows_file.read_text())
    assert row["status"] == "ok" and row["edits"] == 2 and row["metrics"]["locality_acc"] == 1.0
