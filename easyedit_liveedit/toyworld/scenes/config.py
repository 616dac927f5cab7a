"""The scenes world's configuration: scan pools, subjects, rendering, the small BLIP-2-OPT and its two-stage
pretraining schedule. ``SCENES`` (the project's default world: E-VQA's structure, every eval edit has its own
subject, and a subject's other rendering is retrievable among all of them) and ``SCENES_SMALL`` (unit tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import WorldConfig


@dataclass(frozen=True)
class SceneWorldConfig(WorldConfig):
    """Everything that determines a built scenes world (``subjects.py``); its fingerprint names the cache entry.

    Sizes were chosen on a dev split carved from the train pool's scans (never on the eval split): 32-pixel
    scenes with 16-pixel cells and 8-pixel patches (four patches per cell, so a patch never mixes two cells),
    digits drawn 13 or 14 pixels wide (less jitter read better: 0.973 per cell after 10,000 vision steps
    against 0.968 with 11-14), and the digits world's model sizes.
    """

    name: str = "scenes"
    seed: int = 0
    # --- data: disjoint pools of load_digits scans (1,797 in all) -------------------------------------------------
    n_train_scans: int = 1000  # the train pool: the dev scans, then the scans of train subjects and pretraining
    n_dev_scans: int = 150  # carved from the train pool: dev subjects are composed of these; never trained on
    n_eval_scans: int = 400  # eval subjects (VQA and caption); never seen in pretraining
    n_mloc_scans: int = 197  # never-edited subjects that `m_loc` asks about
    n_cls_scans: int = 200  # the EMT-style classification split
    # --- subjects: one edit per subject -----------------------------------------------------------------------------
    n_train_subjects: int = 6000  # E-VQA train edits
    n_eval_subjects: int = 2016  # E-VQA eval edits (168 per kind)
    n_caption_train_subjects: int = 1000  # E-IC train edits
    n_caption_eval_subjects: int = 400  # E-IC eval edits
    n_dev_subjects: int = 1008  # E-VQA dev edits (84 per kind), for probes and choices; carved from the train split
    n_caption_dev_subjects: int = 200  # E-IC dev edits
    n_mloc_subjects: int = 400
    n_cls_subjects: int = 200
    min_distance: int = 3  # held-out contents differ in at least this many of their nine attributes
    # --- rendering --------------------------------------------------------------------------------------------------
    image_size: int = 32  # the processor's size and the PNG's (so EasyEdit's resize is the identity)
    digit_sizes: tuple[int, ...] = (13, 14)  # a scan is upscaled to one of these, then placed in its cell
    margin: int = 1  # pixels kept free at each cell's edge
    # --- model: ViT -> Q-Former -> OPT (the field names backbone.write_fresh_backbone reads) ------------------------
    patch_size: int = 8
    vit_width: int = 64
    vit_layers: int = 2
    vit_heads: int = 4
    qformer_hidden: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate: int = 128
    num_query_tokens: int = 4  # one per cell (the per-cell heads of stage 1 give token i cell i's meaning)
    opt_hidden: int = 64
    opt_layers: int = 4
    opt_heads: int = 4
    opt_ffn: int = 256
    # --- pretraining (pretrain.py) -------------------------------------------------------------------------------
    vision_steps: int = 10000  # stage 1: ViT + Q-Former with the per-cell heads only (no LM; ~20 ms a step)
    vision_batch_size: int = 16  # scenes per stage-1 step (each rendered twice)
    # Stage 2: everything, answers + text + the stage-1 losses. On a dev split, 6,000 steps left three kinds at
    # 0.84-0.89 and still rising; 9,000 fit the 30-minute build on a 2-core machine.
    steps: int = 9000
    batch_size: int = 16  # scenes per stage-2 step (each rendered twice, one question per rendering)
    text_batch_size: int = 8  # text-only questions per step
    caption_rate: float = 1 / 13  # share of captions among the image questions
    lr: float = 2e-3
    warmup: int = 200
    aux_weight: float = 1.0  # the per-cell heads in stage 2
    contrast_weight: float = 1.0  # two renderings of one scene must find each other in the batch
    contrast_temperature: float = 0.1
    # Pointing: the attention of one LM layer (mean over its heads) is taught to look, from the position that
    # predicts the answer, at the image token of the cell the question is about (pretrain.py).
    pointing_weight: float = 1.0
    pointing_layer: int = 2
    # One intra-op thread, as the digits world (small matrices; a shared 2-core machine).
    threads: int = 1

    def __post_init__(self) -> None:
        self.check_fields()
        total = self.n_train_scans + self.n_eval_scans + self.n_mloc_scans + self.n_cls_scans
        if total > 1797:
            raise ValueError(f"SceneWorldConfig: the scan pools need {total} scans, load_digits has 1797")
        if not 0 < self.n_dev_scans < self.n_train_scans:
            raise ValueError("SceneWorldConfig.n_dev_scans: expected a positive number below n_train_scans")
        if self.image_size % 2 or (self.image_size // 2) % self.patch_size:
            raise ValueError("SceneWorldConfig.patch_size: must divide the cell (image_size / 2)")
        if not self.digit_sizes or max(self.digit_sizes) + 2 * self.margin > self.image_size // 2:
            raise ValueError("SceneWorldConfig.digit_sizes: each size plus two margins must fit a cell")
        if self.num_query_tokens != 4:
            raise ValueError("SceneWorldConfig.num_query_tokens: the scenes world has one query token per cell (4)")
        if self.pointing_layer >= self.opt_layers:
            raise ValueError("SceneWorldConfig.pointing_layer: must be a layer of the OPT (< opt_layers)")
        if not 1 <= self.min_distance <= 9:
            raise ValueError("SceneWorldConfig.min_distance: expected 1-9 (of nine attributes)")


SCENES = SceneWorldConfig()
SCENES_SMALL = SceneWorldConfig(
    name="scenes_small",
    n_train_scans=200,
    n_dev_scans=50,
    n_eval_scans=100,
    n_mloc_scans=50,
    n_cls_scans=50,
    n_train_subjects=48,
    n_eval_subjects=24,
    n_caption_train_subjects=8,
    n_caption_eval_subjects=6,
    n_dev_subjects=24,
    n_caption_dev_subjects=6,
    n_mloc_subjects=10,
    n_cls_subjects=6,
    vit_width=32,
    vit_layers=1,
    vit_heads=2,
    qformer_hidden=32,
    qformer_heads=2,
    qformer_intermediate=64,
    opt_hidden=32,
    opt_heads=2,
    opt_ffn=64,
    vision_steps=10,
    vision_batch_size=4,
    steps=20,
    batch_size=4,
    warmup=5,
)
