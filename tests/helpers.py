"""Helpers shared by the tests (imported as ``helpers``; fixtures live in ``conftest.py``).

The worker functions (``rows_of``, ``dies``, ``sleeps``) live here because spawned processes import them by name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from easyedit_liveedit.bench import archives
from easyedit_liveedit.bench.engine import Row
from easyedit_liveedit.toyworld.layout import CACHE_ENV, PROJECT_ROOT

EDITS = [1, 3]
# How the session's archives are trained; a runner reuses them only with the same run.train_steps and run.val_size.
TRAIN_STEPS, VAL_SIZE = 2, 4
ARCHIVE_RUN = [f"run.train_steps={TRAIN_STEPS}", f"run.val_size={VAL_SIZE}"]


def toy_hparams(world, method: str, training: bool = False, **overrides):
    kind = "TRAINING/" if training else ""
    hparams = archives.load_hparams(method, PROJECT_ROOT / f"hparams/{kind}{method}/toy-blip2.yaml", overrides,
                                    training=training)  # fmt: skip
    hparams.model_parallel = getattr(hparams, "model_parallel", False)
    return world.apply_paths(hparams)


def small_archives(tmp_path_factory, world) -> Path:
    """LiveEdit, MEND and SERAC archives for the small world, two steps of EasyEdit's trainer loop each (only
    their existence matters); trained once per test session into ``<basetemp>/compare-archives`` (the CLI tests
    reuse them through ``run.archive_dir``, with ``ARCHIVE_RUN`` so that their provenance records match)."""
    root = tmp_path_factory.getbasetemp() / "compare-archives"
    for method in ("LiveEdit", "MEND", "SERAC"):
        training = toy_hparams(world, method, training=True, max_iters=TRAIN_STEPS, results_dir=str(root))
        if not archives.archive_path(training).is_file():
            archives.train_archive(
                method, training, world.split("vqa_train"), "VQADataset", root / f"split-{method}",
                world.easyedit_patches, val_size=VAL_SIZE,
            )  # fmt: skip
    return root


def small_runner(world, out: Path, *overrides: str):
    """A ``Runner`` for the composed Hydra configuration (as the CLI builds it) on ``world`` itself: the toy world
    cache is pointed at the world's folder while the runner loads it."""
    from hydra import compose, initialize_config_module

    from easyedit_liveedit.bench.config import register_configs
    from easyedit_liveedit.bench.runner import Runner

    register_configs()
    with initialize_config_module("easyedit_liveedit.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model.toy_world=small", "run.threads=1", "run.progress=false",
                                           *overrides])  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(world.layout.root.parent))
        return Runner(cfg, out)


def rows_of(name: str) -> list[Row]:
    return [Row(name, 1, metrics={"rewrite_acc": 1.0})]


def dies(name: str) -> list[Row]:
    os._exit(3)  # as the kernel's out-of-memory killer would end it: no exception, no rows


def sleeps(marker: str) -> list[Row]:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)
    return []


def small_liveedit_hparams(world, training: bool = False, **overrides):
    """LiveEdit hparams for the small toy world (tiny LiveEdit networks, layer 1 of its OPT)."""
    from easyedit_liveedit import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams

    values = dict(
        name="unset",
        model_name="blip2",
        model_class="Blip2OPT",
        tokenizer_class="GPT2Tokenizer",
        tokenizer_name="unset",
        device="cpu",
        edit_layer=1,
        cross_attn_dim=32,
        num_heads=4,
        num_sentinel_tokens=world.config.num_query_tokens,
    )
    values.update({"alg": "LiveEdit"} if training else {"alg_name": "LiveEdit"})
    values.update(overrides)
    cls = LiveEditMultimodalTrainingHparams if training else LiveEditMultimodalHparams
    return world.apply_paths(cls.from_dict(values))
