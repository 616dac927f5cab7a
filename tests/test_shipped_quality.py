"""What the repository ships for the default toy world, checked as CI can afford (nothing is rebuilt or retrained).

The fast tests run on both EasyEdit targets: every shipped file matches its manifest's sha256, and the shipped
LiveEdit weights load into the networks its editing YAML builds. The slow tests: every shipped archive fits its method
config as it is (nothing would be retrained), and a quality regression test: a
100-edit LiveEdit sequence on the default world's eval split from the shipped backbone and archive, through
EasyEdit's editing entry and metric code, must keep Reliability >= 0.9 and M-Locality >= 0.95.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from easyedit_liveedit.bench import shipped
from easyedit_liveedit.easyedit.hparams import LiveEditMultimodalHparams
from easyedit_liveedit.liveedit.networks import LiveEditNetwork
from easyedit_liveedit.toyworld.artifacts import ARTIFACTS_ROOT, sha256
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

MANIFESTS = sorted(ARTIFACTS_ROOT.glob("*/*/MANIFEST.json"))


SHIPPED = ("LiveEdit", "MEND", "MEND-tuned", "SERAC", "SERAC-tuned")  # the methods `make artifacts` ships


def test_the_default_world_ships_its_backbone_and_five_archives():
    shipped_files = {path.relative_to(ARTIFACTS_ROOT).as_posix() for path in MANIFESTS}
    assert "scenes/archives/MANIFEST.json" in shipped_files
    assert set(json.loads((shipped.folder("scenes") / "MANIFEST.json").read_text())) == set(SHIPPED)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.parent.relative_to(ARTIFACTS_ROOT).as_posix())
def test_every_shipped_file_matches_its_manifest(manifest):
    """Seen failing with one byte of the shipped LiveEdit weights changed."""
    entries = json.loads(manifest.read_text())
    files = [e for e in (entries.get("files") or entries.values()) if isinstance(e, dict) and "sha256" in e]
    assert files
    for entry in files:
        path = manifest.parent / (entry.get("file") or entry["path"])
        assert sha256(path) == entry["sha256"], path


def test_the_shipped_liveedit_weights_fit_the_editing_yaml():
    hparams = LiveEditMultimodalHparams.from_hparams(PROJECT_ROOT / "hparams/LiveEdit/toy-blip2.yaml")
    net = LiveEditNetwork(64, hparams.liveedit_config())  # the toy OPT's width
    net.load_state_dict(load_file(shipped.folder("scenes") / "LiveEdit.safetensors"))  # strict: names and shapes


def _runner(tmp_path, *overrides: str):
    """A runner on the default toy world whose archives go to ``tmp_path/archives`` (unpacked from what ships)."""
    from hydra import compose, initialize_config_module

    from easyedit_liveedit.bench.config import register_configs
    from easyedit_liveedit.bench.runner import Runner

    register_configs()
    with initialize_config_module("easyedit_liveedit.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=toy", "run.threads=1", "run.progress=false",
                                           f"run.archive_dir={tmp_path / 'archives'}", *overrides])  # fmt: skip
    (tmp_path / "run").mkdir()
    return Runner(cfg, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("label", SHIPPED)
def test_every_shipped_archive_fits_its_method_config(tmp_path, monkeypatch, label):
    """Guards the shipped archives against a YAML or code change that would make `make demo` and `compare` train
    them again: each unpacks for its method config as it is. Seen failing for MEND-tuned with its `questions` key
    removed (its archive was trained on the editor's rendering)."""
    from easyedit_liveedit.bench import archives
    from easyedit_liveedit.bench.config import method_config

    def train(method, *args, **kwargs):
        raise AssertionError(f"{label}: the shipped archive did not fit; the runner would train {method} again")

    monkeypatch.setattr(archives, "train_archive", train)
    runner = _runner(tmp_path, "command=train")
    run = runner.method_run(method_config(runner.cfg, label))
    run.prepare()
    assert torch.load(run.hparams.archive, weights_only=False)["shipped"] == f"{label}.safetensors"


@pytest.mark.slow
def test_a_100_edit_liveedit_sequence_from_the_shipped_artifacts_keeps_its_quality(tmp_path):
    """The regression test of LiveEdit's quality: seen failing with the unpacked weights halved (Reliability 0.03).
    It also fails when the shipped archive no longer fits today's training YAML and is retrained instead."""
    runner = _runner(tmp_path, "command=edit", "method=LiveEdit", "run.edits=[100]", "run.probe_limit=20")
    torch.set_num_threads(1)
    runner.edit()
    (archive,) = (tmp_path / "archives").rglob("blip2")
    assert torch.load(archive, weights_only=False).get("shipped"), "the shipped archive did not fit: it was retrained"
    (row,) = runner.rows
    assert row.status == "ok", row.status
    assert row.metrics["rewrite_acc"] >= 0.9, row.metrics
    assert row.metrics["multimodal_locality_acc"] >= 0.95, row.metrics


@pytest.mark.slow
def test_routing_leaves_other_subjects_exactly_unedited_and_edits_the_edited_ones():
    """Routing end to end on the default world with the shipped archive: after edits about four distinct subjects, a
    question about a never-edited subject (each record's ``m_loc``) gets exactly the unedited model's logits, and the
    edited questions do not. Seen failing with the hard filter's bar lowered so that every expert fires."""
    from easyeditor.evaluate import prepare_multimodal_edit

    from easyedit_liveedit import LiveEdit, toyworld
    from easyedit_liveedit.toyworld.evaluate import ImageLoader

    torch.set_num_threads(1)
    world = toyworld.load(progress=False)
    hparams = world.apply_paths(
        LiveEditMultimodalHparams.from_hparams(PROJECT_ROOT / "hparams/LiveEdit/toy-blip2.yaml")
    )
    editor = LiveEdit(world.load_model(), hparams).eval()
    editor.load_state_dict(load_file(shipped.folder("scenes") / "LiveEdit.safetensors"))
    records = json.loads(world.split("vqa_eval").read_text())[:4]
    load, tok = ImageLoader(world.layout.images, world.config.image_size), world.tokenizer()

    def batch(fields: tuple[str, str, str]) -> dict:
        image, question, answer = fields
        made = [prepare_multimodal_edit(hparams, tok, r[answer], r[question], load(r[image])[None]) for r in records]
        return {"image": torch.cat([s["image"] for s in made]), "text_input": [s["text_input"][0] for s in made],
                "prompts_len": [s["prompts_len"][0] for s in made], "labels": [""] * len(made)}  # fmt: skip

    edits, unrelated = batch(("image", "src", "alt")), batch(("m_loc", "m_loc_q", "m_loc_a"))
    assert len({r["image"] for r in records}) == len(records)  # four distinct subjects
    with torch.no_grad():
        editor.add_edits(edits)
        assert torch.equal(editor(unrelated).logits, editor.model(unrelated).logits)
        changed = (editor(edits).logits - editor.model(edits).logits).abs().flatten(1).amax(1)  # (4,)
    assert bool((changed > 1e-3).all()), changed
