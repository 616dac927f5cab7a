"""Build the digits world: images, MMEdit records, tokenizers and the pretrained backbone, in one folder.

One ``load_digits`` scan per subject (near-duplicate subjects: two scans of one digit look alike, which is what
this world stresses). ``world.build`` dispatches here for a ``ToyWorldConfig`` and renames the folder at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch

from ...easyedit.validate import validate_file
from .. import backbone
from ..evaluate import ImageLoader, pre_edit_accuracy
from ..facts import text_facts
from ..layout import Layout
from ..records import write_json
from ..scans import Pools, load_scans
from ..tokenizer import train_opt_tokenizer, train_qformer_vocab
from . import facts, images, records
from .config import ToyWorldConfig
from .pretrain import pretrain


def write_data(config: ToyWorldConfig, layout: Layout) -> tuple[Pools, np.ndarray]:
    """Images, MMEdit records, the classification split and the text facts; returns the pools and all labels."""
    scans, labels = load_scans()
    sizes = (config.n_train_images, config.n_eval_images, config.n_mloc_images, config.n_cls_images)
    pools = Pools.split(labels, sizes, config.seed, config.n_dev_images)
    every = pools.train + pools.dev + pools.eval + pools.mloc + pools.cls
    paths = images.write_images(scans, every, layout.images, config.png_size, config.seed)
    for split, pool in (("train", pools.train), ("dev", pools.dev), ("eval", pools.eval)):
        write_json(records.vqa_records(pool, labels, paths, pools.mloc, config.seed), layout.split(f"vqa_{split}"))
        caption = records.caption_records(pool, labels, paths, pools.mloc, config.seed)
        write_json(caption, layout.split(f"caption_{split}"))
    write_json(records.classification_records(pools.cls, labels, paths), layout.split("classification"))
    write_json(text_facts(), layout.split("text_facts"))
    for name in ("vqa_train", "vqa_dev", "vqa_eval", "caption_train", "caption_dev", "caption_eval"):
        validate_file(layout.split(name), layout.images)
    return pools, labels


def _image_tensor(layout: Layout, relative: list[str], image_size: int) -> torch.Tensor:
    loader = ImageLoader(layout.images, image_size)
    return torch.stack([loader(path) for path in relative])


def build_into(config: ToyWorldConfig, work: Layout, progress: bool, evaluate_limit: int | None) -> dict:
    """Write a complete digits world into ``work`` and return its manifest (``world.build`` adds the format, the
    fingerprint and the build time, and renames the folder).

    Steps: data (images, records) -> tokenizers on the world's own text -> a fresh ``Blip2OPT`` (EasyEdit's
    constructor) -> pretraining -> save -> pre-edit accuracy through EasyEdit's metric code on the saved files.
    """
    pools, labels = write_data(config, work)
    corpus = facts.all_text()
    train_opt_tokenizer(corpus, work.opt)
    qformer_vocab = train_qformer_vocab(corpus, work.qformer)
    tok = backbone.load_tokenizer(work)
    backbone.write_fresh_backbone(config, work, len(tok), qformer_vocab)
    model = backbone.construct(work, config.num_query_tokens)

    # Pretraining sees the whole train pool, its dev scans included: canonical views, then the other views. Unlike
    # the scenes world's, the digits world's dev scans are held out from meta-training only, so that its backbone
    # stays the one every figure of the digits world was measured on (without them, 800 scans, double's
    # image_rephrase fell from 0.98 to 0.87 on the eval split; BENCHMARKS.md, "Toy world").
    pretraining_pool = sorted(pools.train + pools.dev)
    relative = [f"digits/{i:04d}.png" for i in pretraining_pool] + [f"views/{i:04d}.png" for i in pretraining_pool]
    train_images = _image_tensor(work, relative, config.image_size)
    heldout_images = _image_tensor(work, [f"digits/{i:04d}.png" for i in pools.eval], config.image_size)
    result = pretrain(
        model,
        tok,
        config,
        train_images,
        [int(labels[i]) for i in pretraining_pool],
        heldout_images,
        [int(labels[i]) for i in pools.eval],
        progress=progress,
    )
    backbone.save_trained(model, work)

    # Measure through EasyEdit's own constructor + metric on the saved files (what every user will load).
    trained = backbone.load_trained(work, config.image_size, config.num_query_tokens)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        accuracy = pre_edit_accuracy(trained, tok, work, config.image_size, limit=evaluate_limit)
    finally:
        torch.set_num_threads(threads)
    return {
        "config": asdict(config),
        "sizes": {
            "images": {k: len(getattr(pools, k)) for k in ("train", "dev", "eval", "mloc", "cls")},
            "vqa_train": len(json.loads(work.split("vqa_train").read_text())),
            "vqa_dev": len(json.loads(work.split("vqa_dev").read_text())),
            "vqa_eval": len(json.loads(work.split("vqa_eval").read_text())),
            "caption_train": len(pools.train),
            "caption_dev": len(pools.dev),
            "caption_eval": len(pools.eval),
            "classification": len(pools.cls),
            "text_facts": len(json.loads(work.split("text_facts").read_text())),
            "opt_vocab": len(tok),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "pretraining": result,
        "pre_edit_accuracy": accuracy,
    }
