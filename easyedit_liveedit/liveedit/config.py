"""``LiveEditConfig``: everything that shapes LiveEdit's networks, its experts and its meta-training losses.

The method's own configuration, free of EasyEdit: the EasyEdit-style hparams classes (``easyedit/hparams.py``)
read the YAMLs and build one of these. Defaults are the paper's (and the authors' code's) for 7B-class
backbones; the reasons sit next to each value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# Fields that fix the shape of a stored expert and the networks that made it: an expert library made with one
# value of any of them is meaningless under another (``ExpertLibrary.identity``).
SHAPE_FIELDS = ("edit_layer", "cross_attn_dim", "num_heads", "rank", "num_key_slots", "num_sentinel_tokens")
# How the routing losses pair inputs with edits in meta-training (``train_step.py``).
ROUTING_PAIRS = ("authors", "edit")


@dataclass(frozen=True)
class LiveEditConfig:
    """The method's hyper-parameters.

    Attributes:
        edit_layer: decoder layer ``l_e`` (0-based) whose output receives the experts; the paper uses 21 of 32.
        cross_attn_dim: ``d_m``, width of the cross-attention that generates experts and routing keys.
        num_heads: heads of every cross-attention.
        rank: ``r``, rank of each low-rank expert; one fact needs very few directions.
        lora_scale: experts are scaled by ``1 / (lora_scale * sqrt(r))``, which keeps a fresh expert gentle.
        num_key_slots: ``k`` learned query slots of each routing key.
        num_sentinel_tokens: tokens of the learned visual sentinel; the backbone's image-token count fits.
        token_types: ours, not in the paper: image / prompt / answer embeddings in the expert generator.
        answer_embeddings: ours, not in the paper (which reads layer ``l_e`` only): the expert generator also reads
            the answer tokens' input embeddings, so ``V`` can write the new answer (``networks.AnswerEmbeddings``).
        rel_lambda, gen_lambda, loc_lambda, soft_route_lambda, hard_route_lambda: loss weights (all 1 in the
            paper).
        filter_lambda: ours, weight of the hard-filter calibration loss (0 reproduces the paper).
        routing_pairs: how the routing losses pair inputs with edits: ``authors`` as the authors' training step
            (edit side also read from same-scope samples, locality-locality positives, the out-of-scope term both
            ways); ``edit`` pairs every in-scope input with its real edit and locality inputs with the edits only.
    """

    edit_layer: int = 21
    cross_attn_dim: int = 1024
    num_heads: int = 8
    rank: int = 4
    lora_scale: float = 5.0
    num_key_slots: int = 4
    num_sentinel_tokens: int = 32
    token_types: bool = False
    answer_embeddings: bool = False
    rel_lambda: float = 1.0
    gen_lambda: float = 1.0
    loc_lambda: float = 1.0
    soft_route_lambda: float = 1.0
    hard_route_lambda: float = 1.0
    filter_lambda: float = 0.0
    routing_pairs: str = "authors"

    def __post_init__(self) -> None:
        if self.routing_pairs not in ROUTING_PAIRS:
            raise ValueError(
                f"LiveEditConfig: key 'routing_pairs' is {self.routing_pairs!r}; expected one of "
                f"{', '.join(ROUTING_PAIRS)}"
            )
        if self.edit_layer < 0:
            raise ValueError(f"LiveEditConfig: key 'edit_layer' must be >= 0, got {self.edit_layer}")
        for name in ("cross_attn_dim", "num_heads", "rank", "num_key_slots", "num_sentinel_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"LiveEditConfig: key {name!r} must be >= 1, got {getattr(self, name)}")
        if self.cross_attn_dim % self.num_heads:
            raise ValueError(
                f"LiveEditConfig: key 'cross_attn_dim' ({self.cross_attn_dim}) must be divisible by 'num_heads' "
                f"({self.num_heads})"
            )
        if self.lora_scale <= 0:
            raise ValueError(f"LiveEditConfig: key 'lora_scale' must be > 0, got {self.lora_scale}")
        for f in fields(self):
            if f.name.endswith("_lambda") and getattr(self, f.name) < 0:
                raise ValueError(f"LiveEditConfig: key {f.name!r} must be >= 0, got {getattr(self, f.name)}")

    def loss_weights(self) -> dict[str, float]:
        """The ``*_lambda`` fields, keyed as ``liveedit_loss`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_lambda")}

    def expert_shape(self) -> dict[str, int]:
        """The fields that shape an expert (``SHAPE_FIELDS``)."""
        return {name: getattr(self, name) for name in SHAPE_FIELDS}
