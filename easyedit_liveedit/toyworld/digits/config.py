"""The digits world's configuration: the data split, the small BLIP-2-OPT and its pretraining schedule.

One ``load_digits`` scan per subject. ``DIGITS`` (a named stress configuration: near-duplicate subjects, pretrained
to >= 90% per question kind) and ``SMALL`` (unit tests; a few dozen images, a model a few times smaller, seconds; it
answers near chance and exists to exercise code paths).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import WorldConfig


@dataclass(frozen=True)
class ToyWorldConfig(WorldConfig):
    """Everything that determines a built digits world; its fingerprint names the cache entry."""

    name: str = "digits"
    seed: int = 0
    # --- data: disjoint pools of load_digits scans --------------------------------------------------------------
    n_train_images: int = 1000  # the train pool: pretraining's scans, of which the train split edits all but dev's
    n_dev_images: int = 200  # carved from the train pool: the dev split (1,000 VQA edits); never meta-trained on
    n_eval_images: int = 420  # edited in the eval split; never seen in pretraining
    n_mloc_images: int = 177  # unrelated images for `m_loc`; never edited, never seen in pretraining
    n_cls_images: int = 200  # held-out labelled images for the EMT-style classification split
    image_size: int = 32  # the processor's size; EasyEdit's 364 is overridden (easyedit_shims.image_processor_size)
    png_size: int = 64  # side of the written PNG files
    # --- model: ViT -> Q-Former -> OPT, all small -----------------------------------------------------------------
    patch_size: int = 8
    vit_width: int = 64
    vit_layers: int = 2
    vit_heads: int = 4
    qformer_hidden: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate: int = 128
    num_query_tokens: int = 4
    opt_hidden: int = 64
    opt_layers: int = 4
    opt_heads: int = 4
    opt_ffn: int = 256
    # --- pretraining ----------------------------------------------------------------------------------------------
    steps: int = 3500
    batch_size: int = 24  # image questions per step
    text_batch_size: int = 8  # text-only questions per step
    lr: float = 2e-3
    warmup: int = 200
    aux_weight: float = 1.0  # digit classifier on the Q-Former output: stand-in for BLIP-2 stage 1
    # Instance contrast between two random views of each scan: stand-in for stage 1's image-text contrastive
    # learning, which makes image tokens describe *this* image (an MMEdit edit is about one image, not a class).
    instance_weight: float = 1.0
    instance_batch: int = 32  # scans per contrastive batch (each seen through two fresh views)
    instance_temperature: float = 0.1
    # One intra-op thread: these matrices are too small to split, and on a shared 2-core machine a second
    # thread per process measured ~8x slower per op under contention.
    threads: int = 1

    def __post_init__(self) -> None:
        self.check_fields()
        total = self.n_train_images + self.n_eval_images + self.n_mloc_images + self.n_cls_images
        if total > 1797:
            raise ValueError(f"ToyWorldConfig: the image pools need {total} scans, load_digits has 1797")
        if not 0 < self.n_dev_images < self.n_train_images:
            raise ValueError("ToyWorldConfig.n_dev_images: expected a positive number below n_train_images")
        if self.image_size % self.patch_size:
            raise ValueError("ToyWorldConfig.patch_size: must divide image_size")


DIGITS = ToyWorldConfig()
SMALL = ToyWorldConfig(
    name="small",
    n_train_images=40,
    n_dev_images=8,
    n_eval_images=20,
    n_mloc_images=10,
    n_cls_images=10,
    image_size=16,
    png_size=16,
    vit_width=32,
    vit_layers=1,
    vit_heads=2,
    qformer_hidden=32,
    qformer_layers=2,
    qformer_heads=2,
    qformer_intermediate=64,
    num_query_tokens=4,
    opt_hidden=32,
    opt_layers=4,  # as many as DIGITS, so the toy YAMLs (inner_params, edit_layer) fit both
    opt_heads=2,
    opt_ffn=64,
    steps=30,
    batch_size=16,
    text_batch_size=8,
    warmup=5,
)
