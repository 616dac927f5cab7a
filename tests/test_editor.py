"""LiveEdit around EasyEdit's Blip2OPT (the small toy world): edits, routing, generation, invariants."""

import pytest
import torch
from helpers import small_liveedit_hparams

from easyedit_liveedit import LiveEdit
from easyedit_liveedit.liveedit.layer import Route


@pytest.fixture
def setup(small_world):
    model = small_world.load_model()
    hparams = small_liveedit_hparams(small_world)
    return model, small_world.tokenizer(), LiveEdit(model, hparams), (hparams, small_world.config.image_size)


@pytest.fixture
def every_expert_fires(monkeypatch):
    """Routing seam for mechanics tests: the hard filter keeps every expert for inputs with an image.

    An untrained network routes at random; these tests check what happens once experts are chosen.
    """
    import easyedit_liveedit.liveedit.library as library

    def keep_all(visual_sim, sentinel_sim, has_image=None):
        keep = torch.ones_like(visual_sim, dtype=torch.bool)
        return keep if has_image is None else keep & has_image[:, None]

    monkeypatch.setattr(library, "hard_filter", keep_all)


def _add_strong_experts(editor, samples) -> list[int]:
    """Store experts with the edit's real keys but random factors, so their residual is surely non-zero.

    An untrained generator can produce factors whose ReLU bottleneck is closed on every token; the
    mechanics tests need experts that visibly act.
    """
    from easyedit_liveedit.liveedit.networks import Experts

    made = editor.make_experts(samples)
    g = torch.Generator().manual_seed(7)
    U = torch.randn(made.U.shape, generator=g)
    V = torch.randn(made.V.shape, generator=g)
    return editor.library.add(Experts(psi=made.psi, phi=made.phi, U=U, V=V))


def _samples(tok, context, n, seed=0):
    """``n`` edit-style samples (prompt + target, random images) as EasyEdit's metric code builds them."""
    from easyeditor.evaluate import prepare_multimodal_edit

    hparams, image_size = context
    prompts = [f"what digit is shown {'here ' * (i % 3)}?" for i in range(n)]
    targets = (["seven", "two", "odd", "nine"] * n)[:n]
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, image_size, image_size, generator=g)
    return prepare_multimodal_edit(hparams, tok, targets, prompts, image)


def test_base_weights_never_change_bit_for_bit(setup):
    model, tok, editor, size = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(100):
        editor.add_edits(_samples(tok, size, 1, seed=i))
    assert len(editor.library) == 100
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_backbone_called_directly_stays_unedited_and_reset_restores(setup):
    model, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    plain = model(samples).logits
    editor.add_edits(samples)
    assert torch.equal(model(samples).logits, plain)  # the hook is inert outside LiveEdit's calls
    editor.reset()
    assert torch.equal(editor(samples).logits, plain)


def test_an_expert_that_fires_changes_the_answer_logits(setup, every_expert_fires):
    model, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    plain = model(samples).logits
    ids = _add_strong_experts(editor, samples)
    report = editor.routing_report(samples)
    fired = {expert for row in report for expert, _ in row}
    assert fired <= set(ids)
    edited = editor(samples).logits
    assert [len(row) for row in report] == [2, 2]
    for row in report:  # w = sigmoid(a) * softmax(a): positive, and a row sums to less than 1
        assert all(w > 0 for _, w in row) and sum(w for _, w in row) < 1
    assert (edited - plain).abs().amax() > 1e-3


def test_remove_one_expert(setup):
    _, tok, editor, size = setup
    ids = editor.add_edits(_samples(tok, size, 3))
    editor.remove(ids[1])
    assert editor.library.ids() == [ids[0], ids[2]]
    with pytest.raises(KeyError):
        editor.remove(ids[1])


def test_batched_inference_routes_each_sample_like_alone(setup, every_expert_fires):
    _, tok, editor, size = setup
    _add_strong_experts(editor, _samples(tok, size, 4, seed=1))
    batch = _samples(tok, size, 3, seed=2)
    together = editor(batch)
    report = editor.routing_report(batch)
    for b in range(3):
        alone_samples = {k: (v[b : b + 1] if k == "image" else v[b : b + 1]) for k, v in batch.items()}
        alone = editor(alone_samples)
        real = together.attention_mask[b].bool()
        assert torch.allclose(together.logits[b][real], alone.logits[0][alone.attention_mask[0].bool()], atol=1e-5)
        (alone_report,) = editor.routing_report(alone_samples)
        assert [i for i, _ in alone_report] == [i for i, _ in report[b]]
        assert [w for _, w in alone_report] == pytest.approx([w for _, w in report[b]], abs=1e-6)


def _greedy_without_cache(editor, tok, image, prompt, steps):
    """Reference decoder: the whole sequence through the routed language model for every new token (no KV cache).

    Works on token ids (prompt embeddings + embeddings of the tokens generated so far): decoding to text and
    re-tokenising is lossy for byte-level tokens, so a text-based reference could disagree for that reason alone.
    """
    samples = {
        "image": image,
        "text_input": [prompt],
        "prompts_len": editor.adapter.prompts_len(editor.model, [prompt]),
    }
    language_model = editor.adapter.language_model(editor.model)
    prompt_embeds, mask = editor.adapter.prompt_embeddings(editor.model, samples)
    stop = {tok("\n", add_special_tokens=False).input_ids[-1], tok.eos_token_id}
    new_ids: list[int] = []
    for _ in range(steps):
        generated = language_model.get_input_embeddings()(torch.tensor([new_ids], dtype=torch.long))
        embeds = torch.cat([prompt_embeds, generated], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(1, len(new_ids))], dim=1)
        with editor.edit_layer.run(samples, Route(editor.library)):  # routing computed afresh on every full pass
            logits = language_model(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False).logits
        next_id = int(logits[0, -1].argmax())
        if next_id in stop:
            break
        new_ids.append(next_id)
    return tok.decode(new_ids, skip_special_tokens=True).strip()


def test_generation_with_kv_cache_matches_full_recomputation_with_experts(setup, every_expert_fires):
    model, tok, editor, context = setup
    edits = _samples(tok, context, 2, seed=3)
    _add_strong_experts(editor, edits)
    prompts = ["what digit is shown ?", "what digit is shown here here ?"]
    assert all(editor.routing_report(_samples(tok, context, 2, seed=3)))
    answers = editor.generate({"image": edits["image"], "text_input": prompts}, max_new_tokens=4)
    for b, prompt in enumerate(prompts):
        assert answers[b] == _greedy_without_cache(editor, tok, edits["image"][b : b + 1], prompt, steps=4)


def test_generation_counts_prompts_like_easyedit(setup):
    from easyeditor.evaluate import prepare_multimodal_edit

    _, tok, editor, (hparams, _) = setup
    prompts = ["what digit is shown ?", "what digit is shown here here ?"]
    expected = prepare_multimodal_edit(hparams, tok, ["seven", "two"], prompts, None)["prompts_len"]
    assert editor.adapter.prompts_len(editor.model, prompts) == expected


def test_edit_contract_and_checkpoint_holds_only_the_networks(setup):
    model, tok, editor, size = setup
    edited, info = editor.edit(_samples(tok, size, 2))
    assert edited is editor and info == {"edit/experts": 2.0}
    state = editor.state_dict()
    assert state.keys() == editor.net.state_dict().keys()
    assert not any(k.startswith("model.") for k in state)
    assert {id(p) for p in editor.outer_parameters()} == {id(p) for p in editor.net.parameters()}


def test_train_mode_keeps_the_backbone_in_eval(setup):
    model, _, editor, _ = setup
    editor.train()
    assert editor.net.training and not model.training


def test_edit_layer_out_of_range_names_the_key(small_world):
    model = small_world.load_model()
    with pytest.raises(ValueError, match="edit_layer"):
        LiveEdit(model, small_liveedit_hparams(small_world, edit_layer=99))


# ----------------------------------------------------------------------------------- the edit layer
def test_a_pass_does_not_nest_and_the_layer_works_again_after_an_error(setup):
    """Guards: a second pass inside a running one is refused with a clear error, not silently mixed."""
    from easyedit_liveedit.liveedit.layer import Capture

    model, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    with pytest.raises(RuntimeError, match="Capture pass is already running"):
        with editor.edit_layer.run(samples, Capture()):
            editor(samples)
    torch.testing.assert_close(editor(samples).logits, model(samples).logits)  # the pass was cleared


def test_an_edit_runs_no_layer_above_the_edit_layer(setup):
    """Guards: the capture pass cuts the decoder after l_e (an edit is one partial forward) and puts it back."""
    model, tok, editor, size = setup
    layers = editor.adapter.decoder_layers(model)
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        editor.add_edits(_samples(tok, size, 2))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == list(range(editor.config.edit_layer + 1))
    assert editor.adapter.decoder_layers(model) is layers and len(layers) == 4


def test_a_whole_decoder_checkpointed_reentrantly_is_refused_in_training(setup):
    """Guards: EasyEdit's OPT copy checkpoints all its layers at once (reentrant), running layer l_e without grad in
    a training pass; training would then reach no LiveEdit parameter, so the pass refuses it by name."""
    model, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    decoder = model.opt_model.model.decoder
    editor.train()
    decoder.gradient_checkpointing = True
    decoder.train()
    try:
        experts = editor.make_experts(samples)
        with pytest.raises(RuntimeError, match="checkpoints all its layers at once"):
            editor.forward_with_experts(samples, experts, torch.ones(2, 2, dtype=torch.bool))
    finally:
        decoder.gradient_checkpointing = False
        model.eval()


def test_routing_keys_are_fp32_under_bf16_autocast(setup):
    """Guards: keys and similarities are computed in fp32 on both sides, whatever autocast is active."""
    _, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    h, layout = editor.hidden_states(samples)
    plain_keys = editor.net.input_keys(h, layout.image, layout.prompt)
    plain_experts = editor.net.make_experts(h, layout.image, layout.prompt, layout.answer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys = editor.net.input_keys(h, layout.image, layout.prompt)
        experts = editor.net.make_experts(h, layout.image, layout.prompt, layout.answer)
    for name in ("psi", "phi", "sentinel"):
        assert getattr(keys, name).dtype == torch.float32
        torch.testing.assert_close(getattr(keys, name), getattr(plain_keys, name), rtol=0, atol=0)
    for name in ("psi", "phi"):
        assert getattr(experts, name).dtype == torch.float32
        torch.testing.assert_close(getattr(experts, name), getattr(plain_experts, name), rtol=0, atol=0)


def test_an_edit_without_an_image_is_refused_and_stores_nothing(setup):
    """Guards: an edit without image tokens would get a zero visual key, which clears the hard filter of every input
    whose sentinel similarity is negative; it is refused, naming the sample, and the library is untouched."""
    _, tok, editor, size = setup
    editor.add_edits(_samples(tok, size, 1))
    samples = _samples(tok, size, 2)
    samples["image"] = None
    with pytest.raises(ValueError, match=r"sample\(s\) \[0, 1\]"):
        editor.add_edits(samples)
    assert len(editor.library) == 1


def test_generate_zero_new_tokens_answers_empty_strings(setup):
    _, tok, editor, size = setup
    samples = _samples(tok, size, 2)
    assert editor.generate({"image": samples["image"], "text_input": ["a ?", "b ?"]}, max_new_tokens=0) == ["", ""]
    with pytest.raises(ValueError, match="max_new_tokens"):
        editor.generate({"image": samples["image"], "text_input": ["a ?", "b ?"]}, max_new_tokens=-1)


# ----------------------------------------------------------------------------------- identity
def test_a_saved_library_refuses_an_editor_of_another_identity(setup, small_world, tmp_path):
    """Guards: a library records the identity of the editor that made it and loads only into the same one, naming
    the first field that differs; the library being loaded into is left as it was."""
    model, tok, editor, size = setup
    editor.add_edits(_samples(tok, size, 3))
    path = tmp_path / "library.pt"
    editor.save_library(path)
    same = LiveEdit(model, small_liveedit_hparams(small_world))
    same.load_state_dict(editor.state_dict())
    same.load_library(path)
    assert same.library.ids() == editor.library.ids()
    retrained = LiveEdit(model, small_liveedit_hparams(small_world))  # other network weights (another seed)
    retrained.add_edits(_samples(tok, size, 1))
    with pytest.raises(ValueError, match="networks="):
        retrained.load_library(path)
    assert len(retrained.library) == 1
    wider = LiveEdit(model, small_liveedit_hparams(small_world, rank=8))
    with pytest.raises(ValueError, match="rank=4"):
        wider.load_library(path)
    other_layer = LiveEdit(model, small_liveedit_hparams(small_world, edit_layer=2))
    with pytest.raises(ValueError, match="edit_layer=1"):
        other_layer.load_library(path)


def test_a_backbone_carries_one_editor_and_its_hooks_only(small_world, tmp_path):
    """Guards one editor per backbone: the entry's editor is reused while the hparams define it (also when the archive
    file is touched), and hparams with another archive path or config replace it, removing its hooks: the backbone
    never carries more than one editor's two hooks (on the language model and on layer ``l_e``).

    Seen failing on the code before it, where editors were cached on the backbone by the archive's modification time:
    touching the archive attached a second editor with two more hooks; and with the old editor left on when another
    replaced it (``release_editor`` skipped: four hooks).
    """
    import os
    import shutil

    from easyedit_liveedit.easyedit.entry import editor_for

    def hooks(model) -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    maker = LiveEdit(small_world.load_model(), small_liveedit_hparams(small_world))
    archive = tmp_path / "liveedit.pt"
    torch.save({"model": maker.state_dict()}, archive)
    model = small_world.load_model()
    unedited = hooks(model)
    first = editor_for(model, small_liveedit_hparams(small_world, archive=str(archive)))
    assert editor_for(model, small_liveedit_hparams(small_world, archive=str(archive))) is first
    assert hooks(model) == unedited + 2
    os.utime(archive, ns=(0, 0))  # the same archive, touched
    assert editor_for(model, small_liveedit_hparams(small_world, archive=str(archive))) is first
    assert hooks(model) == unedited + 2
    replaced = tmp_path / "retrained.pt"
    shutil.copy(archive, replaced)
    second = editor_for(model, small_liveedit_hparams(small_world, archive=str(replaced)))
    assert second is not first and hooks(model) == unedited + 2
    other = editor_for(model, small_liveedit_hparams(small_world, archive=str(replaced), edit_layer=2))
    assert other is not second and other.config.edit_layer == 2 and hooks(model) == unedited + 2


def test_averaged_experts_share_each_input_equally_when_editing_and_training(small_world, monkeypatch):
    """Guards the paper's ablation "experts averaged" (``soft_weights: average``) on the real paths: the routed
    answer (``Route``: ``routing_report`` and the forward, which the training step's ``routed_accuracies`` also
    runs) and the training mix (``Mix``) give each expert an input kept ``1 / |kept|``. Seen failing with ``Route``
    calling ``library.route`` without the config's choice (weights sigmoid(a) * softmax(a), rows summing below 1),
    and with ``Mix`` calling ``soft_weights`` without it."""
    import easyedit_liveedit.liveedit.library as library

    def alternate(visual_sim, sentinel_sim, has_image=None):  # input b keeps expert j when b + j is even
        B, N = visual_sim.shape
        keep = (torch.arange(B)[:, None] + torch.arange(N)[None]) % 2 == 0
        return keep if has_image is None else keep & has_image[:, None]

    monkeypatch.setattr(library, "hard_filter", alternate)
    hparams = small_liveedit_hparams(small_world, soft_weights="average")
    editor, tok = LiveEdit(small_world.load_model(), hparams), small_world.tokenizer()
    context = (hparams, small_world.config.image_size)
    edits, inputs = _samples(tok, context, 3, seed=1), _samples(tok, context, 2, seed=2)
    ids = _add_strong_experts(editor, edits)
    report = editor.routing_report(inputs)
    assert [dict(row) for row in report] == [{ids[0]: 0.5, ids[2]: 0.5}, {ids[1]: 1.0}]
    applied, plain_apply = [], editor.library.apply
    monkeypatch.setattr(
        editor.library, "apply", lambda h, r, norm: applied.append(r.weights) or plain_apply(h, r, norm)
    )
    editor(inputs)
    torch.testing.assert_close(applied, [torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])])
    mixed, plain_mix = [], editor.net.apply_experts
    monkeypatch.setattr(editor.net, "apply_experts", lambda h, U, V, w: mixed.append(w) or plain_mix(h, U, V, w))
    switch = torch.tensor([[True, True, False], [True, True, True]])
    editor.forward_with_experts(inputs, editor.make_experts(edits), switch)
    torch.testing.assert_close(mixed, [torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])])
