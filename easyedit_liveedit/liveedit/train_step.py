"""One meta-training step of LiveEdit, and the validation that scores edits through the real inference path.

The batch is an MMEdit batch as EasyEdit's multimodal datasets collate it: sub-batches ``edit_inner`` (the edit:
question + new answer about an image), ``edit_outer`` (a paraphrase), ``edit_outer_image`` (another rendering of
the image), ``loc`` (a text-only question) and ``loc_image`` (an unrelated image question), each with ``image``,
``text_input``, ``labels`` and ``prompts_len``. The step on ``B`` records, arranged as the authors' ``train_a_batch``
(github.com/qizhou000/LiveEdit, ``editor/vllm_editors/liveedit/liveedit.py``):

1. one expert per edit from the edit sample's layer-``l_e`` hidden states (backbone frozen);
2. reliability and text/image generality inputs mix their own edit's expert plus a random prefix of the batch's
   experts (distractors, length uniform in ``0..B``) with learned soft weights (averaged under the ablation
   ``soft_weights: average``): cross-entropy on the new answer's own tokens, the positions EasyEdit's metric scores
   (``answer_labels``);
3. image-locality inputs mix only a random prefix: ``KL(post || pre)`` against the unedited backbone;
4. routing losses (``routing_pairs``). ``authors``: for each record, a *neighbour pair* of two samples of one
   scope (reliability or generality, or its locality sample twice), the first read by the input extractor and
   the second by the edit extractor: soft routing (relative InfoNCE over the batch, absolute sigmoid with a rolled
   negative) and the hard-routing neighbour term (the pair's key beats the batch's other edit keys and the
   sentinel); and a *prototype pair* across scopes (in-scope sample and locality sample, either way round): the
   sentinel beats every edit key. ``edit``: every in-scope input is paired with its real edit, locality inputs
   with the real edits only (one direction). Both soft-routing terms are always computed; ``liveedit_loss`` trains
   those ``soft_route_terms`` names (the paper's ablations train one alone);
5. if ``filter_lambda > 0`` (ours), the hard filter's own decision on every (input, real edit) pair (an edit is in
   scope of an input exactly when its image is the input's edit image).

The authors' step also runs layer ``l_e`` a second time on its own output before adding the residual (their
``forward_from_mid_layer``), which inference does not; this step runs it once, as inference does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .layer import Mix
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
from .networks import Experts

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


def answer_labels(labels: Tensor, answer_tokens: list[int] | None = None) -> Tensor:
    """``labels`` with every token but the answer's own masked out (``IGNORE_INDEX``): what the metric scores.

    The reliability and generality losses train exactly these tokens. The joining space a tokenizer may keep
    apart (the toy world's) stays in the edit sample's *input*, where the generator reads it, but is no target:
    the backbone never learned to predict it, and EasyEdit's metric never scores it.
    """
    scored = scored_positions(labels, answer_tokens)  # (B, T) logit positions; position t predicts labels[t + 1]
    keep = torch.zeros_like(scored)
    keep[:, 1:] = scored[:, :-1]  # the label positions those logits predict
    return labels.masked_fill(~keep, IGNORE_INDEX)


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
    in_scope: list[Mix] = []
    for name, (term, acc_name) in IN_SCOPE.items():
        out, mix = editor.forward_with_experts(batch[name], experts, own | random_prefix(B, B, device))
        answer_tokens = batch[name].get("answer_tokens")
        terms[term] = answer_cross_entropy(out.logits, answer_labels(out.labels, answer_tokens))
        info[acc_name] = answer_accuracy(out.logits.detach(), out.labels, answer_tokens)
        in_scope.append(mix)
    with torch.no_grad():
        pre = editor.model(batch["loc_image"])
    post, locality = editor.forward_with_experts(batch["loc_image"], experts, random_prefix(B, B, device))
    terms["loc/image"] = locality_kl(pre.logits, post.logits, predicts_answer(post.labels))
    info["image_loc/acc"] = agreement(
        pre.logits, post.logits.detach(), post.labels, batch["loc_image"].get("answer_tokens")
    )
    if editor.config.routing_pairs == "authors":
        terms.update(_authors_routing_terms(in_scope, locality))
    else:
        terms.update(_real_edit_routing_terms(in_scope, locality, experts))
    if filter_loss:
        same = same_image(batch["edit_inner"]["image"])
        pairs = [(m, same) for m in in_scope] + [(locality, torch.zeros_like(own))]  # locality: no edit in scope
        calibration = [hard_filter_calibration_loss(m.keys.phi, experts.phi, m.keys.sentinel, y) for m, y in pairs]
        terms["filter"] = sum(calibration) / len(calibration)
    return terms, info


def _authors_routing_terms(in_scope: list[Mix], locality: Mix) -> dict[str, Tensor]:
    """The routing terms on the authors' neighbour and prototype pairs (module docstring, step 4)."""
    B = len(locality.keys)
    device = locality.keys.psi.device
    scopes = [*in_scope, locality]  # reliability, text generality, image generality, locality
    rows = torch.arange(B, device=device)

    def in_scope_choice() -> Tensor:
        """Per record: reliability or generality with equal odds, then which generality uniformly (as the authors)."""
        generality = 1 + torch.randint(0, len(in_scope) - 1, (B,), device=device)
        return torch.where(torch.randint(0, 2, (B,), device=device) == 0, 0, generality)

    def keys(choice: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(input psi, input phi, sentinel, edit psi, edit phi)`` of the chosen sample of each record."""
        stacked = [torch.stack([getattr(m.keys, k) for m in scopes]) for k in ("psi", "phi", "sentinel")]
        stacked += [torch.stack([m.edit_keys[i] for m in scopes]) for i in (0, 1)]
        return tuple(t[choice, rows] for t in stacked)  # (B, k, d_m) each

    # neighbour pairs: both samples of one scope; a locality sample is its own neighbour
    is_locality = torch.randint(0, 3, (B,), device=device) == 2  # the authors draw rel / gen / loc uniformly
    first = torch.where(is_locality, len(in_scope), in_scope_choice())
    second = torch.where(is_locality, len(in_scope), in_scope_choice())
    input_psi, input_phi, sentinel, _, _ = keys(first)
    _, _, _, edit_psi, edit_phi = keys(second)
    terms = {
        "soft_route/relative": soft_routing_relative_loss(input_psi, edit_psi),
        "soft_route/absolute": soft_routing_absolute_loss(input_psi, edit_psi),
        "hard_route/in_scope": hard_routing_in_scope_loss(input_phi, edit_phi, sentinel),
    }
    # prototype pairs: one in-scope sample and the locality sample, either way round; the sentinel must win
    locality_first = torch.randint(0, 2, (B,), device=device) == 1
    in_scope_pick = in_scope_choice()
    first = torch.where(locality_first, len(in_scope), in_scope_pick)
    second = torch.where(locality_first, in_scope_pick, len(in_scope))
    _, input_phi, sentinel, _, _ = keys(first)
    _, _, _, _, edit_phi = keys(second)
    terms["hard_route/out_scope"] = hard_routing_out_scope_loss(input_phi, edit_phi, sentinel)
    return terms


def _real_edit_routing_terms(in_scope: list[Mix], locality: Mix, experts: Experts) -> dict[str, Tensor]:
    """The routing terms pairing every in-scope input with its real edit, locality inputs with the edits."""
    n = len(in_scope)
    return {
        "soft_route/relative": sum(soft_routing_relative_loss(m.keys.psi, experts.psi) for m in in_scope) / n,
        "soft_route/absolute": sum(soft_routing_absolute_loss(m.keys.psi, experts.psi) for m in in_scope) / n,
        "hard_route/in_scope": sum(
            hard_routing_in_scope_loss(m.keys.phi, experts.phi, m.keys.sentinel) for m in in_scope
        )
        / n,
        "hard_route/out_scope": hard_routing_out_scope_loss(locality.keys.phi, experts.phi, locality.keys.sentinel),
    }


@torch.no_grad()
def routed_accuracies(editor: LiveEditModel, batch: dict[str, Any]) -> dict[str, float]:
    """EasyEdit's five accuracies through the inference path (hard + soft routing), the batch's edits stored in a
    fresh library: what editing will deliver, unlike the mixed forwards of training."""
    accuracies = {}
    with editor.using_library(ExpertLibrary(device=editor.library.device)) as library:
        library.add(editor.make_experts(batch["edit_inner"]))
        for name, (_, acc_name) in IN_SCOPE.items():
            out = editor(batch[name])
            accuracies[acc_name] = answer_accuracy(out.logits, out.labels, batch[name].get("answer_tokens"))
        for name, acc_name in (("loc", "loc/acc"), ("loc_image", "image_loc/acc")):
            pre, post = editor.model(batch[name]), editor(batch[name])
            answer_tokens = batch[name].get("answer_tokens")
            accuracies[acc_name] = agreement(pre.logits, post.logits, post.labels, answer_tokens)
    return accuracies
