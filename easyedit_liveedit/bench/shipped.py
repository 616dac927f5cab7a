"""Trained archives shipped in the repository: written once by ``make artifacts``, verified and unpacked on first use.

A fresh clone cannot meta-train LiveEdit, MEND and SERAC in the minutes a demo has, so the repository carries their
archives for the default toy world: ``artifacts/<world>/archives/<method>.safetensors`` (the archive's weights) and
one ``MANIFEST.json`` holding, per method, the file's sha256 and bytes, what it was trained from (the training
hparams without machine-specific paths, the train file's sha256, the validation size, the sha256 of every backbone
file) and how (the command, the commit, the seconds, the steps).

``unpack`` writes a shipped archive where the runner looks for it (EasyEdit's format, ``{"model": state_dict}``, plus
LiveEdit's trained config, which its loader checks; with a provenance record of this machine) when everything it was
trained from is byte-identical here: the same hparams, the same train file, the same backbone files. A weights file
whose hash differs from the manifest's is refused with an error naming the file; a shipped archive trained from other
inputs is left alone (the runner then trains one) with a warning naming what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..easyedit.archive import CONFIG_KEY
from ..toyworld.artifacts import ARTIFACTS_ROOT, MANIFEST, git_commit, sha256
from . import archives

LOG = logging.getLogger(__name__)

# Keys of a training archive EasyEdit's executors read besides the weights; MEND/SERAC's ``model_config`` (the
# backbone's config object) is only compared and logged by their ``load_state_dict``, so it ships as None.
_NOT_TENSORS = ("model_config",)


def folder(world: str) -> Path:
    """Where the archives of toy world ``world`` ship: ``artifacts/<world>/archives``."""
    return ARTIFACTS_ROOT / world / "archives"


def _inputs(training: Any, train_json: Path, val_size: int) -> dict[str, Any]:
    """What an archive is trained from, free of this machine's paths and times: the provenance record's hparams
    without path keys, the train file's hash, the validation size, and every backbone file's sha256."""
    record = archives.provenance(training, train_json, val_size)
    paths = set(archives.BACKBONE_KEYS) | {"coco_image", "rephrase_image", "archive"}
    hparams = {k: v for k, v in record["hparams"].items() if k not in paths}
    backbone = {}
    for key in archives.BACKBONE_KEYS:
        value = getattr(training, key, None)
        if value and Path(value).exists():
            path = Path(value)
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            backbone[key] = {file.name: sha256(file) for file in files}
    return {"hparams": hparams, "train_json_sha256": record["train_json_sha256"], "val_size": val_size,
            "backbone": backbone}  # fmt: skip


def _read(manifest: Path) -> dict[str, Any]:
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def ship(method: str, archive: Path, training: Any, train_json: Path, val_size: int, dest: Path, command: str) -> Path:
    """Copy the trained ``archive`` of ``method`` into ``dest`` (weights as safetensors) and record it in
    ``dest/MANIFEST.json``; returns the weights file. The archive's training record (``<archive>.training.json``,
    written by ``archives.train_archive``) gives the seconds and steps."""
    checkpoint = torch.load(archive, map_location="cpu", weights_only=False)
    state = checkpoint["model"]
    tensors = {k: v.contiguous().clone() for k, v in state.items() if k not in _NOT_TENSORS}
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{method}.safetensors"
    save_file(tensors, weights)
    trained = archives.training_record(archive)
    manifest = _read(dest / MANIFEST)
    manifest[method] = {
        "file": weights.name,
        "sha256": sha256(weights),
        "bytes": weights.stat().st_size,
        "trained_from": _inputs(training, train_json, val_size),
        # LiveEdit's trained config: the archive's own, else the training hparams' (an archive written before configs
        # were stored); None for the other methods
        CONFIG_KEY: checkpoint.get(CONFIG_KEY) or getattr(training, "config_dict", dict)() or None,
        "training": trained,
        "shipped_by": command,
        "shipped_at": git_commit(),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    LOG.info("%s: shipped %s (%d bytes)", method, weights, weights.stat().st_size)
    return weights


def unpack(method: str, training: Any, train_json: Path, val_size: int, archive: Path, source: Path) -> bool:
    """Write the archive of ``method`` shipped in ``source`` at ``archive`` if it was trained from exactly these
    inputs; returns whether it did.

    Raises:
        ValueError: naming the file, if the shipped weights are missing or their sha256 is not the manifest's.
    """
    entry = _read(source / MANIFEST).get(method)
    if entry is None:
        return False
    weights = source / entry["file"]
    if not weights.is_file():
        raise ValueError(f"{weights}: listed in {source / 'MANIFEST.json'} but missing")
    actual = sha256(weights)
    if actual != entry["sha256"]:
        raise ValueError(f"{weights}: sha256 {actual}, but {source / 'MANIFEST.json'} says {entry['sha256']}")
    here = _inputs(training, train_json, val_size)
    differs = archives.provenance_changes(entry["trained_from"], here)
    if differs is not None:
        LOG.warning("%s: the shipped archive %s was trained from other inputs (changed: %s); not used", method,
                    weights, differs)  # fmt: skip
        return False
    state: dict[str, Any] = dict(load_file(weights))
    state.update({key: None for key in _NOT_TENSORS if entry[CONFIG_KEY] is None})  # MEND's, SERAC's
    archive.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, CONFIG_KEY: entry[CONFIG_KEY], "shipped": entry["file"]}, archive)
    archives.provenance_path(archive).write_text(
        json.dumps(archives.provenance(training, train_json, val_size), indent=1, sort_keys=True) + "\n"
    )
    LOG.info("%s: using the shipped archive %s", method, weights)
    return True
