"""Crash safety of a library folder: a sequential run killed with SIGKILL and restarted loses no committed edit,
applies none twice, and ends with the library an uninterrupted run makes.

The run is ``tests/library_child.py`` (one expert per edit, committed under the key ``edit-i``; a restart skips the
keys the folder holds). Kills land at random moments, and at named points inside the commit and seal protocol.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from easyedit_liveedit.liveedit.library import ExpertLibrary

CHILD = Path(__file__).with_name("library_child.py")
EDITS, SHARD = 60, 7  # a seal every 7 experts: kills land inside seals too
IDENTITY = {"backbone": "Child", "hidden_size": 12, "rank": 2, "networks": "0123"}


def start(folder: Path, *crash: str, pace: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(folder), str(EDITS), str(SHARD), *crash],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PACE": str(pace)},
    )


def committed(output: str) -> set[int]:
    return {int(line.split()[1]) for line in output.splitlines() if line.startswith("committed ")}


def finish(folder: Path) -> set[int]:
    """Run to completion; the edits this run committed."""
    proc = start(folder)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.rstrip().endswith("done"), err
    return committed(out)


def load(folder: Path) -> ExpertLibrary:
    library = ExpertLibrary()
    library.load(folder, identity=IDENTITY)
    return library


def assert_same_library(got: ExpertLibrary, want: ExpertLibrary) -> None:
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> ExpertLibrary:
    folder = tmp_path_factory.mktemp("uninterrupted") / "lib"
    assert finish(folder) == set(range(EDITS))
    return load(folder)


def test_random_sigkills_lose_nothing_and_apply_nothing_twice(tmp_path, uninterrupted):
    """Guards: killed with SIGKILL at random moments (five times) and restarted, the run never loses an edit it
    reported committed, never commits one twice (each edit is reported committed exactly once over all runs), and
    ends with a library equal, tensor for tensor and id for id, to an uninterrupted run's.

    A kill comes after a random number of the edits still to do has been reported (leaving at least ten), plus a
    random delay of up to 5 ms; the child waits 1 ms after each report, so ten edits outlast the delay and the kill
    lands inside the run however fast the machine is."""
    folder = tmp_path / "lib"
    rng = random.Random(19)
    reported: list[int] = []
    killed_mid_run = 0
    for _ in range(5):
        to_do = EDITS - (len(load(folder).ids()) if (folder / "manifest.json").exists() else 0)
        proc = start(folder, pace=0.001)
        assert proc.stdout.readline().startswith("ready")  # imports done: the run itself starts now
        seen = [proc.stdout.readline() for _ in range(rng.randrange(max(to_do - 10, 1)))]
        time.sleep(rng.uniform(0.0, 0.005))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        out = "".join(seen) + out
        assert proc.returncode in (-signal.SIGKILL, 0)
        killed_mid_run += proc.returncode == -signal.SIGKILL and not out.rstrip().endswith("done")
        done_now = committed(out)
        reported += done_now
        survived = set(load(folder).ids())  # id i is edit i: ids are handed out in edit order
        assert set(reported) <= survived, "an edit reported committed was lost"
    reported += finish(folder)
    assert killed_mid_run >= 3, "the kills did not land inside the run"
    # each edit reported at most once (a kill may fall between a commit and its report line)
    assert len(reported) == len(set(reported)), "an edit was committed twice"
    assert_same_library(load(folder), uninterrupted)


POINTS = [  # (crash point in library_child.py, which pass through it); each run resumes the previous one's folder
    ("torn-append", 4),
    ("before-fsync", 4),
    ("before-rename", 3),
    ("before-manifest", 1),
    ("after-manifest", 1),
]


def test_a_kill_at_each_step_of_the_protocol_is_recovered(tmp_path, uninterrupted):
    """Guards each step of the commit and seal protocol (``storage.py``): killed there (one run per step, each
    resuming the last), the folder reopens, edits reported committed survive, no edit is committed twice, and the
    result equals an uninterrupted run's with no temporary or unlisted file left behind."""
    folder = tmp_path / "lib"
    reported: list[int] = []
    for point, call in POINTS:
        proc = start(folder, point, str(call))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (point, out, err)
        reported += committed(out)
        assert set(reported) <= set(load(folder).ids()), point
    reported += finish(folder)
    # each edit reported at most once (a kill may fall between a commit and its report line)
    assert len(reported) == len(set(reported)), "an edit was committed twice"
    assert_same_library(load(folder), uninterrupted)
    leftovers = {p.name for p in folder.iterdir()} - {"manifest.json", "lock"}
    assert all(name.startswith(("shard-", "journal-")) and not name.endswith(".tmp") for name in leftovers)
