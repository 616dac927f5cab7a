"""``LiveEditMultimodalTrainer``: EasyEdit's ``MultimodalTrainer`` loop with LiveEdit's meta-training step.

EasyEdit's ``run()`` loop, logging, validation schedule, early stopping and checkpoints are used as they
are; only ``edit_step`` is LiveEdit's. One step on a batch of ``B`` MMEdit records (DESIGN.md section 5,
arranged as the official code does, see ``losses.py``):

1. one expert per edit from the edit sample's layer-``l_e`` hidden states (backbone frozen);
2. reliability and text/image generality inputs mix their own edit's expert plus a random prefix of the
   batch's experts with learned soft weights: cross-entropy on the new answer;
3. image-locality inputs mix only a random prefix: KL against the unedited backbone;
4. routing losses on the keys those forwards computed: soft (relative InfoNCE + absolute sigmoid) and
   hard (in-scope inputs prefer their edit over the sentinel; locality inputs prefer the sentinel), and, if
   ``filter_lambda > 0``, the hard filter's own decision on every (input, edit) pair: an edit is in scope of
   an input exactly when its image is the input's edit image (other questions about the same scan count).

The batches are EasyEdit's (``VQADataset`` / ``CaptionDataset``), but with ``questions: editor`` (the default) every
question in them is rendered as EasyEdit's editor renders an edit (``questions.py``), not with the dataset's template.

Validation does not mix: it stores the batch's experts in a fresh library and answers through the real
inference path (hard + soft routing), so the logged accuracies are what editing will deliver.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import Tensor

from .editor import LiveEdit
from .library import ExpertLibrary
from .losses import (
    IGNORE_INDEX,
    answer_cross_entropy,
    hard_filter_calibration_loss,
    hard_routing_in_scope_loss,
    hard_routing_out_scope_loss,
    liveedit_loss,
    locality_kl,
    soft_routing_absolute_loss,
    soft_routing_relative_loss,
)
from .questions import EditorQuestions

LOG = logging.getLogger(__name__)

MultimodalTrainer = importlib.import_module("easyeditor.trainer.MultimodalTrainer").MultimodalTrainer

# EasyEdit's MMEdit batch keys -> our loss term names and EasyEdit's logged accuracy names.
IN_SCOPE = {"edit_inner": ("rel", "inner/acc"), "edit_outer": ("gen/text", "edit/acc"),
            "edit_outer_image": ("gen/image", "image_rephrase/acc")}  # fmt: skip


def predicts_answer(labels: Tensor) -> Tensor:
    """``(B, T)`` bool: logit positions that predict an answer token (``labels`` are input-aligned)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def scored_positions(labels: Tensor, answer_tokens: list[int] | None = None) -> Tensor:
    """``(B, T)`` bool: logit positions EasyEdit's metric scores, those that predict the answer's own tokens.

    EasyEdit scores the last ``len(tok(target))`` positions. The supervised span can be longer: rendered as the
    editor renders it (``questions.py``), a tokenizer that keeps spaces apart (the toy world's) supervises the space
    before the answer too. ``answer_tokens`` (per row) keeps the last that many; None keeps the whole span.
    """
    where = predicts_answer(labels)
    if answer_tokens is None:
        return where
    from_end = where.flip(1).cumsum(1).flip(1)  # supervised positions at or after each position
    return where & (from_end <= torch.tensor(answer_tokens, device=labels.device)[:, None])


def answer_accuracy(logits: Tensor, labels: Tensor, answer_tokens: list[int] | None = None) -> float:
    """Teacher-forced token accuracy on the answer, EasyEdit's definition (argmax == next answer token)."""
    where = scored_positions(labels, answer_tokens)
    predicted = logits.argmax(-1)[where]
    return (predicted == labels[:, 1:][where[:, :-1]]).float().mean().item()


def agreement(
    pre_logits: Tensor, post_logits: Tensor, labels: Tensor, answer_tokens: list[int] | None = None
) -> float:
    """Locality: share of answer positions where the edited model's argmax equals the unedited one's."""
    where = scored_positions(labels, answer_tokens)
    return (pre_logits.argmax(-1)[where] == post_logits.argmax(-1)[where]).float().mean().item()


def same_image(images: Tensor) -> Tensor:
    """``(B, B)`` bool: samples ``i`` and ``j`` show the very same image (pixel for pixel)."""
    flat = images.flatten(1)
    return (flat[:, None] == flat[None]).all(dim=-1)


def random_prefix(num_inputs: int, num_experts: int, device: torch.device) -> Tensor:
    """``(B, M)`` bool: input ``b`` switches on experts ``0..L_b-1`` with ``L_b ~ U{0..M}`` (distractors)."""
    lengths = torch.randint(0, num_experts + 1, (num_inputs, 1), device=device)
    return torch.arange(num_experts, device=device)[None] < lengths


class LiveEditMultimodalTrainer(MultimodalTrainer):
    """Meta-trains LiveEdit's generator, key extractors and sentinel with the backbone frozen."""

    def __init__(self, config: Any, train_set: Any, val_set: Any) -> None:
        _check_training_config(config, len(train_set))
        if config.questions == "editor":  # train on edits as the editor will present them (questions.py)
            train_set, val_set = EditorQuestions(train_set), EditorQuestions(val_set)
        super().__init__(config, train_set, val_set)
        if not isinstance(self.model, LiveEdit):
            raise TypeError(f"config key 'alg' must select LiveEdit, got {type(self.model).__name__}")

    def edit_step(self, batch: dict[str, Any], training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        """One meta-training (or validation) step; returns EasyEdit's ``(total, edit, loc, base, info)``."""
        editor: LiveEdit = self.model
        editor.train(training)
        with torch.set_grad_enabled(training):
            terms, info = self._meta_losses(editor, batch)
            total, parts = liveedit_loss(
                terms,
                rel_lambda=self.config.rel_lambda,
                gen_lambda=self.config.gen_lambda,
                loc_lambda=self.config.loc_lambda,
                soft_route_lambda=self.config.soft_route_lambda,
                hard_route_lambda=self.config.hard_route_lambda,
                filter_lambda=self.config.filter_lambda,
            )
        if training:
            (total / self.config.accumulate_bs).backward()
        else:
            info.update(self._routed_accuracies(editor, batch))
        info.update({f"loss/{k}": v for k, v in parts.items()})
        info["loss/total_edit"] = parts["total"]
        zero = torch.zeros(())
        return total.detach(), torch.tensor(parts["rel"]), torch.tensor(parts.get("loc", 0.0)), zero, info

    def _meta_losses(self, editor: LiveEdit, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        experts = editor.make_experts(batch["edit_inner"])  # (B, ...) one per edit
        B = len(experts)
        device = experts.U.device
        own = torch.eye(B, dtype=torch.bool, device=device)
        terms: dict[str, Tensor] = {}
        info: dict[str, float] = {}
        in_scope_keys = []
        for name, (term, acc_name) in IN_SCOPE.items():
            out, keys = editor.forward_with_experts(batch[name], experts, own | random_prefix(B, B, device))
            terms[term] = answer_cross_entropy(out.logits, out.labels)
            info[acc_name] = answer_accuracy(out.logits.detach(), out.labels, batch[name].get("answer_tokens"))
            in_scope_keys.append(keys)
        with torch.no_grad():
            pre = editor.model(batch["loc_image"])
        post, out_keys = editor.forward_with_experts(batch["loc_image"], experts, random_prefix(B, B, device))
        terms["loc/image"] = locality_kl(pre.logits, post.logits, predicts_answer(post.labels))
        info["image_loc/acc"] = agreement(
            pre.logits, post.logits.detach(), post.labels, batch["loc_image"].get("answer_tokens")
        )
        n = len(in_scope_keys)
        terms["soft_route/relative"] = sum(soft_routing_relative_loss(k.psi, experts.psi) for k in in_scope_keys) / n
        terms["soft_route/absolute"] = sum(soft_routing_absolute_loss(k.psi, experts.psi) for k in in_scope_keys) / n
        terms["hard_route/in_scope"] = (
            sum(hard_routing_in_scope_loss(k.phi, experts.phi, k.sentinel) for k in in_scope_keys) / n
        )
        terms["hard_route/out_scope"] = hard_routing_out_scope_loss(out_keys.phi, experts.phi, out_keys.sentinel)
        if self.config.filter_lambda > 0:
            same = same_image(batch["edit_inner"]["image"])
            calibration = [hard_filter_calibration_loss(k.phi, experts.phi, k.sentinel, same) for k in in_scope_keys]
            calibration.append(
                hard_filter_calibration_loss(out_keys.phi, experts.phi, out_keys.sentinel, torch.zeros_like(own))
            )
            terms["filter"] = sum(calibration) / len(calibration)
        return terms, info

    @torch.no_grad()
    def _routed_accuracies(self, editor: LiveEdit, batch: dict[str, Any]) -> dict[str, float]:
        """EasyEdit's five accuracies through the inference path, the batch's edits in a fresh library."""
        accuracies = {}
        with editor.using_library(ExpertLibrary()) as library:
            library.add(editor.make_experts(batch["edit_inner"]))
            for name, (_, acc_name) in IN_SCOPE.items():
                out = editor(batch[name])
                accuracies[acc_name] = answer_accuracy(out.logits, out.labels, batch[name].get("answer_tokens"))
            for name, acc_name in (("loc", "loc/acc"), ("loc_image", "image_loc/acc")):
                pre, post = editor.model(batch[name]), editor(batch[name])
                answer_tokens = batch[name].get("answer_tokens")
                accuracies[acc_name] = agreement(pre.logits, post.logits, post.labels, answer_tokens)
        return accuracies


def _check_training_config(config: Any, train_size: int) -> None:
    """Catch settings with which EasyEdit's loop would silently train nothing or LiveEdit's losses mean nothing."""
    where = getattr(config, "source", None) or "<config>"
    if config.batch_size < 2:
        raise ValueError(f"{where}: key 'batch_size' must be >= 2: LiveEdit's routing losses contrast the batch")
    if config.max_iters is not None and round(config.max_iters / (train_size / config.batch_size)) < 1:
        raise ValueError(
            f"{where}: key 'max_iters' ({config.max_iters}) is under half an epoch of {train_size} records at "
            f"batch_size {config.batch_size}; EasyEdit's run() would round that to 0 epochs and train nothing"
        )
