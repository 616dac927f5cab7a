"""LiveEdit's meta-training losses: pure functions of tensors, combined in one place.

Edit losses (reliability, generality, locality) need backbone logits; routing losses only keys.

Conventions and decisions, from the official code (``train_a_batch`` in
``editor/vllm_editors/liveedit/liveedit.py`` and ``label_loss`` / ``logit_KL_loss`` in
``editor/vllms_for_edit/base.py``, github.com/qizhou000/LiveEdit):

- Labels follow Hugging Face / EasyEdit multimodal: ``labels (B, T)`` are aligned with the input tokens
  (``-100`` = ignore) and the causal shift happens here: ``logits[:, t]`` predicts ``labels[:, t + 1]``.
- Token losses average over each sample's supervised tokens, then over samples (the official code
  runs one sample at a time and divides by the batch size), so a long answer does not outweigh a
  short one. Samples with no supervised token are left out; an empty batch gives 0, never NaN.
- Locality: the official code computes ``KL(post || pre)`` (softmax of the *edited* logits weighs the
  log-ratio), where the paper writes ``KL(pre || post)``; we follow the official code.
- Routing losses use the same similarity as inference (``routing.similarity``, slot mean,
  ``1/sqrt(d_m)``, no temperature). The official code writes ``-log(p + 1e-8)``; we use
  ``log_softmax`` / ``logsigmoid``, equal up to that epsilon and stable for confident scores.
- Soft routing: relative term = InfoNCE of each input's textual key against the batch's edit keys
  (row ``i`` matches column ``i``); absolute term = binary sigmoid loss with positive ``(i, i)`` and
  negative ``(i, i-1 mod B)`` (the official ``roll(1, 1)``). Needs ``B >= 2`` to mean anything. The paper's
  ablations of one term (``soft_route_terms: relative`` or ``absolute``) leave the other out of the total;
  ``liveedit_loss`` still reports both.
- Hard routing: softmax over ``[sim(phi_in, phi_edit_1..B), sim(phi_in, phi_sentinel)]``; in-scope
  pairs push the matching edit's column up, out-of-scope pairs push the sentinel column up.

How the official training step feeds these losses (``organize_batch_data`` / ``train_a_batch``;
``train_step.py`` says which of these it does not do yet):

- One expert per edit of the batch. Edit losses use ground-truth hard routing plus distractors:
  a reliability input uses its own edit's expert, a generality input every expert of its edit's
  group; then each input also switches on a random prefix of the batch's experts (length uniform in
  ``0..M``). Locality inputs get only such a random prefix, possibly empty: experts *are* applied to
  locality inputs in training, and the KL teaches the sigmoid gate to stay low there.
- Within the switched-on set the weights are the learned soft weights (input-side ``psi`` of the
  input vs edit-side ``psi`` of the experts), so the edit losses also train the soft router. The
  residual is added at every token of the input, teacher-forced on prompt + target.
- Only locality questions with an image (M-Locality) are trained on; text-only ones are skipped.
- Routing pairs: row ``i`` pairs an input-side key of one input with an edit-side key of another
  input of the same scope (reliability/generality of edit ``i``, or locality of sample ``i``): the
  edit-side extractor is run on inputs too, not only on edit prompts. Out-of-scope pairs take one
  side from reliability/generality of sample ``i`` and the other from its locality.
- Adam, lr 1e-4, multiplied by 0.1 after 10,000 steps; all loss weights 1.

Beyond the official code, one optional term (group ``filter``, weight ``filter_lambda``, 0 = off, the paper's
setting): the hard-filter calibration loss. The two InfoNCE terms only ask the matching edit to beat the
sentinel; nothing asks a *non-matching* edit of the batch to stay below it, yet at inference every such edit
that clears the bar is mixed in. The calibration term trains exactly the decision inference makes, on every
(input, edit) pair of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import SOFT_ROUTE_TERMS
from .routing import paired_similarity, similarity

IGNORE_INDEX = -100
LOSS_GROUPS = ("rel", "gen", "loc", "soft_route", "hard_route", "filter")  # weighted by ``<group>_lambda``
# ``soft_route_terms`` -> the soft-routing term it leaves untrained (reported, not added): the paper's ablations
UNTRAINED = {"both": None, "relative": "soft_route/absolute", "absolute": "soft_route/relative"}


def _log_probs(logits: Tensor) -> Tensor:
    """``log_softmax`` in at least fp32: fp16/bf16 backbones get an fp32 loss, fp64 stays fp64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)


def _per_sample_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values (B, T)`` over ``mask`` within each sample, then over samples that have any."""
    mask = mask.to(values.dtype)
    count = mask.sum(dim=1)  # (B,)
    per_sample = (values * mask).sum(dim=1) / count.clamp_min(1)  # (B,)
    has_any = count > 0
    return (per_sample * has_any).sum() / has_any.sum().clamp_min(1)


def answer_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Teacher-forced cross-entropy on the answer tokens (reliability, generality).

    Args:
        logits: ``(B, T, V)`` backbone logits.
        labels: ``(B, T)`` long, aligned with the inputs; ``-100`` where no loss is taken.

    Returns:
        Scalar: token mean within each sample, then mean over samples with at least one label.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]  # causal shift: position t predicts token t+1
    mask = labels != IGNORE_INDEX  # (B, T-1)
    log_probs = _log_probs(logits)  # (B, T-1, V)
    token_ll = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return _per_sample_mean(-token_ll, mask)


def locality_kl(pre_logits: Tensor, post_logits: Tensor, mask: Tensor) -> Tensor:
    """``KL(post || pre)`` of the next-token distributions at the masked positions (locality).

    Direction follows the official code, not the paper's ``KL(pre || post)``: the edited
    distribution weighs the log-ratio. ``pre_logits`` come from the unedited model and get no gradient.

    Args:
        pre_logits, post_logits: ``(B, T, V)`` before / after the edit, same inputs.
        mask: ``(B, T)`` bool, positions of the logits to compare (e.g. those predicting answer tokens).

    Returns:
        Scalar: mean within each sample, then over samples with any masked position; 0 if none.
    """
    log_pre = _log_probs(pre_logits.detach())  # (B, T, V)
    log_post = _log_probs(post_logits)  # (B, T, V)
    kl = (log_post.exp() * (log_post - log_pre)).sum(dim=-1)  # (B, T)
    return _per_sample_mean(kl, mask)


def soft_routing_relative_loss(input_psi: Tensor, edit_psi: Tensor) -> Tensor:
    """InfoNCE over the batch: input ``i``'s textual key must prefer edit ``i`` among the ``B`` edits.

    Args: ``input_psi, edit_psi (B, k, d_m)``, row ``i`` of both from the same scope. Returns a scalar.
    """
    logits = similarity(input_psi, edit_psi)  # (B, B)
    return -logits.log_softmax(dim=1).diagonal().mean()


def soft_routing_absolute_loss(input_psi: Tensor, edit_psi: Tensor) -> Tensor:
    """Binary term: ``sigmoid(a_ii) -> 1`` for the match, ``sigmoid(a_i,i-1) -> 0`` for a rolled negative.

    This calibrates the sigmoid gate of the soft weights, which the softmax alone leaves free.
    Args: ``input_psi, edit_psi (B, k, d_m)``. Returns a scalar.
    """
    logits = similarity(input_psi, edit_psi)  # (B, B)
    positive = logits.diagonal()  # a_ii
    negative = logits.roll(1, dims=1).diagonal()  # a_{i, i-1 mod B}
    return -(F.logsigmoid(positive) + F.logsigmoid(-negative)).mean()


def _sentinel_logits(input_phi: Tensor, edit_phi: Tensor, sentinel_phi: Tensor) -> Tensor:
    """``[sim(input_i, edit_j) for j < B] + [sim(input_i, sentinel_i)]``: ``(B, B + 1)``."""
    return torch.cat([similarity(input_phi, edit_phi), paired_similarity(input_phi, sentinel_phi)[:, None]], dim=1)


def hard_routing_in_scope_loss(input_phi: Tensor, edit_phi: Tensor, sentinel_phi: Tensor) -> Tensor:
    """In-scope pairs: input ``i``'s visual key must prefer edit ``i`` over other edits and its sentinel.

    Args: ``(B, k, d_m)`` each; ``sentinel_phi`` is input ``i``'s own sentinel key. Returns a scalar.
    """
    return -_sentinel_logits(input_phi, edit_phi, sentinel_phi).log_softmax(dim=1).diagonal().mean()


def hard_routing_out_scope_loss(input_phi: Tensor, edit_phi: Tensor, sentinel_phi: Tensor) -> Tensor:
    """Out-of-scope pairs: input ``i``'s sentinel must beat every edit in the batch.

    Args: ``(B, k, d_m)`` each; row ``i`` of ``edit_phi`` is out of scope for input ``i``. Returns a scalar.
    """
    return -_sentinel_logits(input_phi, edit_phi, sentinel_phi).log_softmax(dim=1)[:, -1].mean()


def hard_filter_calibration_loss(
    input_phi: Tensor, edit_phi: Tensor, sentinel_phi: Tensor, in_scope: Tensor
) -> Tensor:
    """Logistic loss on the hard filter's own decision for every (input, edit) pair.

    The margin ``sim(input_i, edit_j) - sim(input_i, sentinel_i)`` must be positive where edit ``j`` is in
    scope of input ``i`` and negative elsewhere: ``mean softplus(-y_ij * margin_ij)`` with ``y = +-1``.

    Args:
        input_phi: ``(B, k, d_m)``; edit_phi: ``(M, k, d_m)``; sentinel_phi: ``(B, k, d_m)`` (input ``i``'s own).
        in_scope: ``(B, M)`` bool, True where edit ``j`` is about the input's image.
    """
    margin = similarity(input_phi, edit_phi) - paired_similarity(input_phi, sentinel_phi)[:, None]  # (B, M)
    sign = in_scope.to(margin.dtype) * 2 - 1
    return F.softplus(-sign * margin).mean()


def liveedit_loss(
    terms: Mapping[str, Tensor],
    *,
    rel_lambda: float = 1.0,
    gen_lambda: float = 1.0,
    loc_lambda: float = 1.0,
    soft_route_lambda: float = 1.0,
    hard_route_lambda: float = 1.0,
    filter_lambda: float = 0.0,
    soft_route_terms: str = "both",
) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the loss terms, plus float parts for logging.

    Args:
        terms: scalar losses keyed ``"<group>"`` or ``"<group>/<name>"`` with group in ``LOSS_GROUPS``,
            e.g. ``{"rel": ..., "gen/text": ..., "gen/image": ..., "loc/image": ...,
            "soft_route/relative": ..., "soft_route/absolute": ..., "hard_route/in_scope": ...,
            "hard_route/out_scope": ...}``. Terms within a group add up (as officially); missing
            groups contribute nothing.
        *_lambda: weight of each group (official configs: all 1; ``filter`` is ours, off by default).
        soft_route_terms: which soft-routing terms train, one of ``SOFT_ROUTE_TERMS``: ``both`` (the paper), or
            ``relative`` / ``absolute`` alone (the paper's ablations); the other term is reported, not added.

    Returns:
        ``(total, parts)``: ``parts`` has every term given (trained or not), every present group's sum of trained
        terms (unweighted: what its lambda multiplies) and ``"total"`` (weighted).
    """
    lambdas = dict(
        zip(
            LOSS_GROUPS,
            (rel_lambda, gen_lambda, loc_lambda, soft_route_lambda, hard_route_lambda, filter_lambda),
            strict=True,
        )
    )
    if not terms:
        raise ValueError("liveedit_loss: no loss terms given")
    if soft_route_terms not in SOFT_ROUTE_TERMS:
        raise ValueError(
            f"liveedit_loss: soft_route_terms is {soft_route_terms!r}; expected one of {', '.join(SOFT_ROUTE_TERMS)}"
        )
    untrained = UNTRAINED[soft_route_terms]
    groups: dict[str, Tensor] = {}
    parts: dict[str, float] = {}
    for key, value in terms.items():
        group = key.split("/", 1)[0]
        if group not in lambdas:
            raise ValueError(f"liveedit_loss: term {key!r} has unknown group {group!r}; expected one of {LOSS_GROUPS}")
        if value.dim() != 0:
            raise ValueError(f"liveedit_loss: term {key!r} must be a scalar, got shape {tuple(value.shape)}")
        parts[key] = float(value.detach())
        if key == untrained:
            continue  # an ablated soft-routing term: logged, never trained
        groups[group] = groups[group] + value if group in groups else value
    total = sum(lambdas[group] * value for group, value in groups.items())
    if not groups:  # only an ablated term was given: nothing trains
        total = next(iter(terms.values())).detach() * 0
    parts.update({group: float(value.detach()) for group, value in groups.items()})
    parts["total"] = float(total.detach())
    return total, parts
