"""EasyEdit's own MEND driven edit after edit by the NaN guard, on a tiny seeded OPT (no toy world needed)."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from torch import nn

import easyedit_liveedit  # noqa: F401  (EasyEdit shims)
from easyedit_liveedit.diagnostics.mend_run import normaliser_problems, run_mend
from easyedit_liveedit.diagnostics.report import format_table, plot_norm_history, write_json

INNER = ["opt_model.model.decoder.layers.1.fc1.weight", "opt_model.model.decoder.layers.1.fc2.weight"]


class TinyBlipLike(nn.Module):
    """An OPT called the way MEND calls EasyEdit's BLIP-2 (``model(batch)``, ``.logits``, shifted labels)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import OPTConfig, OPTForCausalLM

        torch.manual_seed(0)
        config = OPTConfig(
            vocab_size=50,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            word_embed_proj_dim=16,
            dropout=0.0,
        )
        self.opt_model = OPTForCausalLM(config)

    def forward(self, batch: dict) -> object:
        return self.opt_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def mend_hparams() -> types.SimpleNamespace:
    """The MEND keys EasyEdit's ``MEND`` reads, with the shipped BLIP-2 YAML's architecture choices."""
    return types.SimpleNamespace(
        device=0,
        edit_lr=1e-2,
        inner_params=list(INNER),
        shared=True,
        mlp_class="IDMLP",
        n_hidden=1,
        init="id",
        act="relu",
        rank=8,
        combine=True,
        one_sided=False,
        x_only=False,
        delta_only=False,
        norm=True,
        model_name="blip2",
        model_class="Blip2OPT",
    )


def batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (1, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, -2:]}


def test_untrained_mend_in_eval_mode_is_named_as_nan_statistics_at_the_first_edit():
    model = TinyBlipLike()
    run = run_mend(model, mend_hparams(), None, [batch(i) for i in range(3)], batch(99), mode="eval", precision="fp32")
    assert run.failure is not None and run.failure.edit == 0
    assert run.failure.kind == "nan_normaliser_statistics"
    assert run.failure.tensor.startswith("weight opt_model.model.decoder.layers.1.fc1.weight")
    assert len(run.edits) == 1 and not run.edits[0].finite
    assert run.settings["normaliser_nonfinite_at_start"] > 0


def test_mend_in_train_mode_commits_edits_in_place_and_reports_each():
    model = TinyBlipLike()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    run = run_mend(
        model, mend_hparams(), None, [batch(i) for i in range(4)], batch(99), mode="train", precision="fp32"
    )
    assert run.failure is None and len(run.edits) == 4
    # EasyEdit's MEND wrote into the inner params only, and each edit started from the previous one's weights
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert sorted(changed) == sorted(INNER)
    norms = [r.weights[0].norm for r in run.edits]
    assert len(set(norms)) == 4 and all(r.weights[0].update_norm > 0 for r in run.edits)
    assert all(math.isfinite(r.edit_loss) for r in run.edits)
    assert not hasattr(model, "handles")  # MEND's hooks are removed after the run


def test_report_renders_table_json_and_plot(tmp_path):
    failed = run_mend(TinyBlipLike(), mend_hparams(), None, [batch(0)], batch(99), mode="eval", precision="fp32")
    fine = run_mend(TinyBlipLike(), mend_hparams(), None, [batch(0), batch(1)], batch(99), precision="fp32")
    table = format_table(failed)
    assert "NON-FINITE" in table and "nan_normaliser_statistics" in table
    assert "stayed finite for all 2 edits" in format_table(fine)
    write_json([failed, fine], tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["runs"][0]["failure"]["kind"] == "nan_normaliser_statistics"
    assert data["runs"][0]["edits"][0]["weights"][0]["norm"] == "nan" and data["runs"][1]["stayed_finite"]
    plot_norm_history([failed, fine], tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_normaliser_problems_lists_nan_buffers():
    from easyedit_liveedit.diagnostics.mend_run import load_mend

    mend = load_mend(TinyBlipLike(), mend_hparams(), None)
    assert any(p.endswith("u_std") for p in normaliser_problems(mend))
    for transform in mend.mend.values():
        for name in ("u_mean", "v_mean", "u_std", "v_std"):
            getattr(transform, name).fill_(1.0)
    assert normaliser_problems(mend) == []


def test_run_mend_rejects_unknown_settings():
    with pytest.raises(ValueError, match="mode"):
        run_mend(TinyBlipLike(), mend_hparams(), None, [], batch(0), mode="frozen")


def test_guard_rolls_back_a_mend_edit_that_overflows_fp16_and_keeps_the_rest():
    """fp16 tiny OPT, MEND in train mode (EasyEdit's executor), edit lr x1000: edit 10 writes an inf into fc1."""
    from easyedit_liveedit.diagnostics.guard import run_guarded
    from easyedit_liveedit.diagnostics.mend_run import MendInPlace, MendRollback

    def guarded_run(sequence):
        model = TinyBlipLike().half()
        stepper = MendInPlace(model, mend_hparams(), None, mode="train", edit_lr_scale=1e3, precision="fp16")
        probe = batch(99)
        report = run_guarded(sequence, stepper.edit, lambda: stepper.forward(probe), MendRollback(stepper), model)
        stepper.close()
        return report, model

    edits = [batch(i) for i in range(12)]
    report, model = guarded_run(edits)
    assert report.rolled_back == [9] and report.committed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    failed = report.edits[9]
    assert failed.reason.startswith("non-finite weight opt_model.model.decoder.layers.1.fc")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # replaying only the committed edits, unguarded, gives the same weights bit for bit: the rollback undid the
    # failing edit's weights and its update of MEND's normaliser statistics, and nothing committed was lost
    replay, replayed = guarded_run([edits[i] for i in report.committed])
    assert replay.rolled_back == []
    for (name, got), (_, want) in zip(model.state_dict().items(), replayed.state_dict().items(), strict=True):
        assert torch.equal(got, want), name
