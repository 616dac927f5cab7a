"""Shipped backbones (``toyworld/artifacts.py``) on the test-sized digits world: ship a built world, install it into a
fresh cache without pretraining, and refuse every file that differs from what ``MANIFEST.json`` records.

Each test that guards a check says in its docstring which mutation of ``artifacts.py`` it was seen failing with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import easyedit_liveedit  # noqa: F401  (applies the EasyEdit shims)
from easyedit_liveedit import toyworld
from easyedit_liveedit.toyworld import artifacts
from easyedit_liveedit.toyworld.digits import build as digits_build
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT
from easyedit_liveedit.toyworld.scenes import build as scenes_build


class PretrainingRan(AssertionError):
    pass


@pytest.fixture()
def no_pretraining(monkeypatch):
    """Pretraining of either world raises: the installed path must never reach it."""

    def refuse(*args, **kwargs):
        raise PretrainingRan("pretraining ran")

    monkeypatch.setattr(digits_build, "pretrain", refuse)
    monkeypatch.setattr(scenes_build, "pretrain_scenes", refuse)


@pytest.fixture()
def shipped(small_world, tmp_path):
    """The session's small world shipped into ``<tmp>/artifacts/small/backbone``; returns the artifacts root."""
    root = tmp_path / "artifacts"
    artifacts.ship(small_world, artifacts.artifact_dir("small", root), "test", small_world.manifest["build_seconds"])
    return root


def _install(tmp_path, root):
    return toyworld.load("small", cache=tmp_path / "fresh", progress=False, artifacts_root=root)


def _left_nothing(tmp_path) -> bool:
    """Neither the world nor a half-made ``.building-*`` folder is left in the fresh cache."""
    return not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def test_a_shipped_backbone_installs_bit_identical_without_pretraining(small_world, shipped, tmp_path, no_pretraining):
    """Guards the installed path: the world comes out with the built world's weights, records and manifest, and
    pretraining never runs. Seen failing with ``find`` returning None (artifacts ignored): the patched
    pretraining raised."""
    world = _install(tmp_path, shipped)
    assert world.layout.root == tmp_path / "fresh" / "small"
    source = json.loads(world.layout.installed_from.read_text())["source"]
    assert source == str(artifacts.artifact_dir("small", shipped))
    assert world.manifest == small_world.manifest
    for name in ("vqa_train", "vqa_dev", "vqa_eval", "caption_train", "caption_eval", "classification", "text_facts"):
        assert world.split(name).read_text() == small_world.split(name).read_text(), name
    for relative in artifacts._shipped_files(small_world.layout):
        assert (world.layout.root / relative).read_bytes() == (small_world.layout.root / relative).read_bytes()
    ours, theirs = world.load_model().state_dict(), load_file(str(small_world.layout.checkpoint))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = toyworld.load("small", cache=tmp_path / "fresh", progress=False, artifacts_root=shipped)
    assert again.manifest == world.manifest  # cached now: recognised as current


def test_a_flipped_byte_in_a_shipped_weight_file_is_named(shipped, tmp_path, no_pretraining):
    """Guards the sha256 check of every shipped file. Seen failing with the comparison of the copied file's sha256
    removed from ``install`` (the corrupt world installed)."""
    weights = artifacts.artifact_dir("small", shipped) / "opt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match=r"opt/model\.safetensors: sha256 [0-9a-f]{64}, but .* records"):
        _install(tmp_path, shipped)
    assert _left_nothing(tmp_path)


def test_a_missing_shipped_file_is_named(shipped, tmp_path, no_pretraining):
    """Guards that every file the manifest records is there. Seen failing with ``install`` skipping a missing file
    (``continue`` instead of the error): the world installed without its vision weights."""
    (artifacts.artifact_dir("small", shipped) / "vision" / "model.safetensors").unlink()
    with pytest.raises(artifacts.ArtifactError, match=r"vision/model\.safetensors: missing"):
        _install(tmp_path, shipped)
    assert _left_nothing(tmp_path)


def test_a_data_rebuild_that_drifts_is_named(shipped, tmp_path, no_pretraining, monkeypatch):
    """Guards the data check: records rebuilt differently from those the backbone was shipped with are refused,
    naming the file. Seen failing with the loop over ``manifest["data"]`` removed from ``install``."""
    write_data = digits_build.write_data

    def drifting(config, layout):
        out = write_data(config, layout)
        path = layout.split("vqa_eval")
        records = json.loads(path.read_text())
        records[0]["alt"] = "drifted"
        path.write_text(json.dumps(records, indent=1))
        return out

    monkeypatch.setattr(digits_build, "write_data", drifting)
    with pytest.raises(artifacts.ArtifactError, match=r"data/vqa_eval\.json: the data rebuild drifted .* expected"):
        _install(tmp_path, shipped)
    assert _left_nothing(tmp_path)


def test_images_that_drift_are_refused(shipped, tmp_path, no_pretraining, monkeypatch):
    """Guards the images' pixel digest: one changed pixel of one rebuilt image is refused. Seen failing with the
    ``pixel_digest`` comparison removed from ``install``."""
    write_data = digits_build.write_data

    def drifting(config, layout):
        out = write_data(config, layout)
        from PIL import Image

        path = sorted((layout.images / "digits").glob("*.png"))[0]
        with Image.open(path) as image:
            image = image.convert("RGB")
        image.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
        image.save(path)
        return out

    monkeypatch.setattr(digits_build, "write_data", drifting)
    with pytest.raises(artifacts.ArtifactError, match=r"images/: the rebuilt images drifted"):
        _install(tmp_path, shipped)


def test_a_backbone_shipped_for_another_fingerprint_is_not_used(shipped, tmp_path):
    """Guards the fingerprint match: a configuration that differs from the shipped one (same name) is built from
    scratch, not given the other configuration's backbone. Seen failing with the fingerprint left out of ``find``'s
    comparison (the other world's backbone installed)."""
    other = dataclasses.replace(toyworld.SMALL, steps=toyworld.SMALL.steps + 1)
    assert artifacts.find(other, shipped) is None and artifacts.find(toyworld.SMALL, shipped) is not None
    world = toyworld.build(other, cache=tmp_path / "fresh", progress=False, evaluate_limit=1, artifacts_root=shipped)
    assert not world.layout.installed_from.exists() and world.manifest["fingerprint"] == other.fingerprint()


def test_force_builds_from_scratch_even_with_a_shipped_backbone(shipped, tmp_path, no_pretraining):
    """``force=True`` never installs: it pretrains (here the patched pretraining raises) and leaves no half world."""
    with pytest.raises(PretrainingRan):
        toyworld.build("small", cache=tmp_path / "fresh", force=True, progress=False, artifacts_root=shipped)
    assert _left_nothing(tmp_path)


def test_the_command_line_ships_a_world_with_its_manifest(small_world, tmp_path):
    """``python -m easyedit_liveedit.toyworld --ship`` (what ``make artifacts`` runs) ships the cached world: every
    file with its sha256 and size, the data hashes, the configuration, the command and the commit."""
    root = tmp_path / "artifacts"
    cache = small_world.layout.root.parent
    command = [sys.executable, "-m", "easyedit_liveedit.toyworld", "--config", "small", "--cache", str(cache),
               "--artifacts", str(root), "--ship", "--json"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["fingerprint"] == toyworld.SMALL.fingerprint()
    manifest = json.loads((artifacts.artifact_dir("small", root) / artifacts.MANIFEST).read_text())
    assert (manifest["config"], manifest["fingerprint"]) == ("small", toyworld.SMALL.fingerprint())
    assert manifest["command"].endswith("--config small --cache " + f"{cache} --artifacts {root} --ship --json")
    assert manifest["seconds"] == small_world.manifest["build_seconds"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert manifest["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    paths = {entry["path"] for entry in manifest["files"]}
    assert {"blip2.safetensors", "manifest.json", "opt/model.safetensors", "opt/vocab.json", "qformer/vocab.txt",
            "qformer/model.safetensors", "vision/model.safetensors"} <= paths  # fmt: skip
    for entry in manifest["files"]:
        shipped = artifacts.artifact_dir("small", root) / entry["path"]
        assert artifacts.sha256(shipped) == entry["sha256"] and shipped.stat().st_size == entry["bytes"]
    assert {entry["path"] for entry in manifest["data"]} == {
        f"data/{name}.json" for name in ("vqa_train", "vqa_dev", "vqa_eval", "caption_train", "caption_dev",
                                         "caption_eval", "classification", "text_facts")
    }  # fmt: skip
