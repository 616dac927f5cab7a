"""A sequential editing run that commits one expert per edit to a library folder: the child process that
``test_library_durability.py`` kills and restarts.

Usage: python tests/library_child.py FOLDER EDITS SHARD_SIZE [CRASH_POINT CALL]

Edit ``i`` is a deterministic expert (seeded by ``i``) committed under the key ``edit-i``; a restarted run skips every
key the folder already holds, so it never applies an edit twice. After each commit it prints ``committed i``.
With ``PACE`` in the environment it waits that many seconds after each report, so a kill timed from the reports
lands inside the run on however fast a machine. With ``CRASH_POINT`` the process kills itself (SIGKILL) at the
``CALL``-th time it reaches that point of the storage code:

- ``torn-append``: half-way through writing a journal record;
- ``before-fsync``: a journal record written, not yet fsynced (``add`` has not returned);
- ``before-rename``: a shard or manifest written to its temporary file, not yet renamed;
- ``before-manifest``: a sealed shard renamed into place, the manifest not yet replaced;
- ``after-manifest``: the new manifest in place, the files it no longer lists not yet deleted.

Only ``torch`` and the method layer are imported (not the package's front door, which imports EasyEdit), so a
restart takes about a second.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "easyedit_liveedit"
front = types.ModuleType("easyedit_liveedit")  # the method layer without the front door (no EasyEdit import)
front.__path__ = [str(PACKAGE)]
sys.modules["easyedit_liveedit"] = front

import torch  # noqa: E402

from easyedit_liveedit.liveedit import storage  # noqa: E402
from easyedit_liveedit.liveedit.library import ExpertLibrary  # noqa: E402
from easyedit_liveedit.liveedit.networks import Experts  # noqa: E402

IDENTITY = {"backbone": "Child", "hidden_size": 12, "rank": 2, "networks": "0123"}
PACE = float(os.environ.get("PACE", "0"))
SHAPES = ((3, 8), (3, 8), (2, 12), (2, 12))  # psi, phi (k, d_m); U, V (r, d)


def expert(i: int) -> Experts:
    """Edit ``i``'s expert: the same in every run."""
    g = torch.Generator().manual_seed(1000 + i)
    return Experts(*(torch.randn(1, *shape, generator=g) for shape in SHAPES))


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _Tearing:
    """A journal file whose next write stops half-way, then the process dies."""

    def __init__(self, f: object) -> None:
        self._f = f

    def write(self, data: bytes) -> None:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        die()

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


def arm(point: str, call: int) -> None:
    """Make the ``call``-th pass through ``point`` kill the process."""
    count = {"n": 0}

    def reached() -> bool:
        count["n"] += 1
        return count["n"] == call

    if point == "torn-append":
        writable = storage.LibraryStore._writable

        def tearing(self: storage.LibraryStore) -> object:
            f = writable(self)
            return _Tearing(f) if sys._getframe(1).f_code.co_name == "append" and reached() else f

        storage.LibraryStore._writable = tearing
    elif point == "before-fsync":
        fsync = os.fsync

        def dying_fsync(fd: int) -> None:
            if sys._getframe(1).f_code.co_name == "append" and reached():
                die()
            fsync(fd)

        storage.os.fsync = dying_fsync
    elif point == "before-rename":
        replace = os.replace

        def dying_replace(src: str, dst: str) -> None:
            if reached():
                die()
            replace(src, dst)

        storage.os.replace = dying_replace
    elif point in ("before-manifest", "after-manifest"):
        write_manifest = storage._write_manifest

        def dying_manifest(folder: Path, body: dict) -> None:
            if point == "before-manifest" and body["shards"] and reached():
                die()
            write_manifest(folder, body)
            if point == "after-manifest" and body["shards"] and reached():
                die()

        storage._write_manifest = dying_manifest
    else:
        raise SystemExit(f"unknown crash point {point!r}")


def main() -> None:
    folder, edits, shard_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        arm(sys.argv[4], int(sys.argv[5]))
    library = ExpertLibrary(dtype=torch.bfloat16)
    library.open(folder, IDENTITY, shard_size=shard_size)
    print(f"ready {len(library)}", flush=True)
    for i in range(edits):
        key = f"edit-{i}"
        if library.has_key(key):
            continue
        library.add(expert(i), keys=[key])
        print(f"committed {i}", flush=True)
        time.sleep(PACE)
    library.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
