"""``build`` / ``load``: make (or reuse) a toy world in the cache and hand back what EasyEdit needs to run on it.

Two worlds, each in its own subpackage: ``digits/`` (``ToyWorldConfig``) and ``scenes/`` (``SceneWorldConfig``);
each has a ``build.write_data`` (images and records, seconds) and a ``build.build_into`` that writes a complete
world into a folder. A world is made only when its folder is missing or was built from a different configuration
(``WorldConfig.fingerprint``): from the backbone shipped for that configuration (``artifacts.py``: data rebuilt,
backbone copied and checked, no pretraining) where there is one, else from scratch. Either way the world is
written into a temporary folder that is renamed at the end, so an interrupted build never leaves a half-written
world behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import artifacts, backbone, serac
from .digits import build as digits_build
from .digits.config import DIGITS, SMALL, ToyWorldConfig
from .layout import FORMAT_VERSION, Layout, cache_root
from .scenes import build as scenes_build
from .scenes.config import SCENES, SCENES_SMALL, SceneWorldConfig

LOG = logging.getLogger(__name__)

CONFIGS = {config.name: config for config in (SCENES, SCENES_SMALL, DIGITS, SMALL)}
DEFAULT_CONFIG = "scenes"  # the world every command uses unless told otherwise (`model=toy`)

# Only the final scoring (the harness's `compare` / `edit`, and the world's own manifest, written once at build
# time) reads these; probes, ablations and choices of settings read the dev split (vqa_dev, caption_dev).
EVAL_SPLITS = ("eval", "vqa_eval", "caption_eval")  # "eval": both, where a caller names the split without a kind


def probe_split(name: str) -> str:
    """``name`` if a probe may read that split, else a ``ValueError`` that says which split to use instead."""
    if name in EVAL_SPLITS:
        raise ValueError(
            f"split {name!r} is an eval split, which only the final scoring reads: probes, ablations and choices "
            f"of settings read the dev split ({name.replace('eval', 'dev')!r}), carved from the train split"
        )
    return name


@dataclass(frozen=True)
class ToyWorld:
    """A built toy world: its configuration, its files and its manifest (sizes, timing, accuracy)."""

    config: ToyWorldConfig | SceneWorldConfig
    layout: Layout
    manifest: dict

    def hparams_paths(self) -> dict[str, str]:
        """The hparams keys that point EasyEdit at this world (what the toy YAMLs hold for the default cache)."""
        return {
            "name": str(self.layout.opt),
            "tokenizer_name": str(self.layout.opt),
            "qformer_name_or_path": str(self.layout.qformer),
            "state_dict_file": str(self.layout.vision_weights),
            "qformer_checkpoint": str(self.layout.checkpoint),
            "coco_image": str(self.layout.images),
            "rephrase_image": str(self.layout.images),
        }

    def apply_paths(self, hparams: Any) -> Any:
        """Point an EasyEdit hparams object at this world (e.g. when the cache root was overridden); returns it.

        SERAC's hparams (those with ``small_name`` / ``cls_name``) also get the toy OPT as the counterfactual model
        and the toy scope classifier, which is written on first use (``toyworld/serac.py``).
        """
        for key, value in self.hparams_paths().items():
            setattr(hparams, key, value)
        if hasattr(hparams, "small_name"):
            hparams.small_name = str(self.layout.opt)
        if hasattr(hparams, "cls_name"):
            hparams.cls_name = str(self.scope_classifier())
        return hparams

    def scope_classifier(self) -> Path:
        """SERAC's scope classifier for this world (a seeded random tiny BERT), written if missing."""
        return serac.write_scope_classifier(self.layout.qformer / "vocab.txt", self.layout.scope_classifier)

    @contextlib.contextmanager
    def easyedit_patches(self) -> Iterator[None]:
        """Context in which EasyEdit's constructors (get_model, MultimodalEditor, datasets) build this world."""
        with backbone.easyedit_patches(self.layout, self.config.image_size):
            yield

    def load_model(self) -> torch.nn.Module:
        """The pretrained backbone, built by EasyEdit's own ``Blip2OPT`` constructor call, in eval mode."""
        return backbone.load_trained(self.layout, self.config.image_size, self.config.num_query_tokens)

    def tokenizer(self):
        """The OPT-side tokenizer (``GPT2Tokenizer``)."""
        return backbone.load_tokenizer(self.layout)

    def split(self, name: str) -> Path:
        """Path of a data file: ``vqa_train``, ``vqa_eval``, ``caption_train``, ``caption_eval``, ..."""
        return self.layout.split(name)


def _resolve(config: str | ToyWorldConfig | SceneWorldConfig) -> ToyWorldConfig | SceneWorldConfig:
    if isinstance(config, ToyWorldConfig | SceneWorldConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(
            f"toy world config {config!r}: expected one of {sorted(CONFIGS)}, a ToyWorldConfig or a SceneWorldConfig"
        )
    return CONFIGS[config]


def _world_module(config: ToyWorldConfig | SceneWorldConfig):
    """The subpackage module that writes this world: ``write_data`` (images and records) and ``build_into``."""
    return scenes_build if isinstance(config, SceneWorldConfig) else digits_build


def _is_current(layout: Layout, config: ToyWorldConfig | SceneWorldConfig) -> bool:
    if not layout.manifest.is_file():
        return False
    manifest = json.loads(layout.manifest.read_text())
    return manifest.get("fingerprint") == config.fingerprint() and manifest.get("format") == FORMAT_VERSION


def build(
    config: str | ToyWorldConfig | SceneWorldConfig = DEFAULT_CONFIG,
    cache: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate_limit: int | None = 100,
    artifacts_root: str | Path | None = None,
) -> ToyWorld:
    """Make the toy world unless an identical one is cached: from its shipped backbone where there is one, else
    from scratch (data, tokenizers, pretrained backbone).

    Args:
        config: a name in ``CONFIGS`` (``"scenes"``, the default; ``"scenes_small"``, ``"digits"``, ``"small"``), a
            ``ToyWorldConfig`` (the digits world, ``digits/``) or a ``SceneWorldConfig`` (the scenes world,
            ``scenes/``).
        cache: cache root (default ``$EASYEDIT_LIVEEDIT_CACHE`` or ``<project>/.cache/toyworld``).
        force: build from scratch even if a current build is cached or a shipped backbone exists.
        progress: show the pretraining progress bar.
        evaluate_limit: records per kind for the manifest's pre-edit accuracy (None: all).
        artifacts_root: where shipped backbones are looked for (default: the project's ``artifacts/``;
            ``artifacts.find``).

    Returns:
        The ``ToyWorld``; its files are at ``<cache>/<config.name>/``.

    Invariants: a world installed from a shipped backbone holds the shipped files byte for byte and data that
    hash as the shipped manifest records (else ``artifacts.ArtifactError``), and nothing is pretrained for it.
    """
    config = _resolve(config)
    root = (Path(cache) if cache is not None else cache_root()) / config.name
    layout = Layout(root)
    if not force and _is_current(layout, config):
        return ToyWorld(config, layout, json.loads(layout.manifest.read_text()))

    started = time.perf_counter()
    work = Layout(root.with_name(f"{root.name}.building-{os.getpid()}"))
    shutil.rmtree(work.root, ignore_errors=True)
    shipped = None if force else artifacts.find(config, artifacts_root)
    try:
        if shipped is not None:
            # Only what takes seconds is rebuilt (images and records); the backbone is copied in and checked.
            LOG.info("toy world %r: installing the shipped backbone from %s (data rebuilt here)", config.name, shipped)
            _world_module(config).write_data(config, work)
            artifacts.install(shipped, work)
            manifest = json.loads(work.manifest.read_text())  # the shipped world's, with its measured figures
        else:
            LOG.info("toy world %r: building from scratch (data, tokenizers, pretraining)", config.name)
            built = _world_module(config).build_into(config, work, progress, evaluate_limit)
            manifest = {"format": FORMAT_VERSION, "fingerprint": config.fingerprint()} | built
            manifest["build_seconds"] = round(time.perf_counter() - started, 1)
            work.manifest.write_text(json.dumps(manifest, indent=2))
    except BaseException:
        shutil.rmtree(work.root, ignore_errors=True)  # never leave a half-made world behind
        raise
    shutil.rmtree(root, ignore_errors=True)
    os.replace(work.root, root)
    LOG.info("toy world %r ready in %.1f s at %s", config.name, time.perf_counter() - started, root)
    return ToyWorld(config, layout, manifest)


def load(
    config: str | ToyWorldConfig | SceneWorldConfig = DEFAULT_CONFIG,
    cache: str | Path | None = None,
    progress: bool = True,
    artifacts_root: str | Path | None = None,
) -> ToyWorld:
    """The cached toy world, made first (from its shipped backbone where there is one) if missing or out of date."""
    return build(config, cache=cache, force=False, progress=progress, artifacts_root=artifacts_root)
