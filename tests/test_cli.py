"""The command line as users run it: ``python -m easyedit_liveedit <command> overrides...`` in a subprocess.

One real run (``compare`` on the small toy world: trains both archives for two steps, then edits) and one
``--multirun`` sweep over methods that reuses those archives; the bad-argument cases run in parallel with the
first, since each subprocess spends most of its time importing EasyEdit.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """The compare run and the bad-argument runs, started together; then the multirun that reuses archives."""
    base = tmp_path_factory.mktemp("cli")
    common = [*SMALL, f"run.output_dir={base / 'out'}", f"run.archive_dir={base / 'archives'}"]
    started = {
        "compare": _start(["compare", *common, "run.train_steps=2", "run.val_size=4"], base),
        "bad_option": _start(["edit", "method=NOPE", *common], base),
        "bad_key": _start(["edit", "run.no_such_key=1", *common], base),
        "bad_command": _start(["comparre", *common], base),
    }
    results = {name: _finish(p) for name, p in started.items()}
    results["multirun"] = _finish(_start(["edit", "--multirun", "method=LiveEdit,MEND", *common], base))
    return base, results


def _table(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "table.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_compare_writes_config_log_table_and_plot(runs):
    base, results = runs
    result = results["compare"]
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (base / "out" / "compare").iterdir()
    for name in ("config.yaml", ".hydra/config.yaml", "easyedit-liveedit.log", "table.md", "table.csv", "plot.png"):
        assert (run_dir / name).is_file(), name
    rows = _table(run_dir)
    assert [(r["Method"], r["Edits"]) for r in rows] == [
        (m, t) for m in ("LiveEdit", "MEND", "SERAC", "IKE") for t in ("1", "2")
    ]
    status = {r["Method"]: r["Status"] for r in rows}
    assert status["LiveEdit"] == status["MEND"] == "ok"
    assert status["SERAC"].startswith("not run:") and status["IKE"].startswith("not run:")
    assert "| LiveEdit | 2 | ok |" in result.stdout  # the Markdown table is the command's output
    for method in ("LiveEdit", "MEND"):  # trained by the run, where run.archive_dir says
        assert (base / "archives" / "models" / method / "blip2").is_file()


def test_multirun_sweeps_methods_with_their_archives(runs):
    base, results = runs
    result = results["multirun"]
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (base / "out" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_edit_LiveEdit", "1_edit_MEND"]
    for job, method in zip(jobs, ("LiveEdit", "MEND"), strict=True):
        rows = _table(sweep / job)
        assert [(r["Method"], r["Status"]) for r in rows] == [(method, "ok"), (method, "ok")]
    # both methods edited the same records: the sequence fingerprints agree at each edit count
    fingerprints = [[r["Sequence"] for r in _table(sweep / job)] for job in jobs]
    assert fingerprints[0] == fingerprints[1]


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
