"""The NaN guard on the toy world's small configuration: EasyEdit's MEND (archive trained by EasyEdit's
MultimodalTrainer) edited in place in fp16, LiveEdit on the same edit sequence, and the CLI as a subprocess.

The small backbone is barely pretrained, so these tests check the mechanics and the two ends of the behaviour
(shipped values stay finite; a large edit lr with trained statistics overflows fp16); the documented
reproduction on the default backbone is the slow test at the end.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import easyedit_liveedit  # noqa: F401  (EasyEdit shims)
from easyedit_liveedit import toyworld
from easyedit_liveedit.bench import nan_guard
from easyedit_liveedit.bench.archives import train_archive
from easyedit_liveedit.diagnostics.guard import rollback_for, run_guarded
from easyedit_liveedit.diagnostics.liveedit_run import build_liveedit, run_liveedit
from easyedit_liveedit.diagnostics.mend_run import run_mend
from easyedit_liveedit.easyedit.hparams import LiveEditMultimodalHparams

ROOT = Path(__file__).resolve().parents[1]
SMALL_INNER = [f"opt_model.model.decoder.layers.{i}.fc{j}.weight" for i in (0, 1) for j in (1, 2)]
EDITS = 10


def _small_yaml(source: Path, world: toyworld.ToyWorld, out: Path, **overrides) -> Path:
    """The shipped toy YAML re-pointed at the small world (2 OPT layers: fc1/fc2 of both are edited)."""
    config = yaml.safe_load(source.read_text())
    config.update(world.hparams_paths())
    config.update(inner_params=SMALL_INNER, **overrides)
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small toy world, a MEND archive trained on it by EasyEdit's MultimodalTrainer, and the edit sequence."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("nan_guard_small")
    world = toyworld.load("small", progress=False)
    train_yaml = _small_yaml(
        ROOT / "hparams/TRAINING/MEND/toy-blip2.yaml", world, tmp / "train.yaml", results_dir=str(tmp), val_steps=4
    )
    easyeditor = pytest.importorskip("easyeditor")
    training = nan_guard.cpu_safe_device(easyeditor.MENDMultimodalTrainingHparams.from_hparams(str(train_yaml)))
    training.max_iters = 40
    archive = train_archive("MEND", training, world.split("vqa_train"), "VQADataset", tmp / "split",
                            world.easyedit_patches, val_size=4)  # fmt: skip
    edit_yaml = _small_yaml(ROOT / "hparams/MEND/toy-blip2.yaml", world, tmp / "edit.yaml", archive=str(archive))
    hparams = nan_guard.load_mend_hparams(str(edit_yaml))
    with nan_guard.easyedit_context(world):
        dataset = nan_guard.load_dataset(hparams, str(world.split("vqa_eval")), EDITS)
        edits, probe = nan_guard.batches(dataset, EDITS, 4)
        backbone = nan_guard.load_backbone(hparams, world)
    return {
        "world": world,
        "hparams": hparams,
        "archive": str(archive),
        "edits": edits,
        "probe": probe,
        "backbone": backbone,
        "edit_yaml": edit_yaml,
        "tmp": tmp,
    }


def _live_hparams() -> LiveEditMultimodalHparams:
    hparams = LiveEditMultimodalHparams.from_hparams(ROOT / "hparams/LiveEdit/blip2.yaml")
    for key, value in dict(
        edit_layer=1, cross_attn_dim=32, num_heads=2, num_key_slots=2, num_sentinel_tokens=4, archive=None
    ).items():
        setattr(hparams, key, value)
    return hparams


def _mend(small, mode: str, scale: float, precision: str = "fp16"):
    with nan_guard.easyedit_context(small["world"]):
        return run_mend(
            copy.deepcopy(small["backbone"]),
            small["hparams"],
            small["archive"],
            small["edits"],
            small["probe"],
            mode=mode,
            edit_lr_scale=scale,
            precision=precision,
        )


def test_mend_at_the_shipped_values_in_easyedits_train_mode_stays_finite(small):
    run = _mend(small, "train", 1.0)
    assert run.failure is None and len(run.edits) == EDITS
    assert run.settings["weights_dtype"] == "float16" and run.settings["normaliser_mode"] == "train"
    assert all(r.largest_relative_update > 0 for r in run.edits)  # every edit did write into the weights


def test_mend_with_trained_statistics_and_a_huge_edit_lr_overflows_fp16_and_liveedit_stays_finite(small):
    # On this barely trained backbone, eval-mode MEND reaches fp16's limit only at a very large edit lr (the
    # threshold moves with the archive: x100 came within 3x of 65504); x3000 is far past it.
    run = _mend(small, "eval", 3000.0)
    failure = run.failure
    assert failure is not None and failure.kind in ("activation_overflow", "weight_overflow")
    assert failure.edit < EDITS and failure.module.rsplit(".", 1)[0] in {n.rsplit(".", 2)[0] for n in SMALL_INNER}
    assert all(r.finite for r in run.edits[: failure.edit])
    # the same edits in fp32 stay finite: the failure is fp16's range, not a NaN in MEND's arithmetic
    assert _mend(small, "eval", 3000.0, precision="fp32").failure is None
    # LiveEdit on the same sequence, same fp16 backbone: finite after every edit, backbone weights untouched
    with nan_guard.easyedit_context(small["world"]):
        live, editor = run_liveedit(
            copy.deepcopy(small["backbone"]),
            _live_hparams(),
            small["edits"],
            small["probe"],
            tracked_weights=SMALL_INNER,
            precision="fp16",
        )
    assert live.failure is None and len(live.edits) == EDITS and len(editor.library) == EDITS
    assert all(w.update_norm == 0 for r in live.edits for w in r.weights)


def test_guard_over_real_liveedit_commits_every_finite_edit(small):
    model = copy.deepcopy(small["backbone"])
    editor, note = build_liveedit(model, _live_hparams())
    assert "freshly initialised" in note
    report = run_guarded(
        small["edits"][:3], editor.add_edits, lambda: editor(small["probe"]), rollback_for(editor), editor
    )
    assert report.committed == [0, 1, 2] and editor.library.ids() == [0, 1, 2]
    assert report.edits[1].changes == ["expert 1"]
    editor.detach_hooks()


def test_cli_prints_the_tables_and_writes_json_and_plot(small):
    out = small["tmp"] / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "easyedit_liveedit.bench.nan_guard",
        "--hparams",
        str(small["edit_yaml"]),
        "--edits",
        "3",
        "--mode",
        "eval",
        "--edit-lr-scale",
        "100",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "== MEND (EasyEdit) ==" in done.stdout and "edit  loss" in done.stdout and "MEND (EasyEdit): " in done.stdout
    )
    data = json.loads((out / "nan_guard.json").read_text())
    assert data["runs"][0]["settings"]["normaliser_mode"] == "eval" and len(data["runs"]) == 1
    assert (out / "nan_guard.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_archive_outside_easyedits_layout_is_named_before_training(small, tmp_path):
    """EasyEdit's trainer can only write <dir>/models/MEND/<model>; any other --archive must fail at once."""
    world = small["world"]
    train_yaml = _small_yaml(ROOT / "hparams/TRAINING/MEND/toy-blip2.yaml", world, tmp_path / "train.yaml")
    edit_yaml = _small_yaml(ROOT / "hparams/MEND/toy-blip2.yaml", world, tmp_path / "edit.yaml")
    args = ["--hparams", str(edit_yaml), "--train-hparams", str(train_yaml), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--archive .*mend\.pt: missing"):
        nan_guard.run(nan_guard.parse_args(args + ["--archive", str(tmp_path / "mend.pt")]))


@pytest.mark.slow
def test_documented_reproduction_on_the_default_backbone(tmp_path):
    """README "NaN guard": on the default toy backbone (fp16 as EasyEdit runs BLIP-2), EasyEdit's MEND with trained
    normaliser statistics and 1000x its learned edit lr goes non-finite within 10 sequential edits in an edited
    layer's fc2 output, while at the shipped values it stays finite; LiveEdit stays finite on the same sequence.

    Trains the MEND archive with EasyEdit's MultimodalTrainer (500 steps of hparams/TRAINING/MEND/toy-blip2.yaml).
    """
    torch.set_num_threads(1)  # as the CLI does: a second thread only slows these small matrices down
    config = yaml.safe_load((ROOT / "hparams/TRAINING/MEND/toy-blip2.yaml").read_text())
    config["results_dir"] = str(tmp_path)
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump(config))
    archive = tmp_path / "models/MEND/blip2"
    common = ["--hparams", str(ROOT / "hparams/MEND/toy-blip2.yaml"), "--archive", str(archive), "--edits", "10"]
    training = ["--train-hparams", str(train_yaml), "--train-steps", "500"]
    live = ["--liveedit-hparams", str(ROOT / "hparams/LiveEdit/toy-blip2.yaml"), "--liveedit-edits", "100"]
    failing = nan_guard.run(
        nan_guard.parse_args(
            common + training + live + ["--mode", "eval", "--edit-lr-scale", "1000", "--out", str(tmp_path / "a")]
        )
    )
    mend, liveedit = failing
    assert mend.failure is not None and mend.failure.kind == "activation_overflow"
    assert mend.failure.edit < 10 and mend.failure.module.endswith("fc2")
    assert liveedit.failure is None and len(liveedit.edits) == 100
    shipped = nan_guard.run(nan_guard.parse_args(common + ["--out", str(tmp_path / "b")]))
    assert shipped[0].failure is None and shipped[0].settings["normaliser_mode"] == "train"
