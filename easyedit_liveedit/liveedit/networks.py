"""LiveEdit's trainable networks: cross-attention, expert generator, key extractors, visual sentinel.

Everything here reads layer-``l_e`` hidden states ``h: (B, T, d)`` of the frozen backbone together with
boolean token masks ``image_mask, prompt_mask, answer_mask: (B, T)`` (the backbone adapter decides
which tokens are which). Shapes: ``d`` hidden size, ``d_m`` cross-attention width, ``k`` key slots,
``r`` expert rank, ``n_img`` sentinel tokens.

Decisions settled from the official code (``editor/vllm_editors/liveedit/modules.py`` and
``liveedit.py`` in github.com/qizhou000/LiveEdit, the authors' code):

- Cross-attention has no output projection: heads are concatenated straight into the value width, so
  ``U``/``V`` come out in the hidden width ``d``. The official code has no masks (batch size 1); ours
  masks padding, and a query whose key set is empty returns exactly zero (no tokens, no information).
- ``U`` and ``V`` come from two independent generators (own query ``Phi``, own LayerNorm, own
  cross-attention): the paper writes a single ``LN(H_e)``, the official code normalises twice.
- ``H_e`` is the union of image, prompt and answer tokens. Tokens before the image (BOS, system text)
  are not part of it. Order does not matter: cross-attention without positions is permutation-invariant.
- The visual key is query-conditioned: ``k`` learned slots first read the prompt tokens (CA1), the
  result then reads the visual tokens (CA2). One LayerNorm (LN1) serves both reads; the textual key
  has its own (LN2).
- The sentinel key is the *input-side* visual key of the learned tokens ``Theta``, conditioned on the
  input's own prompt (same CA1 slots, CA2 over ``LN1(Theta)``). So the bar an expert must clear
  depends on the question being asked.
- Learned query slots start as in the official code (Kaiming normal on a ``(1, n, d_m)`` tensor,
  i.e. std ``sqrt(2 / (n d_m))``). ``Theta`` starts at unit std instead of the official Kaiming std
  (about 4e-3 at d=4096, whose variance sits at LayerNorm's eps): LN1 sees it like a hidden state.
- The expert LayerNorm ``LN_r`` is one shared LayerNorm over ``h`` (official ``instant_reps_norm``).
- Key extractors normalise and read only the tokens a read keeps (``kept_tokens``), as the paper's ``LN1(h_v)``
  touches only ``h_v``: with 32 image tokens in 600 the visual read would otherwise process 568 tokens it never reads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import LiveEditConfig

logger = logging.getLogger(__name__)


def fp32(device: torch.device) -> torch.autocast:
    """A context in which autocast is off: routing keys and similarities are always computed in fp32.

    Under bf16/fp16 autocast (mixed-precision meta-training, fp16 backbones) a key's dot products would
    otherwise round differently on the edit side and the input side, and the hard filter compares them.
    """
    return torch.autocast(device_type=device.type, enabled=False)


class CrossAttention(nn.Module):
    """Multi-head cross-attention ``CA(Q, X)``: queries read a masked set of tokens ``X``.

    ``Q`` is projected to ``attn_dim`` (split over heads), ``X`` to keys (``attn_dim``) and values
    (``value_dim``); there is no output projection (as in the official code), so the output width is
    ``value_dim``. Invariant: a query whose ``X`` row is fully masked gets an exact zero vector.

    The key and value projections are folded into the few queries instead of applied to every token (the same
    attention up to float summation order): per head, ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k`` and
    ``sum_t p_t (W_v x_t + b_v) = W_v (sum_t p_t x_t) + b_v sum_t p_t``. A token then costs ``2 L H`` multiply-adds
    per input dimension instead of ``attn_dim + value_dim``: 64 against 2,048 for LiveEdit's key reads (``L = 4``
    slots, ``H = 8``, ``d_m = 1024``); folding pays whenever ``L`` is below the head width.
    """

    def __init__(self, query_dim: int, input_dim: int, attn_dim: int, value_dim: int, num_heads: int) -> None:
        super().__init__()
        for name, dim in (("attn_dim", attn_dim), ("value_dim", value_dim)):
            if dim % num_heads != 0:
                raise ValueError(f"CrossAttention: {name}={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = attn_dim // num_heads
        self.to_q = nn.Linear(query_dim, attn_dim)
        self.to_k = nn.Linear(input_dim, attn_dim)
        self.to_v = nn.Linear(input_dim, value_dim)

    def forward(self, queries: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend from ``queries`` to the unmasked tokens of ``x``.

        Args:
            queries: ``(B, L, query_dim)``, or ``(1, L, query_dim)`` broadcast over the batch.
            x: ``(B, T, input_dim)`` tokens to read.
            mask: ``(B, T)`` bool, True where a token may be read; None reads every token.

        Returns:
            ``(B, L, value_dim)``; rows whose mask is all False are zero.
        """
        B = x.shape[0]
        H, dh = self.num_heads, self.head_dim
        dv = self.to_v.out_features // H
        q = self.to_q(queries).expand(B, -1, -1)  # (B, L, attn_dim)
        q = q.reshape(B, q.shape[1], H, dh)  # (B, L, H, dh)
        # scores q . k_t with the key projection moved onto the queries: (W_k^T q) . x_t + q . b_k
        q_in = torch.einsum("blhe,hed->blhd", q, self.to_k.weight.view(H, dh, -1))  # (B, L, H, input_dim)
        q_bias = torch.einsum("blhe,he->bhl", q, self.to_k.bias.view(H, dh))  # (B, H, L)
        scores = (torch.einsum("blhd,btd->bhlt", q_in, x) + q_bias[..., None]) / math.sqrt(dh)  # (B, H, L, T)
        if mask is None:
            probs = scores.softmax(dim=-1)
        else:
            # fill with the dtype's minimum, not -inf: an all-masked row then softmaxes to a finite
            # uniform row, which the final multiply by the mask turns into exact zeros (never NaN)
            keep = mask[:, None, None, :]  # (B, 1, 1, T)
            probs = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(dim=-1) * keep
        # sum_t p_t v_t with the value projection applied once to the mix: W_v (sum_t p_t x_t) + b_v sum_t p_t
        mix = torch.einsum("bhlt,btd->blhd", probs, x)  # (B, L, H, input_dim)
        out = torch.einsum("blhd,hed->blhe", mix, self.to_v.weight.view(H, dv, -1))  # (B, L, H, dv)
        out = out + probs.sum(dim=-1).transpose(1, 2)[..., None] * self.to_v.bias.view(H, dv)  # 0 where all masked
        return out.reshape(B, out.shape[1], -1)  # (B, L, value_dim)


def kept_tokens(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The tokens ``mask`` keeps, packed to the front of each row, and the mask of the packed rows.

    Cross-attention has no positions, so ``CA(Q, x_kept)`` under the packed mask equals ``CA(Q, x)`` under ``mask``
    (up to the order of float sums; a row that keeps nothing is still all masked), while LayerNorm and the read
    run over ``n`` tokens instead of ``T``. Gradients reach exactly the kept tokens.

    Args:
        x: ``(B, T, d)`` tokens.
        mask: ``(B, T)`` bool, True where a token is kept.

    Returns:
        ``(B, n, d)`` and ``(B, n)`` bool, ``n`` the most tokens any row keeps; each row's kept tokens come first
        in their original order, shorter rows are padded with masked tokens.
    """
    n = int(mask.sum(dim=1).max()) if mask.numel() else 0
    order = mask.argsort(dim=1, descending=True, stable=True)[:, :n]  # (B, n) kept positions first
    rows = torch.arange(len(x), device=x.device)[:, None]  # (B, 1)
    return x[rows, order], mask[rows, order]  # (B, n, d), (B, n); indexing copies whole rows, unlike gather


def _learned_queries(n: int, dim: int) -> nn.Parameter:
    """``n`` learned query vectors, Kaiming-normal over the whole ``(n, dim)`` block as officially."""
    return nn.Parameter(torch.randn(n, dim) * math.sqrt(2.0 / (n * dim)))


class AnswerEmbeddings(nn.Module):
    """``LN(e) + t``: the answer tokens' input embeddings as the generator reads them, with a token type of their own.

    Ours, not the paper's (``answer_embeddings``). The cross-attention has no output projection, so ``V`` is a
    linear map of the tokens it attends to and can write only what is linearly decodable there; on the scenes toy
    world the edit layer's state of an answer token names its own word 0.75 of the time, its input embedding always.
    The edit request carries its target, so reading the target's embeddings uses nothing the editor lacks.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.token_type = nn.Parameter(torch.randn(hidden_size))

    def forward(self, embeds: Tensor) -> Tensor:
        return self.norm(embeds) + self.token_type  # (B, T, d)


class ExpertGenerator(nn.Module):
    """Turns an edit's hidden states into one rank-``r`` expert ``(U, V)`` in one forward pass.

    ``U = s * CA_U(Phi_U, LN_U(H_e))`` and ``V = s * CA_V(Phi_V, LN_V(H_e))`` with ``r`` learned queries
    per factor and ``s = 1 / (lora_scale * sqrt(r))``, which keeps a fresh expert's residual small.

    ``token_types`` (ours; off in the paper and the official code) adds a learned embedding per token type
    (image, prompt, answer) to the normalised tokens. Without positions the cross-attention cannot tell the
    answer tokens, which name the new fact, from the rest of ``H_e`` except by their content; on the toy
    backbone (BENCHMARKS.md, "Expert generator") generated experts then learned to flip yes/no answers but
    not which of ten words to say.

    ``answer_embeddings`` (ours) lets both reads also attend to the answer tokens' input embeddings
    (``AnswerEmbeddings``) beside ``H_e``: ``X = [LN(H_e); LN_e(e_o) + t_e]``.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attn_dim: int,
        num_heads: int,
        rank: int,
        lora_scale: float,
        token_types: bool = False,
        answer_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.scale = 1.0 / (lora_scale * math.sqrt(rank))
        self.phi_u = _learned_queries(rank, cross_attn_dim)
        self.phi_v = _learned_queries(rank, cross_attn_dim)
        self.norm_u = nn.LayerNorm(hidden_size)
        self.norm_v = nn.LayerNorm(hidden_size)
        self.attn_u = CrossAttention(cross_attn_dim, hidden_size, cross_attn_dim, hidden_size, num_heads)
        self.attn_v = CrossAttention(cross_attn_dim, hidden_size, cross_attn_dim, hidden_size, num_heads)
        self.types_u = nn.Parameter(torch.randn(3, hidden_size)) if token_types else None  # image, prompt, answer
        self.types_v = nn.Parameter(torch.randn(3, hidden_size)) if token_types else None
        self.answer_u = AnswerEmbeddings(hidden_size) if answer_embeddings else None
        self.answer_v = AnswerEmbeddings(hidden_size) if answer_embeddings else None

    @property
    def reads_answer_embeddings(self) -> bool:
        return self.answer_u is not None

    def forward(
        self,
        h: Tensor,
        image_mask: Tensor,
        prompt_mask: Tensor,
        answer_mask: Tensor,
        answer_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``h (B, T, d)``, the ``(B, T)`` masks whose union is ``H_e`` and, when the generator reads them, the
        input embeddings ``(B, T, d)`` (read at ``answer_mask``) -> ``U, V``, each ``(B, r, d)``."""
        if self.reads_answer_embeddings and (answer_embeds is None or answer_embeds.shape != h.shape):
            got = None if answer_embeds is None else tuple(answer_embeds.shape)
            raise ValueError(
                f"answer_embeddings: expected the input embeddings {tuple(h.shape)} of the edit samples, got {got} "
                "(the language model's input embeddings must have the hidden width)"
            )
        masks = (image_mask, prompt_mask, answer_mask)
        factors = []
        for phi, norm, types, answer, attn in (
            (self.phi_u, self.norm_u, self.types_u, self.answer_u, self.attn_u),
            (self.phi_v, self.norm_v, self.types_v, self.answer_v, self.attn_v),
        ):
            x, mask = self._tokens(h, norm, types, masks), image_mask | prompt_mask | answer_mask
            if answer is not None:  # the answer's input embeddings join H_e as tokens of their own
                x = torch.cat([x, answer(answer_embeds)], dim=1)  # (B, 2T, d)
                mask = torch.cat([mask, answer_mask], dim=1)  # (B, 2T)
            factors.append(self.scale * attn(phi[None], x, mask))  # (B, r, d)
        return factors[0], factors[1]

    @staticmethod
    def _tokens(h: Tensor, norm: nn.LayerNorm, types: Tensor | None, masks: tuple[Tensor, ...]) -> Tensor:
        """``LN(h)``, plus each token's type embedding when ``types`` is on. ``(B, T, d)``."""
        x = norm(h)
        if types is None:
            return x
        return x + torch.stack(masks, dim=-1).to(x.dtype) @ types  # (B, T, 3) @ (3, d)


class KeyExtractor(nn.Module):
    """Routing keys of one side (edit or input): a textual key and a query-conditioned visual key.

    ``psi_p = CA3(E2, LN2(h_p))`` and ``phi_v = CA2(CA1(E1, LN1(h_p)), LN1(h_v))``, each ``(B, k, d_m)``.
    The visual key is split in two calls so that one set of prompt-conditioned slots can read both the
    real image tokens and the sentinel tokens. Without ``prompt_guided`` (the paper's ablation of its prompt-guided
    visual extraction) the slots are ``E1`` itself: ``phi_v = CA2(E1, LN1(h_v))``, the same reading for every question.
    """

    def __init__(
        self, hidden_size: int, cross_attn_dim: int, num_heads: int, num_key_slots: int, prompt_guided: bool = True
    ) -> None:
        super().__init__()
        self.prompt_guided = prompt_guided
        dm = cross_attn_dim
        self.visual_norm = nn.LayerNorm(hidden_size)  # LN1, shared by prompt and visual tokens
        self.visual_queries = _learned_queries(num_key_slots, dm)  # E1
        self.read_prompt = CrossAttention(dm, hidden_size, dm, dm, num_heads)  # CA1
        self.read_visual = CrossAttention(dm, hidden_size, dm, dm, num_heads)  # CA2
        self.text_norm = nn.LayerNorm(hidden_size)  # LN2
        self.text_queries = _learned_queries(num_key_slots, dm)  # E2
        self.read_text = CrossAttention(dm, hidden_size, dm, dm, num_heads)  # CA3

    def query_slots(self, h: Tensor, prompt_mask: Tensor) -> Tensor:
        """``CA1(E1, LN1(h_p))``: what the question asks about. ``(B, T, d) -> (B, k, d_m)``."""
        if not self.prompt_guided:
            return self.visual_queries[None].expand(h.shape[0], -1, -1)
        return self._read(self.read_prompt, self.visual_norm, self.visual_queries[None], h, prompt_mask)

    def visual_key(self, slots: Tensor, visual: Tensor, visual_mask: Tensor | None = None) -> Tensor:
        """``CA2(slots, LN1(visual))``: the parts of the image the question points at. -> ``(B, k, d_m)``."""
        return self._read(self.read_visual, self.visual_norm, slots, visual, visual_mask)

    def text_key(self, h: Tensor, prompt_mask: Tensor) -> Tensor:
        """``CA3(E2, LN2(h_p))``: the question itself. ``(B, T, d) -> (B, k, d_m)``."""
        return self._read(self.read_text, self.text_norm, self.text_queries[None], h, prompt_mask)

    @staticmethod
    def _read(attn: CrossAttention, norm: nn.LayerNorm, queries: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """``attn(queries, norm(x))`` over the tokens ``mask`` keeps (all of ``x`` when None), packed first."""
        if mask is not None:
            x, mask = kept_tokens(x, mask)  # (B, n, d), n <= T
        return attn(queries, norm(x), mask)


@dataclass(frozen=True)
class Experts:
    """``B`` new experts, one per edit: what the library stores. All tensors share the batch axis."""

    psi: Tensor  # (B, k, d_m) edit-side textual key
    phi: Tensor  # (B, k, d_m) edit-side visual key
    U: Tensor  # (B, r, d) expert input factor
    V: Tensor  # (B, r, d) expert output factor

    def __len__(self) -> int:
        return self.U.shape[0]


@dataclass(frozen=True)
class InputKeys:
    """Input-side routing keys of ``B`` inputs (questions to answer, possibly about an edited fact)."""

    psi: Tensor  # (B, k, d_m) textual key, drives the soft weights
    phi: Tensor  # (B, k, d_m) visual key, drives the hard filter
    sentinel: Tensor  # (B, k, d_m) visual key of Theta under this input's prompt: the bar to clear
    has_image: Tensor  # (B,) bool; inputs without image tokens route to no expert (official behaviour)

    def __len__(self) -> int:
        return self.psi.shape[0]


def expert_residual(x: Tensor, U: Tensor, V: Tensor, weights: Tensor) -> Tensor:
    """Mixture of rank-``r`` ReLU experts: ``sum_m w_bm ReLU(x_bt U_m^T) V_m`` at every token.

    Args:
        x: ``(B, T, d)`` already normalised by ``LN_r``.
        U, V: ``(M, r, d)`` the experts in play.
        weights: ``(B, M)`` per-input mixture weights (0 for experts an input did not select).

    Returns:
        ``(B, T, d)``; exactly zero for inputs whose weights are all zero.
    """
    B, T, _ = x.shape
    M, r, d = V.shape
    a = torch.relu(torch.einsum("btd,mrd->btmr", x, U))  # (B, T, M, r)
    a = a * weights[:, None, :, None]  # weight each expert's bottleneck, (B, T, M, r)
    return (a.reshape(B, T, M * r) @ V.reshape(M * r, d)).reshape(B, T, d)  # (B, T, d)


def apply_experts(h: Tensor, layer_norm: nn.Module, U: Tensor, V: Tensor, weights: Tensor) -> Tensor:
    """``h' = h + sum_m w_m ReLU(LN_r(h) U_m^T) V_m``, computed in ``LN_r``'s dtype and returned in ``h``'s.

    Args:
        h: ``(B, T, d)`` hidden states at layer ``l_e`` (any device/dtype; experts follow ``h``'s device).
        layer_norm: ``LN_r``.
        U, V: ``(M, r, d)``; weights: ``(B, M)``.
    """
    param = next(layer_norm.parameters(), None)
    x = layer_norm(h if param is None else h.to(param.dtype))  # (B, T, d), LN_r(h)
    U, V, weights = (t.to(device=x.device, dtype=x.dtype) for t in (U, V, weights))
    return h + expert_residual(x, U, V, weights).to(h.dtype)


class LiveEditNetwork(nn.Module):
    """Every trainable part of LiveEdit, meta-trained once and then frozen.

    An edit is one forward pass (``make_experts``); answering a question needs its input keys
    (``input_keys``) and, after routing, ``apply_experts``. The backbone itself is never touched.
    """

    def __init__(self, hidden_size: int, config: LiveEditConfig) -> None:
        """The networks for a backbone of width ``hidden_size``, sized by ``config`` (which validated its own fields).

        Raises:
            ValueError: if ``hidden_size`` is not positive or not divisible by ``config.num_heads`` (the generator's
                value heads split the hidden width).
        """
        super().__init__()
        if hidden_size <= 0 or hidden_size % config.num_heads:
            raise ValueError(
                f"LiveEditNetwork: hidden_size={hidden_size} must be positive and divisible by num_heads="
                f"{config.num_heads}"
            )
        self.hidden_size = hidden_size
        self.config = config
        dm, heads = config.cross_attn_dim, config.num_heads
        self.cross_attn_dim = dm
        self.rank = config.rank
        self.num_key_slots = config.num_key_slots
        self.generator = ExpertGenerator(
            hidden_size, dm, heads, config.rank, config.lora_scale, config.token_types, config.answer_embeddings
        )
        guided = config.prompt_guided_keys
        self.edit_extractor = KeyExtractor(hidden_size, dm, heads, config.num_key_slots, guided)
        self.input_extractor = KeyExtractor(hidden_size, dm, heads, config.num_key_slots, guided)
        self.sentinel = nn.Parameter(torch.randn(config.num_sentinel_tokens, hidden_size))  # Theta, (n_img, d)
        self.expert_norm = nn.LayerNorm(hidden_size)  # LN_r in front of every expert

    def _prepare(self, h: Tensor, *masks: Tensor) -> Tensor:
        """Check mask shapes and cast ``h`` to the network's dtype (fp32; the backbone may run in fp16)."""
        if h.dim() != 3 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden states (B, T, {self.hidden_size}), got {tuple(h.shape)}")
        for m in masks:
            if m.shape != h.shape[:2] or m.dtype != torch.bool:
                raise ValueError(f"expected bool masks of shape {tuple(h.shape[:2])}, got {m.dtype} {tuple(m.shape)}")
        return h.to(self.sentinel.dtype)

    def edit_keys(self, h: Tensor, image_mask: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Edit-side keys ``(psi, phi)``, each ``(B, k, d_m)``.

        Used by ``make_experts`` and by training, where edit-side keys of other inputs are contrasted.
        An edit without image tokens gets ``phi = 0`` (nothing to read); MMEdit edits always have one.
        """
        h = self._prepare(h, image_mask, prompt_mask)
        ex = self.edit_extractor
        with fp32(h.device):
            psi = ex.text_key(h, prompt_mask)  # (B, k, d_m)
            phi = ex.visual_key(ex.query_slots(h, prompt_mask), h, image_mask)  # (B, k, d_m)
        return psi, phi

    def make_experts(
        self,
        h: Tensor,
        image_mask: Tensor,
        prompt_mask: Tensor,
        answer_mask: Tensor,
        answer_embeds: Tensor | None = None,
    ) -> Experts:
        """One expert per edit from its teacher-forced hidden states (prompt + new target).

        Args:
            h: ``(B, T, d)`` layer-``l_e`` hidden states of the ``B`` edit samples.
            image_mask, prompt_mask, answer_mask: ``(B, T)`` bool; their union is ``H_e``.
            answer_embeds: ``(B, T, d)`` the language model's input embeddings of the same samples, read at
                ``answer_mask``; required when the generator reads them (``answer_embeddings``), else ignored.

        Returns:
            ``Experts`` with ``psi, phi (B, k, d_m)`` and ``U, V (B, r, d)``.
        """
        h = self._prepare(h, image_mask, prompt_mask, answer_mask)
        if answer_embeds is not None:
            answer_embeds = answer_embeds.to(h.dtype)  # the backbone may run in fp16; the networks run in fp32
        psi, phi = self.edit_keys(h, image_mask, prompt_mask)
        U, V = self.generator(h, image_mask, prompt_mask, answer_mask, answer_embeds)  # H_e = [h_v; h_p; h_o]
        return Experts(psi=psi, phi=phi, U=U, V=V)

    def input_keys(self, h: Tensor, image_mask: Tensor, prompt_mask: Tensor) -> InputKeys:
        """Input-side keys of ``B`` inputs, plus each input's sentinel key.

        Args:
            h: ``(B, T, d)`` layer-``l_e`` hidden states of the inputs.
            image_mask, prompt_mask: ``(B, T)`` bool. Answer tokens must not be in ``prompt_mask``:
                at inference the answer is what is being generated.
        """
        h = self._prepare(h, image_mask, prompt_mask)
        ex = self.input_extractor
        B = h.shape[0]
        with fp32(h.device):
            slots = ex.query_slots(h, prompt_mask)  # (B, k, d_m), shared by the real and the sentinel read
            return InputKeys(
                psi=ex.text_key(h, prompt_mask),
                phi=ex.visual_key(slots, h, image_mask),
                sentinel=ex.visual_key(slots, self.sentinel[None].expand(B, -1, -1)),  # Theta under this prompt
                has_image=image_mask.any(dim=1),
            )

    def apply_experts(self, h: Tensor, U: Tensor, V: Tensor, weights: Tensor) -> Tensor:
        """``h + sum_m w_m ReLU(LN_r(h) U_m^T) V_m`` with this network's ``LN_r`` (differentiable, for training).

        Args: ``h (B, T, d)``, ``U, V (M, r, d)``, ``weights (B, M)``. Returns ``(B, T, d)`` in ``h``'s dtype.
        """
        return apply_experts(h, self.expert_norm, U, V, weights)
