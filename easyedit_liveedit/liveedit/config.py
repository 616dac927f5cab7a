"""``LiveEditConfig``: everything that shapes LiveEdit's networks, its experts and its meta-training losses.

The method's own configuration, free of EasyEdit, and the one definition of its fields, defaults and validation: the
EasyEdit-style hparams classes (``easyedit/hparams.py``) subclass it, so its fields are their YAML keys, and
``LiveEditNetwork`` is built from it alone. Defaults are the paper's (and the authors' code's) for 7B-class backbones;
each field's ``help`` says what it means and why the default.

Each field has a ``role``: ``shape`` fixes the shape of a stored expert (and of the networks), ``computation`` changes
what the networks compute (or which of them exist), ``training`` only shapes meta-training's losses, ``index`` chooses
how the expert library finds candidate experts among many (the exact scan, or an approximate faiss pre-filter whose
candidates the exact filter re-checks): no network, expert or loss depends on it. An archive records the config it
was trained with; loading it under a config that differs in a ``shape`` or ``computation`` field is refused
(``mismatches``), so any ``training`` or ``index`` setting loads any archive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# How the routing losses pair inputs with edits in meta-training (``train_step.py``).
ROUTING_PAIRS = ("authors", "edit")
# Which soft-routing loss terms train (``losses.liveedit_loss``): both (the paper), or one alone (its ablations).
SOFT_ROUTE_TERMS = ("both", "relative", "absolute")
# How the experts an input kept share it (``routing.soft_weights``): the paper's learned weights, or a plain mean.
SOFT_WEIGHTS = ("learned", "average")
# How the expert library finds the experts an input keeps (``library.py``; ``easyedit_liveedit.index``).
INDEXES = ("exact", "faiss")


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
    prompt_guided_keys: bool = _field(
        True,
        "computation",
        "the paper's prompt-guided visual extraction: the visual routing key reads the image through slots the "
        "question sets; false = slots learned once for every question (the paper's ablation of it)",
    )
    soft_weights: str = _field(
        "learned",
        "computation",
        "how the experts an input kept share it: 'learned', the paper's w = sigmoid(a) * softmax_kept(a) of the "
        "textual similarities a; 'average', 1 / (experts kept) each, the paper's ablation 'experts averaged' (no "
        "soft routing), in training and editing alike. Nothing then reads the textual keys at editing, so that "
        "ablation also sets soft_route_lambda: 0 (not implied here)",
    )
    rel_lambda: float = _field(1.0, "training", "weight of the reliability loss (1 in the paper)")
    gen_lambda: float = _field(1.0, "training", "weight of the generality losses (1 in the paper)")
    loc_lambda: float = _field(1.0, "training", "weight of the locality KL (1 in the paper)")
    soft_route_lambda: float = _field(1.0, "training", "weight of the soft-routing losses (1 in the paper)")
    hard_route_lambda: float = _field(1.0, "training", "weight of the hard-routing losses (1 in the paper)")
    filter_lambda: float = _field(
        0.0, "training", "ours: weight of the hard-filter calibration loss (0 reproduces the paper)"
    )
    soft_route_terms: str = _field(
        "both",
        "training",
        "which soft-routing loss terms train: 'both' (the paper); 'relative', the InfoNCE term alone (the paper's "
        "ablation 'w/o absolute soft-routing loss'); 'absolute', the sigmoid term alone ('w/o relative'). Both are "
        "still computed and logged",
    )
    routing_pairs: str = _field(
        "authors",
        "training",
        "how the routing losses pair inputs with edits: 'authors' as the authors' training step (edit side also read "
        "from same-scope samples, locality-locality positives, the out-of-scope term both ways); 'edit' pairs every "
        "in-scope input with its real edit and locality inputs with the edits only",
    )

    index: str = _field(
        "exact",
        "index",
        "how the library finds the experts whose visual key clears an input's bar: 'exact' scans every key (the "
        "paper; fast to about 10^5 experts); 'faiss' asks an approximate faiss IVF index for candidates from "
        "index_min_experts experts on and re-checks each exactly (needs pip install faiss-cpu)",
    )
    index_min_experts: int = _field(
        100_000, "index", "faiss: experts from which the index is consulted (below, the exact scan is as fast)"
    )
    index_nlist: int = _field(1024, "index", "faiss: IVF lists (k-means centroids); about 4 sqrt(N) for N experts")
    index_nprobe: int = _field(64, "index", "faiss: lists scanned per query, the speed / recall trade-off")
    index_codes: str = _field(
        "Flat", "index", "faiss: how keys are stored in the lists, a faiss factory suffix (Flat: fp32, SQ8: 1 byte)"
    )
    index_train_size: int = _field(
        65536, "index", "faiss: keys the k-means is trained on (the exact scan serves until that many exist)"
    )
    index_margin: float = _field(
        0.0, "index", "faiss: lowers each threshold by margin * |t|, so compressed codes still propose an expert"
    )
    index_threads: int | None = _field(None, "index", "faiss: OpenMP threads (null: faiss's default, every core)")

    def __post_init__(self) -> None:
        for name, allowed in (
            ("routing_pairs", ROUTING_PAIRS),
            ("soft_route_terms", SOFT_ROUTE_TERMS),
            ("soft_weights", SOFT_WEIGHTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"LiveEditConfig: key {name!r} is {getattr(self, name)!r}; expected one of {', '.join(allowed)}"
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
        for name in names("training"):
            if name.endswith("_lambda") and getattr(self, name) < 0:
                raise ValueError(f"LiveEditConfig: key {name!r} must be >= 0, got {getattr(self, name)}")
        self._check_index()

    def _check_index(self) -> None:
        if self.index not in INDEXES:
            raise ValueError(f"LiveEditConfig: key 'index' is {self.index!r}; expected one of {', '.join(INDEXES)}")
        for name in ("index_min_experts", "index_nlist", "index_nprobe", "index_train_size", "index_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LiveEditConfig: key {name!r} must be >= 1, got {value}")
        if self.index_train_size < self.index_nlist:
            raise ValueError(
                f"LiveEditConfig: key 'index_train_size' ({self.index_train_size}) must be at least 'index_nlist' "
                f"({self.index_nlist}): the k-means needs a key per list"
            )
        if self.index_margin < 0:
            raise ValueError(f"LiveEditConfig: key 'index_margin' must be >= 0, got {self.index_margin}")

    def config_dict(self) -> dict[str, Any]:
        """Every field of ``LiveEditConfig`` (only those, also on a subclass) and its value: what an archive stores."""
        return {name: getattr(self, name) for name in names()}

    def liveedit_config(self) -> LiveEditConfig:
        """The method's config alone (a plain ``LiveEditConfig``; a subclass such as the hparams drops its other
        fields)."""
        return LiveEditConfig(**self.config_dict())

    def loss_options(self) -> dict[str, float | str]:
        """The fields ``liveedit_loss`` takes, keyed as it takes them: the ``*_lambda`` weights and
        ``soft_route_terms``."""
        taken = [name for name in names("training") if name.endswith("_lambda") or name == "soft_route_terms"]
        return {name: getattr(self, name) for name in taken}

    def expert_shape(self) -> dict[str, int]:
        """The fields that fix the shape of a stored expert and of the networks that made it."""
        return {name: getattr(self, name) for name in names("shape")}

    def mismatches(self, stored: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(field, stored value, this config's value)`` for every ``shape`` or ``computation`` field on which
        ``stored`` (a ``config_dict`` recorded earlier) differs from this config. A field ``stored`` lacks was added
        since it was written and is compared with its default (which is what the code computed before it existed)."""
        defaults = field_defaults()
        return [
            (name, stored.get(name, defaults[name]), getattr(self, name))
            for name in (*names("shape"), *names("computation"))
            if stored.get(name, defaults[name]) != getattr(self, name)
        ]


def field_defaults() -> dict[str, Any]:
    """Every field of ``LiveEditConfig`` and its default: what a record written before the field existed meant."""
    return {f.name: f.default for f in fields(LiveEditConfig)}


def names(role: str | None = None) -> tuple[str, ...]:
    """The fields of ``LiveEditConfig`` with ``role`` (``shape``, ``computation``, ``training``, ``index``; None:
    all)."""
    return tuple(f.name for f in fields(LiveEditConfig) if role is None or f.metadata["role"] == role)
