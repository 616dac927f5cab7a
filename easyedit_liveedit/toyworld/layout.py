"""Where a built toy world lives on disk (one folder per configuration under the cache root).

<cache>/<config name>/
    manifest.json            configuration, fingerprint, sizes, pretraining time and accuracy
    images/scenes/*.png      canonical renderings (scenes world; the digits world: images/digits/NNNN.png), hparams
                             `coco_image` = images/
    images/views/*.png       the subject's other rendering or view (`rephrase_image` = images/)
    data/{vqa,caption}_{train,dev,eval}.json                      MMEdit E-VQA / E-IC records
    data/classification.json, data/text_facts.json               EMT-style probe, text-only knowledge
    opt/                     OPT config + weights (save_pretrained) + GPT-2 style tokenizer (`name`)
    qformer/                 BERT config + weights + WordPiece vocab.txt (`qformer_name_or_path`)
    vision/                  ToyViT config.json + model.safetensors (`state_dict_file`)
    blip2.safetensors        the full Blip2OPT state (`qformer_checkpoint`, loaded by easyedit_shims.blip2_checkpoint)
    serac-scope-bert/        SERAC's scope classifier (`cls_name`), written on first use (toyworld/serac.py)
    installed-from.json      only in a world installed from a shipped backbone: its MANIFEST.json (artifacts.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "EASYEDIT_LIVEEDIT_CACHE"
FORMAT_VERSION = 2  # of a built world's folder; a world of another format is rebuilt
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """The cache root: ``$EASYEDIT_LIVEEDIT_CACHE`` if set, else ``.cache/toyworld`` under the project root."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else PROJECT_ROOT / ".cache" / "toyworld"


@dataclass(frozen=True)
class Layout:
    """Paths of one built toy world."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """``vqa_train``, ``vqa_eval``, ``caption_train``, ``caption_eval``, ``classification``, ``text_facts``."""
        return self.data / f"{name}.json"

    @property
    def opt(self) -> Path:
        return self.root / "opt"

    @property
    def qformer(self) -> Path:
        return self.root / "qformer"

    @property
    def vision(self) -> Path:
        return self.root / "vision"

    @property
    def vision_weights(self) -> Path:
        return self.vision / "model.safetensors"

    @property
    def checkpoint(self) -> Path:
        return self.root / "blip2.safetensors"

    @property
    def scope_classifier(self) -> Path:
        return self.root / "serac-scope-bert"

    @property
    def installed_from(self) -> Path:
        return self.root / "installed-from.json"
