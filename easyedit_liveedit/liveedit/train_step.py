"""One meta-training step of LiveEdit, and the validation that scores edits through the real inference path.

The batch is an MMEdit batch as EasyEdit's multimodal datasets collate it: sub-batches ``edit_inner`` (the edit:
question + new answer about an image), ``edit_outer`` (a paraphrase), ``edit_outer_image`` (another rendering of
the image), ``loc`` (a text-only question) and ``loc_image`` (an unrelated image question), each with ``image``,
``text_input``, ``labels`` and ``prompts_len``. The step on ``B`` records:

1. one expert per edit from the edit sample's layer-``l_e`` hidden states (backbone frozen);
2. reliability and text/image generality inputs mix their own edit's expert plus a random prefix of the batch's
   experts (distractors, length uniform in ``0..B``) with learned soft weights: cross-entropy on the new answer;
3. image-locality inputs mix only a random prefix: ``KL(post || pre)`` against the unedited backbone;
4. routing losses on the keys those forwards computed: soft (relative InfoNCE + absolute sigmoid with a rolled
   negative) and hard (in-scope inputs prefer their edit over the sentinel; locality inputs prefer the
   sentinel), and, if ``filter_lambda > 0``, the hard filter's own decision on every (input, edit) pair (an edit
   is in scope of an input exactly when its image is the input's edit image).

Where this differs from the authors' ``train_a_batch`` (github.com/qizhou000/LiveEdit,
``editor/vllm_editors/liveedit/liveedit.py``), not yet implemented here: the authors also draw edit-side keys from
same-scope inputs (not only from the edit itself), add locality-locality positive pairs, apply the out-of-scope
term in both directions, and decay the learning rate x0.1 after 10,000 steps; their training runs layer ``l_e``
twice, this step once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .library import ExpertLibrary
from .losses import (
    IGNORE_INDEX,
    answer_cross_entropy,
    hard_filter_calibration_loss,
    hard_routing_in_scope_loss,
    hard_routing_out_scope_loss,
    locality_kl,
    soft_routing_absolute_loss,
    soft_routing_relative_loss,
)
from .model import LiveEditModel

# MMEdit sub-batches in scope of their edit -> (loss term, the accuracy name EasyEdit's trainer logs).
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
    editor renders it, a tokenizer that keeps spaces apart (the toy world's) supervises the space before the
    answer too. ``answer_tokens`` (per row) keeps the last that many; None keeps the whole span.
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


def meta_losses(
    editor: LiveEditModel, batch: dict[str, Any], filter_loss: bool = False
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The loss terms of one meta-training step (see the module docstring) and the accuracies seen on the way.

    Returns:
        ``(terms, info)``: scalar loss terms keyed as ``liveedit_loss`` takes them, and float accuracies under
        the names EasyEdit's trainer logs.
    """
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
    if filter_loss:
        same = same_image(batch["edit_inner"]["image"])
        calibration = [hard_filter_calibration_loss(k.phi, experts.phi, k.sentinel, same) for k in in_scope_keys]
        calibration.append(
            hard_filter_calibration_loss(out_keys.phi, experts.phi, out_keys.sentinel, torch.zeros_like(own))
        )
        terms["filter"] = sum(calibration) / len(calibration)
    return terms, info


@torch.no_grad()
def routed_accuracies(editor: LiveEditModel, batch: dict[str, Any]) -> dict[str, float]:
    """EasyEdit's five accuracies through the inference path (hard + soft routing), the batch's edits stored in a
    fresh library: what editing will deliver, unlike the mixed forwards of training."""
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
