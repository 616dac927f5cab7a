"""``easyedit-liveedit compare`` on whichever EasyEdit target the session runs, on the small toy world: LiveEdit,
MEND, SERAC, IKE and EasyEdit main's WISE and GRACE, one row per method and edit count. On EasyEdit main every
method runs but GRACE, whose row says why (its multimodal executor needs a chat processor the toy BLIP-2 lacks); on
the PyPI wheel WISE's and GRACE's rows say the wheel has neither."""

from __future__ import annotations

import pytest
from helpers import ARCHIVE_RUN, TARGET, small_archives, small_runner

from easyedit_liveedit.easyedit.scoring import METRICS

RAN = {"main": ("LiveEdit", "MEND", "SERAC", "IKE", "WISE"), "wheel": ("LiveEdit", "MEND", "SERAC", "IKE")}


@pytest.fixture(scope="module")
def rows(small_world, tmp_path_factory):
    archive_dir = small_archives(tmp_path_factory, small_world)
    runner = small_runner(small_world, tmp_path_factory.mktemp("compare-targets"), "command=compare",
                          "run.edits=[1,2]", "run.probe_limit=4", "run.ike_train_records=8",
                          f"run.archive_dir={archive_dir}", *ARCHIVE_RUN)  # fmt: skip
    runner.compare()
    return runner.rows


def test_one_row_per_method_and_edit_count(rows):
    assert [(r.method, r.edits) for r in rows] == [
        (m, t) for m in ("LiveEdit", "MEND", "SERAC", "IKE", "WISE", "GRACE") for t in (1, 2)
    ]


def test_every_method_the_target_has_runs_and_scores_proportions(rows):
    for row in (r for r in rows if r.method in RAN[TARGET]):
        assert row.status == "ok", row
        assert set(row.metrics) == set(METRICS) and all(0.0 <= v <= 1.0 for v in row.metrics.values()), row
        assert row.sequence  # the same records, fingerprinted
    assert len({r.sequence for r in rows if r.method in RAN[TARGET] and r.edits == 2}) == 1


def test_a_method_that_cannot_run_is_a_row_that_says_why(rows):
    reasons = {r.method: r.status for r in rows if r.method not in RAN[TARGET]}
    assert "apply_chat_template" in reasons["GRACE"] and reasons["GRACE"].startswith("not run: ")
    if TARGET == "wheel":
        assert reasons["WISE"] == (
            "not run: the installed easyeditor has no WISEMultimodalHyperParams (EasyEdit main has; "
            "the PyPI wheel 0.0.1.dev0 has not)"
        )
