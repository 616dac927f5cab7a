"""Archives shipped in the repository (``bench/shipped.py``): shipped once, unpacked bit for bit where they fit,
refused with the file's name where they were altered, left alone where they were trained from other inputs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import VAL_SIZE, small_archives, toy_hparams

from easyedit_liveedit.bench import archives, shipped
from easyedit_liveedit.toyworld.artifacts import sha256

METHODS = ("LiveEdit", "MEND", "SERAC")


@pytest.fixture(scope="module")
def shipped_dir(small_world, tmp_path_factory):
    root = small_archives(tmp_path_factory, small_world)
    dest = tmp_path_factory.mktemp("artifacts") / "archives"
    for method in METHODS:
        training = _training(small_world, method, root)
        shipped.ship(method, archives.archive_path(training), training, small_world.split("vqa_train"), VAL_SIZE,
                     dest, "pytest")  # fmt: skip
    return root, dest


def _training(world, method, root):
    from helpers import TRAIN_STEPS

    return toy_hparams(world, method, training=True, max_iters=TRAIN_STEPS, results_dir=str(root))


@pytest.mark.parametrize("method", METHODS)
def test_a_shipped_archive_unpacks_to_the_trained_weights(small_world, shipped_dir, tmp_path, method):
    """Guards that what ships is what was trained, and that unpacking writes EasyEdit's archive format with a
    provenance record the runner accepts. Seen failing with the provenance record left out (the runner would train
    again)."""
    root, dest = shipped_dir
    training = _training(small_world, method, root)
    trained = torch.load(archives.archive_path(training), weights_only=False)["model"]
    target = tmp_path / "archive"
    assert shipped.unpack(method, training, small_world.split("vqa_train"), VAL_SIZE, target, dest)
    unpacked = torch.load(target, weights_only=False)["model"]
    tensors = {k for k, v in trained.items() if isinstance(v, torch.Tensor)}
    assert tensors == {k for k, v in unpacked.items() if isinstance(v, torch.Tensor)}
    assert all(torch.equal(trained[k], unpacked[k]) for k in tensors)
    fresh = archives.provenance(training, small_world.split("vqa_train"), VAL_SIZE)
    assert archives.provenance_changes(json.loads(archives.provenance_path(target).read_text()), fresh) is None
    entry = json.loads((dest / "MANIFEST.json").read_text())[method]
    assert entry["sha256"] == sha256(dest / entry["file"]) and entry["shipped_by"] == "pytest"


def test_an_altered_shipped_file_is_refused_by_name(small_world, shipped_dir, tmp_path):
    """Seen failing with the hash check removed (the altered weights were unpacked)."""
    root, dest = shipped_dir
    copy = tmp_path / "archives"
    copy.mkdir()
    for file in dest.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    weights = copy / "LiveEdit.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    training = _training(small_world, "LiveEdit", root)
    with pytest.raises(ValueError, match="LiveEdit.safetensors: sha256"):
        shipped.unpack("LiveEdit", training, small_world.split("vqa_train"), VAL_SIZE, tmp_path / "a", copy)
    weights.unlink()
    with pytest.raises(ValueError, match="LiveEdit.safetensors: listed in .* but missing"):
        shipped.unpack("LiveEdit", training, small_world.split("vqa_train"), VAL_SIZE, tmp_path / "a", copy)


def test_a_shipped_archive_of_other_inputs_is_not_used(small_world, shipped_dir, tmp_path, caplog):
    """Seen failing with the inputs not compared (an archive of another lora_scale was unpacked)."""
    root, dest = shipped_dir
    training = _training(small_world, "LiveEdit", root)
    training.lora_scale = 7.0
    assert not shipped.unpack("LiveEdit", training, small_world.split("vqa_train"), VAL_SIZE, tmp_path / "a", dest)
    assert not (tmp_path / "a").exists()
    assert "hparams.lora_scale" in caplog.text
