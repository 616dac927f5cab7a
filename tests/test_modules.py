"""LiveEditNetwork and its parts: shapes, masks, conditioning, gradients (tiny seeded sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from easyedit_liveedit.liveedit.config import LiveEditConfig
from easyedit_liveedit.liveedit.losses import (
    hard_routing_in_scope_loss,
    hard_routing_out_scope_loss,
    liveedit_loss,
    soft_routing_absolute_loss,
    soft_routing_relative_loss,
)
from easyedit_liveedit.liveedit.networks import (
    CrossAttention,
    ExpertGenerator,
    KeyExtractor,
    LiveEditNetwork,
    kept_tokens,
)
from easyedit_liveedit.liveedit.routing import similarity, soft_weights

D, DM, HEADS, R, K, N_IMG = 16, 8, 2, 2, 2, 3


def make_net(seed: int = 0, **overrides) -> LiveEditNetwork:
    torch.manual_seed(seed)
    kwargs = dict(cross_attn_dim=DM, num_heads=HEADS, rank=R, num_key_slots=K, num_sentinel_tokens=N_IMG)
    kwargs.update(overrides)
    return LiveEditNetwork(D, LiveEditConfig(**kwargs))


def make_batch(B: int = 3, seed: int = 1):
    """Layout per sample: BOS | 4 image | prompt (3 or 2) | answer (2 or 1) | padding."""
    g = torch.Generator().manual_seed(seed)
    T = 11
    h = torch.randn(B, T, D, generator=g) * 3 + 1
    image = torch.zeros(B, T, dtype=torch.bool)
    prompt = torch.zeros_like(image)
    answer = torch.zeros_like(image)
    for b in range(B):
        n_prompt, n_answer = (3, 2) if b % 2 == 0 else (2, 1)
        image[b, 1:5] = True
        prompt[b, 5 : 5 + n_prompt] = True
        answer[b, 5 + n_prompt : 5 + n_prompt + n_answer] = True
    return h, image, prompt, answer


# ---------------------------------------------------------------- CrossAttention
@torch.no_grad()
def reference_cross_attention(ca: CrossAttention, queries, x, mask):
    """Per sample, per head, per query: softmax over the valid tokens only, written out with loops."""
    B, T, _ = x.shape
    H, dh = ca.num_heads, ca.head_dim
    q_all = ca.to_q(queries).expand(B, -1, -1)
    k_all, v_all = ca.to_k(x), ca.to_v(x)
    dv = v_all.shape[-1] // H
    out = torch.zeros(B, q_all.shape[1], H * dv)
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        for head in range(H):
            for i in range(q_all.shape[1]):
                if not valid:
                    continue
                q = q_all[b, i, head * dh : (head + 1) * dh]
                scores = [float(q @ k_all[b, t, head * dh : (head + 1) * dh]) / math.sqrt(dh) for t in valid]
                top = max(scores)
                exps = [math.exp(s - top) for s in scores]
                total = sum(exps)
                for e, t in zip(exps, valid, strict=True):
                    out[b, i, head * dv : (head + 1) * dv] += e / total * v_all[b, t, head * dv : (head + 1) * dv]
    return out


def test_cross_attention_matches_loop_reference_with_padding():
    torch.manual_seed(0)
    ca = CrossAttention(query_dim=DM, input_dim=D, attn_dim=DM, value_dim=6, num_heads=HEADS)
    queries = torch.randn(1, 3, DM)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    out = ca(queries, x, mask)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out, reference_cross_attention(ca, queries, x, mask), rtol=1e-5, atol=1e-6)


def test_cross_attention_ignores_masked_tokens():
    torch.manual_seed(0)
    ca = CrossAttention(DM, D, DM, D, HEADS)
    queries, x = torch.randn(2, 3, DM), torch.randn(2, 5, D)
    mask = torch.tensor([[True, False, True, False, True], [True, True, False, False, False]])
    x_changed = torch.where(mask[..., None], x, torch.randn_like(x) * 100)
    assert torch.equal(ca(queries, x, mask), ca(queries, x_changed, mask))


def test_cross_attention_fully_masked_row_is_zero_with_finite_gradients():
    torch.manual_seed(0)
    ca = CrossAttention(DM, D, DM, D, HEADS)
    queries = torch.randn(1, 3, DM, requires_grad=True)
    x = torch.randn(2, 4, D, requires_grad=True)
    mask = torch.tensor([[False, False, False, False], [True, False, True, True]])
    out = ca(queries, x, mask)
    assert torch.equal(out[0], torch.zeros(3, D))
    assert out[1].abs().sum() > 0
    out.square().sum().backward()
    grads = [queries.grad, x.grad, *(p.grad for p in ca.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.equal(x.grad[0], torch.zeros(4, D))  # nothing flowed through the empty row


def test_cross_attention_rejects_indivisible_widths():
    with pytest.raises(ValueError, match="value_dim"):
        CrossAttention(DM, D, DM, 7, HEADS)


def test_kept_tokens_packs_each_rows_tokens_in_order():
    x = torch.arange(2 * 5, dtype=torch.float64).reshape(2, 5, 1)
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    packed, packed_mask = kept_tokens(x, mask)
    assert packed[..., 0].tolist() == [[1, 3, 4], [5, 6, 7]]  # row 1: its one token, then masked filler
    assert packed_mask.tolist() == [[True, True, True], [True, False, False]]
    empty, empty_mask = kept_tokens(x, torch.zeros(2, 5, dtype=torch.bool))
    assert empty.shape == (2, 0, 1) and empty_mask.shape == (2, 0)


# ---------------------------------------------------------------- KeyExtractor
def _full_masked_reads(ex: KeyExtractor, h, image, prompt):
    """The three key reads over all ``T`` tokens under their masks (the computation before packing)."""
    slots = ex.read_prompt(ex.visual_queries[None], ex.visual_norm(h), prompt)
    return (
        ex.read_text(ex.text_queries[None], ex.text_norm(h), prompt),
        slots,
        ex.read_visual(slots, ex.visual_norm(h), image),
    )


def _packed_reads(ex: KeyExtractor, h, image, prompt):
    slots = ex.query_slots(h, prompt)
    return ex.text_key(h, prompt), slots, ex.visual_key(slots, h, image)


@pytest.mark.parametrize("batch, full_rows", [(4, True), (3, False), (1, False)])
def test_key_reads_of_packed_tokens_equal_the_full_masked_reads(batch, full_rows):
    """Guards ``kept_tokens`` in ``KeyExtractor``: each read normalises and projects only the tokens it keeps, and
    gives the keys, and the gradients, of reading all ``T`` tokens under the mask (fp64: only the order of float sums
    differs). Random masks; row 0 has no image tokens (at batch 1 the image read packs to width 0); with
    ``full_rows`` one row is all image and one all prompt, else every row keeps fewer than ``T`` tokens, so a read
    that dropped tokens past the packed width would show. Rows that keep nothing stay exact zeros."""
    torch.manual_seed(0)
    ex = KeyExtractor(D, DM, HEADS, K).double()
    g = torch.Generator().manual_seed(3)
    T = 9
    h = (torch.randn(batch, T, D, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()
    image, prompt = torch.rand(batch, T, generator=g) < 0.4, torch.rand(batch, T, generator=g) < 0.4
    image[0] = False  # a text-only input
    if full_rows:
        image[1], prompt[0], prompt[1] = True, True, False  # every token an image token / a prompt token
    else:
        image[:, -1], prompt[:, 0] = True, False  # the packed width < T and tokens sit past it
        image[0] = False
        assert image.sum(1).max() < T and prompt.sum(1).max() < T
    widths = []  # tokens each read projects
    for attn in (ex.read_prompt, ex.read_visual, ex.read_text):
        attn.register_forward_pre_hook(lambda _, args: widths.append(args[1].shape[1]))
    weights = [torch.randn(batch, K, DM, generator=g, dtype=torch.float64) for _ in range(3)]
    results = []
    for reads in (_full_masked_reads, _packed_reads):
        ex.zero_grad()
        h.grad = None
        keys = reads(ex, h, image, prompt)
        sum((w * key).sum() for w, key in zip(weights, keys, strict=True)).backward()
        results.append((keys, h.grad.clone(), {n: p.grad.clone() for n, p in ex.named_parameters()}))
    (full, full_h_grad, full_grads), (packed, packed_h_grad, packed_grads) = results
    n_prompt, n_image = int(prompt.sum(1).max()), int(image.sum(1).max())
    assert widths == [T, T, T] + [n_prompt, n_prompt, n_image]  # the full reads, then the packed ones
    for name, a, b in zip(("psi", "slots", "phi"), full, packed, strict=True):
        torch.testing.assert_close(b, a, msg=name)
    assert torch.equal(packed[2][0], torch.zeros(K, DM))  # no image tokens: an exact zero visual key
    if full_rows:
        assert torch.equal(packed[0][1], torch.zeros(K, DM))  # no prompt tokens: an exact zero textual key
    torch.testing.assert_close(packed_h_grad, full_h_grad)
    unread = ~(image | prompt)
    assert torch.equal(packed_h_grad[unread], torch.zeros_like(packed_h_grad[unread]))
    for name, grad in full_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, msg=name)


# ---------------------------------------------------------------- ExpertGenerator
def test_expert_generator_formula_and_scale():
    torch.manual_seed(0)
    gen = ExpertGenerator(D, DM, HEADS, rank=R, lora_scale=5.0)
    h, image, prompt, answer = make_batch()
    mask = image | prompt | answer
    U, V = gen(h, image, prompt, answer)
    assert U.shape == V.shape == (3, R, D)
    s = 1.0 / (5.0 * math.sqrt(R))
    torch.testing.assert_close(U, s * gen.attn_u(gen.phi_u[None], gen.norm_u(h), mask))
    torch.testing.assert_close(V, s * gen.attn_v(gen.phi_v[None], gen.norm_v(h), mask))
    # doubling lora_scale halves both factors (same weights, different s)
    torch.manual_seed(0)
    gen2 = ExpertGenerator(D, DM, HEADS, rank=R, lora_scale=10.0)
    U2, V2 = gen2(h, image, prompt, answer)
    torch.testing.assert_close(U2 * 2, U)
    torch.testing.assert_close(V2 * 2, V)


def test_expert_generator_token_types_tell_the_answer_apart():
    torch.manual_seed(0)
    h, image, prompt, answer = make_batch()
    relabelled = (image, prompt | answer, torch.zeros_like(answer))  # same H_e, the answer counted as prompt
    plain = ExpertGenerator(D, DM, HEADS, rank=R, lora_scale=5.0)
    for a, b in zip(plain(h, image, prompt, answer), plain(h, *relabelled), strict=True):
        torch.testing.assert_close(a, b)  # the paper's generator sees only the union H_e
    typed = ExpertGenerator(D, DM, HEADS, rank=R, lora_scale=5.0, token_types=True)
    U, V = typed(h, image, prompt, answer)
    kind = image.long() * 0 + prompt.long() * 1 + answer.long() * 2  # (B, T) type index where in H_e
    s = 1.0 / (5.0 * math.sqrt(R))
    mask = image | prompt | answer
    torch.testing.assert_close(U, s * typed.attn_u(typed.phi_u[None], typed.norm_u(h) + typed.types_u[kind], mask))
    torch.testing.assert_close(V, s * typed.attn_v(typed.phi_v[None], typed.norm_v(h) + typed.types_v[kind], mask))
    assert not torch.allclose(U, typed(h, *relabelled)[0])


# ---------------------------------------------------------------- LiveEditNetwork
def test_make_experts_shapes_and_tokens_outside_the_edit_are_ignored():
    net = make_net()
    h, image, prompt, answer = make_batch()
    experts = net.make_experts(h, image, prompt, answer)
    assert len(experts) == 3
    assert experts.psi.shape == experts.phi.shape == (3, K, DM)
    assert experts.U.shape == experts.V.shape == (3, R, D)
    outside = ~(image | prompt | answer)  # BOS and padding
    h_changed = torch.where(outside[..., None], torch.randn_like(h) * 50, h)
    again = net.make_experts(h_changed, image, prompt, answer)
    for name in ("psi", "phi", "U", "V"):
        assert torch.equal(getattr(experts, name), getattr(again, name)), name


def test_answer_tokens_shape_the_expert_but_not_the_keys():
    net = make_net()
    h, image, prompt, answer = make_batch()
    before = net.make_experts(h, image, prompt, answer)
    after = net.make_experts(torch.where(answer[..., None], -h, h), image, prompt, answer)
    assert torch.equal(before.psi, after.psi) and torch.equal(before.phi, after.phi)
    assert not torch.allclose(before.U, after.U) and not torch.allclose(before.V, after.V)


def test_visual_key_is_conditioned_on_the_prompt_and_text_key_ignores_the_image():
    net = make_net()
    h, image, prompt, _ = make_batch()
    keys = net.input_keys(h, image, prompt)
    new_image = net.input_keys(torch.where(image[..., None], torch.randn_like(h), h), image, prompt)
    new_prompt = net.input_keys(torch.where(prompt[..., None], torch.randn_like(h), h), image, prompt)
    assert torch.equal(keys.psi, new_image.psi)  # psi reads the prompt only
    assert not torch.allclose(keys.phi, new_image.phi)  # phi reads the image ...
    assert not torch.allclose(keys.phi, new_prompt.phi)  # ... through slots set by the prompt
    assert torch.equal(keys.sentinel, new_image.sentinel)  # the sentinel reads Theta, not the image
    assert not torch.allclose(keys.sentinel, new_prompt.sentinel)  # but under the input's prompt


def test_without_prompt_guidance_the_visual_keys_ignore_the_prompt():
    """The paper's ablation of prompt-guided visual extraction (``prompt_guided_keys: false``): the same slots read
    every image, on both sides, so the visual and sentinel keys no longer move with the question. Seen failing with
    the flag not passed to the edit-side extractor."""
    net = make_net(prompt_guided_keys=False)
    h, image, prompt, answer = make_batch()
    new_prompt = torch.where(prompt[..., None], torch.randn_like(h), h)
    keys, moved = net.input_keys(h, image, prompt), net.input_keys(new_prompt, image, prompt)
    assert torch.equal(keys.phi, moved.phi) and torch.equal(keys.sentinel, moved.sentinel)
    assert not torch.allclose(keys.psi, moved.psi)  # the textual key still reads the question
    _, phi = net.edit_keys(h, image, prompt)
    assert torch.equal(phi, net.edit_keys(new_prompt, image, prompt)[1])


def test_input_keys_shapes_and_text_only_inputs():
    net = make_net()
    h, image, prompt, _ = make_batch()
    image[1] = False  # a text-only locality question
    keys = net.input_keys(h, image, prompt)
    assert len(keys) == 3
    assert keys.psi.shape == keys.phi.shape == keys.sentinel.shape == (3, K, DM)
    assert keys.has_image.tolist() == [True, False, True]
    assert torch.equal(keys.phi[1], torch.zeros(K, DM))  # nothing to read: an exact zero key
    assert all(torch.isfinite(t).all() for t in (keys.psi, keys.phi, keys.sentinel))


def test_batch_rows_are_independent():
    net = make_net()
    h, image, prompt, answer = make_batch(B=3)
    batched = net.make_experts(h, image, prompt, answer)
    keys = net.input_keys(h, image, prompt)
    for b in range(3):
        one = net.make_experts(h[b : b + 1], image[b : b + 1], prompt[b : b + 1], answer[b : b + 1])
        one_keys = net.input_keys(h[b : b + 1], image[b : b + 1], prompt[b : b + 1])
        for name in ("psi", "phi", "U", "V"):
            torch.testing.assert_close(getattr(batched, name)[b : b + 1], getattr(one, name))
        for name in ("psi", "phi", "sentinel"):
            torch.testing.assert_close(getattr(keys, name)[b : b + 1], getattr(one_keys, name))


def test_fp16_hidden_states_are_accepted_and_apply_keeps_their_dtype():
    net = make_net()
    h, image, prompt, answer = make_batch()
    experts = net.make_experts(h.half(), image, prompt, answer)
    assert experts.U.dtype == torch.float32
    out = net.apply_experts(h.half(), experts.U, experts.V, torch.ones(3, 3))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_gradients_reach_every_trainable_parameter():
    """One meta-training step in miniature: edit stand-in loss + soft and hard routing losses."""
    net = make_net()
    h, image, prompt, answer = make_batch(B=3, seed=1)
    h_out, image_o, prompt_o, _ = make_batch(B=3, seed=2)  # out-of-scope inputs
    experts = net.make_experts(h, image, prompt, answer)
    keys = net.input_keys(h, image, prompt)
    out_keys = net.input_keys(h_out, image_o, prompt_o)
    # edit loss stand-in: each input uses its own expert plus expert 0 (ground-truth hard routing)
    gt = torch.eye(3, dtype=torch.bool)
    gt[:, 0] = True
    weights = soft_weights(similarity(keys.psi, experts.psi), gt)
    edited = net.apply_experts(h, experts.U, experts.V, weights)
    terms = {
        "rel": (edited - h).square().mean(),
        "soft_route/relative": soft_routing_relative_loss(keys.psi, experts.psi),
        "soft_route/absolute": soft_routing_absolute_loss(keys.psi, experts.psi),
        "hard_route/in_scope": hard_routing_in_scope_loss(keys.phi, experts.phi, keys.sentinel),
        "hard_route/out_scope": hard_routing_out_scope_loss(out_keys.phi, experts.phi, out_keys.sentinel),
    }
    total, _ = liveedit_loss(terms)
    total.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"cross_attn_dim": 9}, "cross_attn_dim"),
        ({"lora_scale": 0.0}, "lora_scale"),
        ({"rank": 0}, "rank"),
        ({"soft_weights": "mean"}, "'soft_weights' is 'mean'; expected one of learned, average"),
        ({"soft_route_terms": "none"}, "'soft_route_terms' is 'none'; expected one of both, relative, absolute"),
    ],
)
def test_constructor_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_net(**overrides)


def test_masks_must_be_boolean_and_match_h():
    net = make_net()
    h, image, prompt, _ = make_batch()
    with pytest.raises(ValueError, match="bool masks"):
        net.input_keys(h, image.float(), prompt)
    with pytest.raises(ValueError, match="bool masks"):
        net.input_keys(h, image[:, :-1], prompt)
