"""NaN-guard building blocks on tiny seeded models: the activation watch, weight tracking and the guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from easyedit_liveedit.diagnostics.guard import ExpertRollback, WeightRollback, rollback_for, run_guarded
from easyedit_liveedit.diagnostics.watch import ActivationWatch, headroom
from easyedit_liveedit.diagnostics.weights import WeightTracker, first_nonfinite_index, weight_stat
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, InputKeys

FP16_MAX = 65504.0


def fp16_mlp() -> nn.Sequential:
    """Linear(8,8) -> ReLU -> Linear(8,8) -> ReLU -> Linear(8,4) in fp16, positive weights (no cancellation).

    The last Linear shrinks its input (weights ~0.002), so the middle one is the first to reach fp16's limit.
    """
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in mlp.parameters():
            p.uniform_(0.1, 0.2)
        mlp[4].weight.uniform_(0.001, 0.002)
    return mlp.half()


def probe_input() -> torch.Tensor:
    return torch.ones(3, 8, dtype=torch.float16)


# ------------------------------------------------------------------------------------------------ watch
def test_watch_names_the_first_module_whose_output_overflows_fp16():
    mlp = fp16_mlp()
    x = probe_input()
    # scale the middle Linear's weights until its output passes fp16's limit; record each step's headroom
    seen = []
    scale = 1.0
    while True:
        with torch.no_grad():
            mlp[2].weight.mul_(8)
        scale *= 8
        with ActivationWatch(mlp) as watch:
            mlp(x)
        if watch.result.first_nonfinite is not None:
            break
        seen.append(watch.result.record("2").headroom)
    first = watch.result.first_nonfinite
    assert first.name == "2" and first.kind == "Linear"
    assert first.inputs_finite is True  # the Linear itself produced the inf
    assert math.isinf(first.max_abs) and first.headroom == 0.0
    # modules before it stayed finite, those after it and the root saw the inf
    assert watch.result.record("0").finite and watch.result.record("1").finite
    assert not watch.result.record("4").finite and watch.result.record("4").inputs_finite is False
    assert not watch.result.record("").finite
    # the headroom shrank by the scale factor at every step before the overflow
    assert len(seen) >= 2 and all(b < a for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1] < 8  # one more x8 step had to overflow
    # execution order: children complete before the root
    assert [r.name for r in watch.result.records] == ["0", "1", "2", "3", "4", ""]


def test_watch_reports_a_nan_produced_between_modules_as_not_originating_in_the_module():
    class Inline(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) * torch.tensor(float("nan")))  # the NaN appears in un-hooked code

    model = Inline()
    with ActivationWatch(model) as watch:
        model(torch.ones(1, 2))
    first = watch.result.first_nonfinite
    assert first.name == "b" and first.inputs_finite is False
    assert watch.result.record("a").finite


def test_watch_is_inert_and_removes_its_hooks():
    mlp = fp16_mlp()
    x = probe_input()
    expected = mlp(x)
    with ActivationWatch(mlp) as watch:
        out = mlp(x)
    assert torch.equal(out, expected)
    assert watch.result.first_nonfinite is None
    assert all(not m._forward_hooks for m in mlp.modules())
    tight = watch.result.tightest(2)
    assert len(tight) == 2 and tight[0].headroom <= tight[1].headroom
    assert tight[0].headroom == pytest.approx(FP16_MAX / tight[0].max_abs)


def test_headroom_values():
    assert headroom(65504.0 / 4, torch.float16) == pytest.approx(4.0)
    assert headroom(0.0, torch.float16) == math.inf
    assert headroom(math.inf, torch.float32) == 0.0 and headroom(math.nan, torch.float32) == 0.0


# ------------------------------------------------------------------------------------------------ weights
def test_weight_stat_finds_first_nonfinite_element_and_relative_update():
    before = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    after = before.clone()
    after[1, 0] = 3.0  # update norm 3
    stat = weight_stat("w", after, before)
    assert stat.norm == pytest.approx(math.sqrt(34)) and stat.update_norm == pytest.approx(3.0)
    assert stat.relative_update == pytest.approx(0.6) and stat.finite and stat.first_nonfinite is None
    after[0, 1] = float("inf")
    after[1, 1] = float("nan")
    assert first_nonfinite_index(after) == [0, 1]
    assert not weight_stat("w", after, before).finite


def test_weight_norm_of_large_fp16_weight_does_not_overflow():
    w = torch.full((4, 4), 60000.0, dtype=torch.float16)  # each element finite; the norm 240000 is not fp16
    stat = weight_stat("w", w)
    assert stat.finite and stat.norm == pytest.approx(240000.0, rel=1e-3)


def test_weight_tracker_changed_and_bit_exact_restore():
    mlp = fp16_mlp()
    tracker = WeightTracker(mlp)
    before = tracker.snapshot()
    with torch.no_grad():
        mlp[2].weight[0, 0] = float("nan")
        mlp[4].bias.add_(1)
    assert tracker.changed(before) == ["2.weight", "4.bias"]
    tracker.restore(before, ["2.weight"])
    assert torch.equal(mlp[2].weight, before["2.weight"]) and tracker.changed(before) == ["4.bias"]
    with pytest.raises(KeyError, match="nope"):
        WeightTracker(mlp, ["nope"])


# ------------------------------------------------------------------------------------------------ guard
def scale_edit(layer: int, factor: float, row: int):
    """An 'edit' that multiplies one row of one Linear's weight (a stand-in for a weight editor's update)."""

    def apply(model: nn.Sequential) -> None:
        with torch.no_grad():
            model[layer].weight[row].mul_(factor)

    return apply


def test_guard_rolls_back_exactly_the_overflowing_edit_and_keeps_the_others_bit_for_bit():
    mlp = fp16_mlp()
    x = probe_input()
    edits = [scale_edit(0, 1.5, 0), scale_edit(2, 1.25, 1), scale_edit(2, 1e5, 3), scale_edit(4, 0.5, 2)]
    report = run_guarded(
        edits,
        apply_edit=lambda e: e(mlp),
        probe=lambda: mlp(x),
        rollback=WeightRollback(mlp),
        watch_model=mlp,
    )
    assert report.committed == [0, 1, 3] and report.rolled_back == [2]
    failed = report.edits[2]
    assert failed.reason == "non-finite probe output" and failed.first_module == "2"
    assert failed.first_module_inputs_finite is True and failed.changes == ["2.weight"]
    assert report.edits[1].changes == ["2.weight"] and math.isfinite(report.edits[3].probe_max_abs)
    # the model equals the one that received only the committed edits, bit for bit
    expected = fp16_mlp()
    for i in report.committed:
        edits[i](expected)
    for (name, got), (_, want) in zip(mlp.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(got, want), name
    assert torch.isfinite(mlp(x)).all()


def test_guard_names_a_nonfinite_weight_and_survives_an_edit_that_raises():
    mlp = fp16_mlp()
    x = probe_input()

    def write_nan(model: nn.Sequential) -> None:
        with torch.no_grad():
            model[4].weight[1, 2] = float("nan")

    def broken(model: nn.Sequential) -> None:
        with torch.no_grad():
            model[0].weight.add_(1)  # half-applied before the failure: must be undone too
        raise RuntimeError("label strings where tensors are expected")

    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    report = run_guarded([write_nan, broken], lambda e: e(mlp), lambda: mlp(x), WeightRollback(mlp), mlp)
    assert report.rolled_back == [0, 1]
    assert report.edits[0].reason == "non-finite weight 4.weight[1, 2]" and report.edits[0].first_module == "4"
    assert report.edits[1].reason == "the edit raised" and "label strings" in report.edits[1].error
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())


# ----------------------------------------------------------------------- guard over LiveEdit's expert library
class LibraryEditor(nn.Module):
    """LiveEdit's editing mechanics without a backbone: edits are experts in an ExpertLibrary applied to h.

    Every input routes to every expert whose visual key beats a zero sentinel; the experts' residual is added
    with ``ExpertLibrary.apply``, as ``LiveEdit`` does at layer ``l_e``.
    """

    D, DM, R, K = 8, 4, 2, 2

    def __init__(self) -> None:
        super().__init__()
        self.library = ExpertLibrary()
        self.norm = nn.LayerNorm(self.D)

    def remove(self, expert_id: int) -> None:
        self.library.remove(expert_id)

    def add_edit(self, scale: float, seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        ones = torch.ones(1, self.K, self.DM)
        experts = Experts(
            psi=ones,
            phi=ones,
            U=torch.randn(1, self.R, self.D, generator=g),
            V=scale * ones.new_ones(1, self.R, self.D),
        )
        return self.library.add(experts)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        keys = InputKeys(
            psi=torch.ones(h.shape[0], self.K, self.DM),
            phi=torch.ones(h.shape[0], self.K, self.DM),
            sentinel=torch.zeros(h.shape[0], self.K, self.DM),
            has_image=torch.ones(h.shape[0], dtype=torch.bool),
        )
        return self.library.apply(h, self.library.route(keys), self.norm)


def test_guard_over_an_expert_library_removes_only_the_failing_edits_experts():
    editor = LibraryEditor()
    h = torch.randn(2, 3, LibraryEditor.D).half()
    scales = [0.5, 1.0, 1e6, 2.0]  # the third edit's expert pushes fp16 hidden states past 65504
    report = run_guarded(
        list(enumerate(scales)),
        apply_edit=lambda e: editor.add_edit(scale=e[1], seed=e[0]),
        probe=lambda: editor(h),
        rollback=rollback_for(editor),
        watch_model=editor,
    )
    assert isinstance(rollback_for(editor), ExpertRollback)
    assert report.committed == [0, 1, 3] and report.rolled_back == [2]
    assert report.edits[2].changes == ["expert 2"] and report.edits[2].first_module == ""
    assert editor.library.ids() == [0, 1, 3]
    # the surviving experts are exactly the committed edits': same output as a library built from them only
    fresh = LibraryEditor()
    fresh.norm.load_state_dict(editor.norm.state_dict())
    for i in report.committed:
        fresh.add_edit(scale=scales[i], seed=i)
    assert torch.equal(editor(h), fresh(h))


def test_rollback_for_rejects_unknown_editors():
    with pytest.raises(TypeError, match="object"):
        rollback_for(object())
