"""Shipped backbones: the files of a built world that pretraining produced, kept in the repository and verified
when a world is installed from them instead of pretrained.

``ship(world, dest_dir, command, seconds)`` copies what cannot be rebuilt in seconds (the OPT folder with its
weights, config and tokenizer files, the Q-Former folder, the vision weights, the full BLIP-2 checkpoint and the
world's ``manifest.json`` with its measured pre-edit accuracy) into ``dest_dir`` and writes ``MANIFEST.json``:
every file's relative path, sha256 and size; the configuration's name and fingerprint; the command, the git commit
and the seconds that produced the world; and the sha256 of every data file (the records JSONs) and a digest of the
images' pixels, which a data-only rebuild must reproduce. The repository keeps them at
``artifacts/<config name>/backbone/`` (``make artifacts``).

``world.build`` uses them when the world is not cached and ``find`` returns a folder for the same configuration
name, fingerprint and on-disk format: it writes only the data (images and records, seconds), then ``install``
checks the data against the manifest and copies the shipped files in, checking every sha256. Any difference
raises ``ArtifactError`` naming the file (and both hashes); nothing is pretrained on that path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .config import WorldConfig
from .layout import FORMAT_VERSION, PROJECT_ROOT, Layout

LOG = logging.getLogger(__name__)

ARTIFACTS_ROOT = PROJECT_ROOT / "artifacts"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
# What pretraining produced, relative to a world's folder (``layout.py``); everything else is rebuilt in seconds.
SHIPPED = ("opt", "qformer", "vision", "blip2.safetensors", "manifest.json")


class ArtifactError(RuntimeError):
    """A shipped file or a rebuilt data file is missing or differs from what ``MANIFEST.json`` records."""


def artifact_dir(config_name: str, root: str | Path | None = None) -> Path:
    """The shipped backbone folder of ``config_name``: ``<root>/<config_name>/backbone`` (root: ``artifacts/``)."""
    return Path(root if root is not None else ARTIFACTS_ROOT) / config_name / "backbone"


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pixel_digest(images: Path) -> dict:
    """``{"files", "sha256"}`` over every PNG under ``images``: each one's relative path and decoded RGB pixels.

    Pixels rather than file bytes, so that another zlib (another PNG encoding of the same image) is no drift.
    """
    digest, count = hashlib.sha256(), 0
    for path in sorted(images.rglob("*.png")):
        digest.update(path.relative_to(images).as_posix().encode() + b"\0")
        with Image.open(path) as image:
            digest.update(np.asarray(image.convert("RGB")).tobytes())
        count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def _entries(root: Path, relative: list[Path]) -> list[dict]:
    return [{"path": p.as_posix(), "sha256": sha256(root / p), "bytes": (root / p).stat().st_size} for p in relative]


def _shipped_files(layout: Layout) -> list[Path]:
    """The relative paths of every file ``ship`` copies, sorted."""
    files = []
    for name in SHIPPED:
        path = layout.root / name
        if not path.exists():
            raise ArtifactError(f"{path}: missing from the built world, so it cannot be shipped")
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sorted(p.relative_to(layout.root) for p in files)


def _data_files(layout: Layout) -> list[Path]:
    """The rebuilt data files whose hashes ``MANIFEST.json`` records: every records JSON under ``data/``."""
    return sorted(p.relative_to(layout.root) for p in layout.data.glob("*.json"))


def git_commit() -> dict:
    """``{"git_commit", "git_dirty"}`` of the project checkout (None where git or the checkout is missing)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    except OSError:
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def ship(world, dest_dir: str | Path, command: str, seconds: float) -> Path:
    """Copy a built world's backbone into ``dest_dir`` and write its ``MANIFEST.json``; returns the manifest's path.

    Args:
        world: a built ``ToyWorld`` (its manifest's fingerprint must be its configuration's).
        dest_dir: the artifact folder (``artifact_dir(world.config.name)`` for the repository's); replaced whole.
        command: the command that produced the world (recorded).
        seconds: how long producing it took (recorded).

    Returns:
        ``dest_dir / "MANIFEST.json"``.
    """
    layout, config = world.layout, world.config
    if world.manifest.get("fingerprint") != config.fingerprint():
        raise ArtifactError(
            f"{layout.manifest}: fingerprint {world.manifest.get('fingerprint')!r} is not the configuration's "
            f"{config.fingerprint()!r}; build the world again before shipping it"
        )
    dest = Path(dest_dir)
    files = _shipped_files(layout)
    staging = dest.with_name(dest.name + ".shipping")
    shutil.rmtree(staging, ignore_errors=True)
    for relative in files:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layout.root / relative, staging / relative)
    manifest = {
        "format": MANIFEST_FORMAT,
        "config": config.name,
        "fingerprint": config.fingerprint(),
        "world_format": FORMAT_VERSION,
        "command": command,
        **git_commit(),
        "seconds": round(float(seconds), 1),
        "files": _entries(staging, files),  # hashed as copied: what the repository holds
        "data": _entries(layout.root, _data_files(layout)),
        "images": pixel_digest(layout.images),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    total = sum(entry["bytes"] for entry in manifest["files"])
    LOG.info("shipped %d files (%.1f MB) of toy world %r to %s", len(files), total / 1e6, config.name, dest)
    return dest / MANIFEST


def find(config: WorldConfig, root: str | Path | None = None) -> Path | None:
    """The shipped backbone folder for ``config``, or None where there is none or it is for another configuration.

    A folder counts only with the same configuration name, fingerprint and world format as ``config``; another
    one is logged and ignored (the world is then built from scratch).
    """
    folder = artifact_dir(config.name, root)
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    shipped = (manifest.get("config"), manifest.get("fingerprint"), manifest.get("world_format"))
    wanted = (config.name, config.fingerprint(), FORMAT_VERSION)
    if shipped != wanted:
        LOG.info(
            "toy world %r: the shipped backbone at %s is for (config, fingerprint, format) %s, not %s; not used",
            config.name,
            folder,
            shipped,
            wanted,
        )
        return None
    return folder


def install(source: Path, work: Layout) -> dict:
    """Check the rebuilt data in ``work`` against ``source``'s manifest, then copy the shipped files in, checked.

    Args:
        source: a shipped backbone folder (from ``find``).
        work: a world folder that holds the freshly written data (images and records) and nothing else yet.

    Returns:
        The ``MANIFEST.json`` record, with ``"installed_seconds"`` (copying and checking) added; it is written to
        ``work.installed_from``.

    Raises:
        ArtifactError: a data file differs from the one the backbone was shipped with (data drift), or a shipped
            file is missing or its sha256 differs from the manifest's; the message names the file and both hashes.
    """
    started = time.perf_counter()
    manifest = json.loads((source / MANIFEST).read_text())
    # The data this backbone was pretrained and measured on: rebuilt here, it must come out the same.
    for entry in manifest["data"]:
        path = work.root / entry["path"]
        if not path.is_file():
            raise ArtifactError(f"{entry['path']}: the data rebuild wrote no such file, which {source} records")
        actual = sha256(path)
        if actual != entry["sha256"]:
            raise ArtifactError(
                f"{entry['path']}: the data rebuild drifted from the data the shipped backbone in {source} was built "
                f"with (sha256 {actual}, expected {entry['sha256']}); rebuild the world (force=True) and ship it again"
            )
    written = {p.relative_to(work.root).as_posix() for p in work.data.glob("*.json")}
    extra = sorted(written - {entry["path"] for entry in manifest["data"]})
    if extra:
        raise ArtifactError(f"{extra[0]}: the data rebuild wrote a file that {source / MANIFEST} does not record")
    pixels = pixel_digest(work.images)
    if pixels != manifest["images"]:
        raise ArtifactError(
            f"images/: the rebuilt images drifted from those the shipped backbone in {source} was built with "
            f"({pixels['files']} files, pixel sha256 {pixels['sha256']}; expected {manifest['images']['files']} "
            f"files, {manifest['images']['sha256']})"
        )
    # The backbone itself: every file copied, then checked where it landed.
    for entry in manifest["files"]:
        shipped, target = source / entry["path"], work.root / entry["path"]
        if not shipped.is_file():
            raise ArtifactError(f"{shipped}: missing; {source / MANIFEST} records it (sha256 {entry['sha256']})")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, target)
        actual = sha256(target)
        if actual != entry["sha256"]:
            raise ArtifactError(f"{shipped}: sha256 {actual}, but {source / MANIFEST} records {entry['sha256']}")
    record = manifest | {"source": str(source), "installed_seconds": round(time.perf_counter() - started, 2)}
    work.installed_from.write_text(json.dumps(record, indent=1) + "\n")
    return record
