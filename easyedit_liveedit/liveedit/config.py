"""``LiveEditConfig``: everything that shapes LiveEdit's networks, its experts and its meta-training losses.

The method's own configuration, free of EasyEdit, and the one definition of its fields, defaults and validation: the
EasyEdit-style hparams classes (``easyedit/hparams.py``) subclass it, so its fields are their YAML keys, and
``LiveEditNetwork`` is built from it alone. Defaults are the paper's (and the authors' code's) for 7B-class backbones;
each field's ``help`` says what it means and why the default.

Each field has a ``role``: ``shape`` fixes the shape of a stored expert (and of the networks), ``computation`` changes
what the networks compute (or which of them exist), ``training`` only shapes meta-training's losses. An archive records
the config it was trained with; loading it under a config that differs in a ``shape`` or ``computation`` field is
refused (``mismatches``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# How the routing losses pair inputs with edits in meta-training (``train_step.py``).
ROUTING_PAIRS = ("authors", "edit")


def _field(default: Any, role: str, help: str) -> Any:
    return field(default=default, metadata={"role": role, "help": help})


@dataclass(kw_only=True)
class LiveEditConfig:
    """The method's hyper-parameters (the ``help`` of each field says what it means)."""

    edit_layer: int = _field(21, "shape", "decoder layer l_e (0-based) whose output receives the experts; 21 of 32")
    cross_attn_dim: int = _field(1024, "shape", "d_m, width of the cross-attention that generates experts and keys")
    num_heads: int = _field(8, "shape", "heads of every cross-attention")
    rank: int = _field(4, "shape", "r, rank of each low-rank expert; one fact needs very few directions")
    lora_scale: float = _field(
        5.0, "computation", "experts are scaled by 1 / (lora_scale * sqrt(r)), which keeps a fresh expert gentle"
    )
    num_key_slots: int = _field(4, "shape", "k, learned query slots of each routing key")
    num_sentinel_tokens: int = _field(
        32, "shape", "tokens of the learned visual sentinel; the backbone's image-token count fits (BLIP-2: 32)"
    )
    token_types: bool = _field(
        False, "computation", "ours, not in the paper: image / prompt / answer embeddings in the expert generator"
    )
    answer_embeddings: bool = _field(
        False,
        "computation",
        "ours, not in the paper (which reads layer l_e only): the expert generator also reads the answer tokens' "
        "input embeddings, so V can write the new answer (networks.AnswerEmbeddings)",
    )
    rel_lambda: float = _field(1.0, "training", "weight of the reliability loss (1 in the paper)")
    gen_lambda: float = _field(1.0, "training", "weight of the generality losses (1 in the paper)")
    loc_lambda: float = _field(1.0, "training", "weight of the locality KL (1 in the paper)")
    soft_route_lambda: float = _field(1.0, "training", "weight of the soft-routing losses (1 in the paper)")
    hard_route_lambda: float = _field(1.0, "training", "weight of the hard-routing losses (1 in the paper)")
    filter_lambda: float = _field(
        0.0, "training", "ours: weight of the hard-filter calibration loss (0 reproduces the paper)"
    )
    routing_negatives: int = _field(
        0,
        "training",
        "ours: the routing keys of the last N meta-training edits are kept as negatives for the hard filter and the "
        "soft router (negatives.RecentEdits), so training meets a library-sized crowd; 0 = the paper (the batch only)",
    )
    routing_pairs: str = _field(
        "authors",
        "training",
        "how the routing losses pair inputs with edits: 'authors' as the authors' training step (edit side also read "
        "from same-scope samples, locality-locality positives, the out-of-scope term both ways); 'edit' pairs every "
        "in-scope input with its real edit and locality inputs with the edits only",
    )

    def __post_init__(self) -> None:
        if self.routing_pairs not in ROUTING_PAIRS:
            raise ValueError(
                f"LiveEditConfig: key 'routing_pairs' is {self.routing_pairs!r}; expected one of "
                f"{', '.join(ROUTING_PAIRS)}"
            )
        if self.routing_negatives < 0:
            raise ValueError(f"LiveEditConfig: key 'routing_negatives' must be >= 0, got {self.routing_negatives}")
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
        for name in names("training"):
            if name.endswith("_lambda") and getattr(self, name) < 0:
                raise ValueError(f"LiveEditConfig: key {name!r} must be >= 0, got {getattr(self, name)}")

    def config_dict(self) -> dict[str, Any]:
        """Every field of ``LiveEditConfig`` (only those, also on a subclass) and its value: what an archive stores."""
        return {name: getattr(self, name) for name in names()}

    def liveedit_config(self) -> LiveEditConfig:
        """The method's config alone (a plain ``LiveEditConfig``; a subclass such as the hparams drops its other
        fields)."""
        return LiveEditConfig(**self.config_dict())

    def loss_weights(self) -> dict[str, float]:
        """The ``*_lambda`` fields, keyed as ``liveedit_loss`` takes them."""
        return {name: getattr(self, name) for name in names("training") if name.endswith("_lambda")}

    def expert_shape(self) -> dict[str, int]:
        """The fields that fix the shape of a stored expert and of the networks that made it."""
        return {name: getattr(self, name) for name in names("shape")}

    def mismatches(self, stored: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(field, stored value, this config's value)`` for every ``shape`` or ``computation`` field on which
        ``stored`` (a ``config_dict`` recorded earlier) differs from this config. A field ``stored`` lacks was added
        since it was written and is compared with its default (which is what the code computed before it existed)."""
        defaults = {f.name: f.default for f in fields(LiveEditConfig)}
        return [
            (name, stored.get(name, defaults[name]), getattr(self, name))
            for name in (*names("shape"), *names("computation"))
            if stored.get(name, defaults[name]) != getattr(self, name)
        ]


def names(role: str | None = None) -> tuple[str, ...]:
    """The fields of ``LiveEditConfig`` with ``role`` (``shape``, ``computation``, ``training``; None: all)."""
    return tuple(f.name for f in fields(LiveEditConfig) if role is None or f.metadata["role"] == role)
