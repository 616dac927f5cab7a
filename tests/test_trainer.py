"""Helpers of the LiveEdit trainer that decide which (input, edit) pairs the routing losses treat as in scope."""

from pathlib import Path

import pytest
import torch

from easyedit_liveedit.liveedit.train_step import (
    IGNORE_INDEX,
    answer_accuracy,
    random_prefix,
    same_image,
    scored_positions,
)


def test_same_image_matches_pixel_identical_images_only():
    a, b = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    nearly_a = a.clone()
    nearly_a[0, 0, 0] += 1e-6
    images = torch.stack([a, b, a, nearly_a])
    expected = torch.tensor(
        [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(same_image(images), expected)


def test_random_prefix_switches_on_a_prefix_per_input():
    torch.manual_seed(0)
    switch = random_prefix(64, 5, torch.device("cpu"))
    lengths = switch.sum(dim=1)
    assert torch.equal(switch, torch.arange(5)[None] < lengths[:, None])  # always a prefix
    assert set(lengths.tolist()) == set(range(6))  # every length 0..M occurs in 64 draws


def test_scored_positions_keep_the_last_answer_tokens_of_each_row():
    X = IGNORE_INDEX
    # row 0: prompt, space, two answer tokens, padding; row 1: prompt, space, one answer token
    labels = torch.tensor([[X, X, 5, 7, 8, X], [X, X, X, 5, 9, X]])
    supervised = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)  # predict labels[t + 1]
    assert torch.equal(scored_positions(labels), supervised)
    expected = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(scored_positions(labels, [2, 1]), expected)
    logits = torch.zeros(2, 6, 10)
    logits[0, 1, 5] = logits[0, 2, 7] = logits[1, 2, 5] = 1.0  # spaces right, row 0's answer half right
    assert answer_accuracy(logits, labels) == pytest.approx(3 / 5)  # 3 of the 5 supervised positions
    assert answer_accuracy(logits, labels, [2, 1]) == pytest.approx(1 / 3)  # 1 of the 3 answer tokens


def _fake_pass(scope: int, B: int = 6, k: int = 2, dm: int = 4):
    """A stand-in ``Mix`` whose keys encode (scope, record): input side positive, edit side negative."""
    from types import SimpleNamespace

    from easyedit_liveedit.liveedit.networks import InputKeys

    value = (scope + 1) * 100 + torch.arange(B, dtype=torch.float)[:, None, None].expand(B, k, dm)
    keys = InputKeys(psi=value.clone(), phi=value.clone(), sentinel=value + 0.5, has_image=torch.ones(B, dtype=bool))
    return SimpleNamespace(keys=keys, edit_keys=(-value, -value))


def test_authors_routing_pairs_pair_within_a_scope_and_across_scopes(monkeypatch):
    """Guards the authors' pairing: a neighbour pair is the input-side key of one sample and the edit-side key of a
    sample of the same scope and record (in-scope with in-scope, locality with locality); a prototype pair joins one
    in-scope sample and the locality sample of a record, either way round."""
    from easyedit_liveedit.liveedit import train_step

    seen = {}

    def record(name):
        def loss(*tensors):
            seen[name] = tensors
            return torch.zeros(())

        return loss

    for name in ("soft_routing_relative_loss", "soft_routing_absolute_loss", "hard_routing_in_scope_loss",
                 "hard_routing_out_scope_loss"):  # fmt: skip
        monkeypatch.setattr(train_step, name, record(name))
    torch.manual_seed(0)
    passes = [_fake_pass(scope) for scope in range(4)]  # reliability, text gen, image gen, locality
    terms = train_step._authors_routing_terms(passes[:3], passes[3])
    assert set(terms) == {"soft_route/relative", "soft_route/absolute", "hard_route/in_scope", "hard_route/out_scope"}

    def decode(tensor, side):  # -> (scope, record) per row
        value = tensor[:, 0, 0] * side
        return (value // 100 - 1).long().tolist(), (value % 100).long().tolist()

    input_phi, edit_phi, sentinel = seen["hard_routing_in_scope_loss"]
    (first, rows1), (second, rows2) = decode(input_phi, 1), decode(edit_phi, -1)
    assert rows1 == rows2 == list(range(6))  # the same record on both sides
    assert all((a == 3) == (b == 3) for a, b in zip(first, second, strict=True))  # within one scope
    assert torch.equal(sentinel, input_phi + 0.5)  # the input's own sentinel
    assert torch.equal(seen["soft_routing_relative_loss"][0], input_phi)  # psi encodes like phi here
    input_phi, edit_phi, _ = seen["hard_routing_out_scope_loss"]
    (first, rows1), (second, rows2) = decode(input_phi, 1), decode(edit_phi, -1)
    assert rows1 == rows2 == list(range(6))
    assert all((a == 3) != (b == 3) for a, b in zip(first, second, strict=True))  # across scopes
    assert {a == 3 for a in first} == {True, False}  # both directions occur


def test_edit_losses_train_only_the_answers_own_tokens(small_world, monkeypatch):
    """Guards that reliability and generality train what EasyEdit's metric scores: the answer's own tokens. The
    toy tokenizer keeps the joining space before the answer as its own supervised token; changing the logits that
    predict it must not move those losses. Seen failing with the loss over the whole supervised span (space
    included): every term moved. EasyEdit main's ``prepare_multimodal_edit`` counts that space among the answer's
    tokens, so its metric scores it and the loss trains it there: on main the test checks that nothing is left out."""
    from easyeditor import VQADataset
    from helpers import TARGET, small_liveedit_hparams

    from easyedit_liveedit import LiveEdit
    from easyedit_liveedit.easyedit.questions import EditorQuestions
    from easyedit_liveedit.liveedit.train_step import meta_losses, predicts_answer

    hparams = small_liveedit_hparams(small_world, training=True)
    with small_world.easyedit_patches():
        data = EditorQuestions(VQADataset(str(small_world.split("vqa_train")), size=4, config=hparams))
    batch = data.collate_fn([data[i] for i in range(4)])
    editor = LiveEdit(small_world.load_model(), hparams)
    plain = editor.forward_with_experts

    def unscored_positions_perturbed(samples, experts, switch):
        out, mix = plain(samples, experts, switch)
        unscored = predicts_answer(out.labels) & ~scored_positions(out.labels, samples["answer_tokens"])
        assert unscored.any() == (TARGET == "wheel")  # the wheel's metric leaves the supervised space unscored
        out.logits = out.logits + 30.0 * unscored[..., None] * torch.linspace(-1, 1, out.logits.shape[-1])
        return out, mix

    torch.manual_seed(1)
    before, _ = meta_losses(editor, batch)
    monkeypatch.setattr(editor, "forward_with_experts", unscored_positions_perturbed)
    torch.manual_seed(1)
    after, _ = meta_losses(editor, batch)
    for term in ("rel", "gen/text", "gen/image"):
        assert after[term].item() == pytest.approx(before[term].item(), rel=1e-6), term


def _small_trainer(world, tmp_path, **overrides):
    from easyeditor import VQADataset
    from helpers import small_liveedit_hparams

    from easyedit_liveedit import LiveEditMultimodalTrainer

    values = dict(batch_size=2, val_batch_size=2, max_iters=9, val_interval=100, val_steps=2, model_save_pt=3,
                  results_dir=str(tmp_path), final_eval=False)  # fmt: skip
    hparams = small_liveedit_hparams(world, training=True, **{**values, **overrides})
    with world.easyedit_patches():
        data = VQADataset(str(world.split("vqa_train")), size=20, config=hparams)
        return LiveEditMultimodalTrainer(hparams, data, data)


def test_a_cut_run_resumes_from_its_last_resume_point(small_world, tmp_path):
    """Guards resuming: a run cut after step 4 restarts from the resume point of step 3 with the networks, optimiser
    and schedule saved there, and takes only the steps left, counting the seconds the cut run trained; a finished run
    leaves no resume point, and one written with other hparams is ignored. Seen failing with the resume point not
    loaded (the second run took every step) and with the seconds not carried."""
    first = _small_trainer(small_world, tmp_path)
    step = first.train_step

    def cut_after_four(batch):
        if first.steps_done == 4:
            raise KeyboardInterrupt  # the session ends
        return step(batch)

    first.train_step = cut_after_four
    with small_world.easyedit_patches(), pytest.raises(KeyboardInterrupt):
        first.run()
    saved = torch.load(first.resume_path, weights_only=False)
    assert saved["steps_done"] == 3

    again = _small_trainer(small_world, tmp_path)
    assert again.steps_done == 3
    assert again.seconds_before == saved["seconds"] > 0
    for name, tensor in saved["model"].items():
        assert torch.equal(again.model.state_dict()[name], tensor), name
    assert again.lr_schedule.state_dict() == saved["lr_schedule"]
    with small_world.easyedit_patches():
        again.run()
    assert again.steps_done == 8  # EasyEdit's loop takes max_iters - 1 steps in all: 3 before the cut, 5 after
    assert not Path(again.resume_path).exists()

    torch.save({**saved, "hparams": {**saved["hparams"], "lr": "0.5"}}, again.resume_path)
    assert _small_trainer(small_world, tmp_path).steps_done == 0  # another run's resume point: not used
