"""Build the scenes world: subjects, MMEdit records, tokenizers and the pretrained backbone, in one folder.

The same on-disk layout (``toyworld/layout.py``) and the same ``ToyWorld`` handle as the digits world
(``world.build`` dispatches here for a ``SceneWorldConfig``), so EasyEdit's datasets, editor, trainer and metrics,
and everything built on the toy world, read it unchanged. Splits, all drawn from disjoint pools of ``load_digits``
scans:

* ``vqa_train`` / ``caption_train``: subjects from the train pool (the only scans pretraining sees);
* ``vqa_dev`` / ``caption_dev``: subjects from the dev scans, carved out of the train pool (in no train record,
  never seen in pretraining): what probes, ablations and settings are chosen on;
* ``vqa_eval`` / ``caption_eval``: subjects from the eval pool (never seen in pretraining);
* ``m_loc`` subjects from their own pool, never edited; ``classification`` subjects from a fourth pool.

Contents: every eval subject (VQA and caption), every ``m_loc`` subject and every classification subject has
a content at least ``min_distance`` attributes away from all the others, so an eval edit is about its own
subject and a rephrase's content names exactly one of them; so does every dev subject among the dev subjects.
Train subjects are distinct among themselves.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from ...easyedit.validate import validate_file
from .. import backbone
from ..evaluate import pre_edit_accuracy
from ..facts import text_facts
from ..layout import Layout
from ..records import write_json
from ..scans import Pools, load_scans
from ..tokenizer import train_opt_tokenizer, write_word_vocab
from . import facts, records
from .config import SceneWorldConfig
from .pretrain import pretrain_scenes
from .retrieval import retrieval
from .subjects import ScanPool, SceneRenderer, Subject, distinct_scenes, write_subjects

LOG = logging.getLogger(__name__)


def renderer_for(config: SceneWorldConfig, scans: np.ndarray) -> SceneRenderer:
    """The renderer every split and pretraining share."""
    return SceneRenderer(scans, config.image_size, config.digit_sizes, config.margin)


def scan_pools(config: SceneWorldConfig, labels: np.ndarray) -> Pools:
    """The disjoint pools of scans (train, eval, m_loc, classification, and dev out of train), seeded."""
    sizes = (config.n_train_scans, config.n_eval_scans, config.n_mloc_scans, config.n_cls_scans)
    return Pools.split(labels, sizes, config.seed, config.n_dev_scans)


def _write_subjects(config: SceneWorldConfig, layout: Layout, scans: np.ndarray, labels: np.ndarray, pools: Pools):
    """Draw every split's contents and write both renderings of each subject; returns subjects by split."""
    renderer = renderer_for(config, scans)
    rng = np.random.default_rng([config.seed, 6])
    held_out_sizes = {
        "eval": config.n_eval_subjects,
        "caption_eval": config.n_caption_eval_subjects,
        "mloc": config.n_mloc_subjects,
        "cls": config.n_cls_subjects,
    }
    # One draw for all held-out subjects, so each is min_distance away from every other (across splits too).
    held_out = distinct_scenes(sum(held_out_sizes.values()), rng, config.min_distance)
    train = distinct_scenes(config.n_train_subjects + config.n_caption_train_subjects, rng, 1)
    dev = distinct_scenes(config.n_dev_subjects + config.n_caption_dev_subjects, rng, config.min_distance)
    scenes, start = {}, 0
    for split, size in held_out_sizes.items():
        scenes[split], start = held_out[start : start + size], start + size
    scenes["train"] = train[: config.n_train_subjects]
    scenes["caption_train"] = train[config.n_train_subjects :]
    scenes["dev"] = dev[: config.n_dev_subjects]
    scenes["caption_dev"] = dev[config.n_dev_subjects :]
    pool_of = {"train": pools.train, "caption_train": pools.train, "eval": pools.eval, "caption_eval": pools.eval}
    pool_of |= {"dev": pools.dev, "caption_dev": pools.dev, "mloc": pools.mloc, "cls": pools.cls}
    out = {}
    for split, contents in scenes.items():
        pool = ScanPool(pool_of[split], labels)
        out[split] = write_subjects(split, contents, pool, renderer, layout.images, config.seed)
    return out


def write_data(config: SceneWorldConfig, layout: Layout) -> dict[str, list[Subject]]:
    """Images, MMEdit records, the classification split and the text facts; returns the subjects by split."""
    scans, labels = load_scans()
    pools = scan_pools(config, labels)
    subjects = _write_subjects(config, layout, scans, labels, pools)
    for salt, split in enumerate(("train", "eval", "dev")):
        vqa = records.vqa_records(subjects[split], subjects["mloc"], config.seed, salt)
        write_json(vqa, layout.split(f"vqa_{split}"))
        caption = records.caption_records(
            subjects[f"caption_{split}"], subjects["mloc"], config.seed, salt, config.min_distance
        )
        write_json(caption, layout.split(f"caption_{split}"))
    write_json(records.classification_records(subjects["cls"]), layout.split("classification"))
    write_json(text_facts(), layout.split("text_facts"))
    for name in ("vqa_train", "vqa_eval", "vqa_dev", "caption_train", "caption_eval", "caption_dev"):
        validate_file(layout.split(name), layout.images)
    return subjects


def build_into(config: SceneWorldConfig, work: Layout, progress: bool, evaluate_limit: int | None) -> dict:
    """Write a complete scenes world into ``work`` and return its manifest (``world.build`` renames the folder).

    Steps: data (subjects, records) -> tokenizers on the world's own text -> a fresh ``Blip2OPT`` (EasyEdit's
    constructor) -> two-stage pretraining on the train pool -> save -> the world's final figures on the eval split,
    measured once here on the saved files as every user loads them: pre-edit accuracy through EasyEdit's metric
    code, and retrieval of each rephrase's own subject (``retrieval``).
    """
    started, load_at_start = time.perf_counter(), os.getloadavg()
    subjects = write_data(config, work)
    data_seconds = time.perf_counter() - started
    corpus = facts.all_text()
    train_opt_tokenizer(corpus, work.opt)
    qformer_vocab = write_word_vocab(corpus, work.qformer)  # deterministic (the trainer's vocabulary is not)
    tok = backbone.load_tokenizer(work)
    backbone.write_fresh_backbone(config, work, len(tok), qformer_vocab)
    model = backbone.construct(work, config.num_query_tokens)

    scans, labels = load_scans()
    pools = scan_pools(config, labels)
    result = pretrain_scenes(
        model, tok, config, ScanPool(pools.train, labels), renderer_for(config, scans), progress=progress
    )
    backbone.save_trained(model, work)

    trained = backbone.load_trained(work, config.image_size, config.num_query_tokens)
    threads, evaluate_start = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(config.threads)
    try:
        accuracy = pre_edit_accuracy(trained, tok, work, config.image_size, limit=evaluate_limit)
        found = retrieval(trained, work, config.image_size, "eval")
    finally:
        torch.set_num_threads(threads)
    return {
        "config": asdict(config),
        "sizes": {
            "scans": {k: len(getattr(pools, k)) for k in ("train", "dev", "eval", "mloc", "cls")},
            "subjects": {split: len(items) for split, items in subjects.items()},
            "vqa_train": len(subjects["train"]),
            "vqa_eval": len(subjects["eval"]),
            "caption_train": len(subjects["caption_train"]),
            "caption_eval": len(subjects["caption_eval"]),
            "vqa_dev": len(subjects["dev"]),
            "caption_dev": len(subjects["caption_dev"]),
            "classification": len(subjects["cls"]),
            "text_facts": len(text_facts()),
            "kinds": len(facts.SCENE_KINDS),
            "answers": len(facts.answer_space()),
            "opt_vocab": len(tok),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "pretraining": result,
        "pre_edit_accuracy": accuracy,
        "retrieval": found,
        "seconds": {
            "data": round(data_seconds, 1),
            "pretraining": result["seconds"],
            "evaluation": round(time.perf_counter() - evaluate_start, 1),
        },
        # 1, 5 and 15-minute load averages when the build started and ended (2.0 fills a 2-core machine).
        "load_average": {"start": [round(v, 2) for v in load_at_start], "end": [round(v, 2) for v in os.getloadavg()]},
    }
