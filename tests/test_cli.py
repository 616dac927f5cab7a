"""The command line as users run it: ``python -m easyedit_liveedit <command> overrides...`` in a subprocess.

One real run, a ``--multirun`` sweep of ``edit`` over every method on the small toy world (with archives trained
for two steps by the compare tests' helper), and the bad-argument cases, all started at once, since each
subprocess spends most of its time importing EasyEdit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ARCHIVE_RUN, small_archives

from easyedit_liveedit.toyworld.layout import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.toy_world=small", "run.edits=[1,2]", "run.probe_limit=4", "run.threads=1", "run.progress=false"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "easyedit_liveedit", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def runs(small_world, tmp_path_factory):
    """A multirun sweep over every method, the bare command and bad arguments, started together. The runs load
    the session's small world itself (its cache folder), so the session's archives fit it and are reused."""
    base = tmp_path_factory.mktemp("cli")
    common = [
        *SMALL,
        *ARCHIVE_RUN,
        f"run.output_dir={base / 'out'}",
        f"run.archive_dir={small_archives(tmp_path_factory, small_world)}",
    ]
    records = json.loads(small_world.split("vqa_eval").read_text())[:4]
    records[2]["image_rephrase"] = "digits/none.png"
    (base / "bad_eval.json").write_text(json.dumps(records))
    bad_data = [
        "data=mmedit",
        f"data.train_json={small_world.split('vqa_train')}",
        f"data.eval_json={base / 'bad_eval.json'}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(small_world.layout.root.parent))
        started = {
            "multirun": _start(["edit", *common, "--multirun", "method=LiveEdit,MEND,SERAC,IKE"], base),
            "side_by_side": _start(
                [
                    "compare",
                    *common,
                    "run.workers=2",
                    "run.methods=[MEND,LiveEdit]",
                    f"run.output_dir={base / 'side_by_side'}",
                ],
                base,
            ),  # fmt: skip
            "bare": _start([], base),
            "bad_option": _start(["edit", "method=NOPE", *common], base),
            "bad_key": _start(["edit", "run.no_such_key=1", *common], base),
            "bad_command": _start(["comparre", *common], base),
            "bad_data": _start(["edit", "method=LiveEdit", *common, *bad_data], base),
        }
    return base, {name: _finish(p) for name, p in started.items()}


def _table(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "table.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_multirun_sweeps_methods_and_writes_config_log_table_and_plot(runs):
    base, results = runs
    result = results["multirun"]
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (base / "out" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_edit_LiveEdit", "1_edit_MEND", "2_edit_SERAC", "3_edit_IKE"]
    for job in jobs:
        for name in (
            "config.yaml",
            ".hydra/config.yaml",
            "easyedit-liveedit.log",
            "table.md",
            "table.csv",
            "plot.png",
        ):
            assert (sweep / job / name).is_file(), (job, name)
    tables = {job.split("_")[-1]: _table(sweep / job) for job in jobs}
    for method, rows in tables.items():
        assert [(r["Method"], r["Edits"]) for r in rows] == [(method, "1"), (method, "2")]
        assert all(r["Status"] == "ok" for r in rows), rows
    # every editor edited the same records: the sequence fingerprints agree at each edit count
    assert len({tuple(r["Sequence"] for r in rows) for rows in tables.values()}) == 1
    assert "| LiveEdit | 2 | ok |" in result.stdout  # the Markdown table is the command's output
    assert "edits=[1, 2]" in (sweep / jobs[0] / "table.md").read_text()  # the override reached the run


_SCORES = ("Status", "Reliability", "T-Gen", "M-Gen", "T-Loc", "M-Loc", "EMT before", "EMT after", "Sequence")


def test_compare_with_two_workers_gives_each_method_its_own_run_and_the_same_rows(runs):
    base, results = runs
    result = results["side_by_side"]
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (base / "side_by_side" / "compare").iterdir()
    rows = _table(run_dir)
    assert [(r["Method"], r["Edits"]) for r in rows] == [("MEND", "1"), ("MEND", "2"), ("LiveEdit", "1"),
                                                         ("LiveEdit", "2")]  # fmt: skip
    for method in ("MEND", "LiveEdit"):
        folder = run_dir / "methods" / method
        for name in ("config.yaml", "easyedit-liveedit.log", "progress.log", "table.csv"):
            assert (folder / name).is_file(), (method, name)
    # Each method's rows equal those of its own `edit` run in the multirun sweep (latency and memory aside).
    (sweep,) = (base / "out" / "multirun").iterdir()
    alone = {r["Method"]: r for job in sweep.iterdir() if job.is_dir() for r in _table(job) if r["Edits"] == "2"}
    for row in rows:
        if row["Edits"] == "2":
            assert {k: row[k] for k in _SCORES} == {k: alone[row["Method"]][k] for k in _SCORES}, row["Method"]


def test_bare_command_prints_usage_and_easyedit_tables(runs):
    result = runs[1]["bare"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: easyedit-liveedit")
    assert "LiveEdit     easyedit_liveedit.easyedit.entry.apply_liveedit_to_multimodal_model" in result.stdout


def test_bad_group_option_names_the_group_and_the_choices(runs):
    result = runs[1]["bad_option"]
    assert result.returncode != 0
    assert "NOPE" in result.stderr and "method" in result.stderr
    assert "LiveEdit" in result.stderr and "MEND" in result.stderr  # Hydra lists the available options


def test_unknown_key_is_named(runs):
    result = runs[1]["bad_key"]
    assert result.returncode != 0
    assert "no_such_key" in result.stderr


def test_unknown_command_lists_the_commands(runs):
    result = runs[1]["bad_command"]
    assert result.returncode != 0
    assert "unknown command 'comparre'" in result.stderr
    assert "compare" in result.stderr and "diagnose" in result.stderr


def test_a_bad_data_file_is_refused_naming_the_record_and_field_before_any_edit(runs):
    """Guards the command line's data check: a user's MMEdit file with a missing image fails before anything is
    trained or edited, with an error naming the file, the record and the field."""
    result = runs[1]["bad_data"]
    assert result.returncode != 0
    assert "bad_eval.json: record 2, field 'image_rephrase': image file" in result.stderr
    assert "does not exist" in result.stderr and "LiveEdit edits" not in result.stderr


def test_quick_flag_is_the_quick_run_preset():
    from easyedit_liveedit.bench.cli import _hydra_argv

    assert _hydra_argv(["compare", "--quick", "method=MEND"]) == ["run=quick", "method=MEND", "command=compare"]
    assert _hydra_argv(["compare", "--multirun", "--quick"]) == ["--multirun", "run=quick", "command=compare"]
