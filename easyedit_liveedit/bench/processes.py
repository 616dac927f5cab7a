"""Methods side by side, each in a process of its own (the ``compare`` command's ``run.workers``).

One process per method, so a method that kills its process (out of memory) costs only its own rows, and the toy's
single-threaded methods use every core. A method's rows do not depend on where it runs (``engine.py``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

from tqdm.auto import tqdm

from .engine import Row, failed_rows

LOG = logging.getLogger(__name__)


def _end_with(parent: int) -> None:
    """Worker initializer: end this process as soon as the comparison that spawned it is gone.

    Killed with SIGTERM or SIGKILL (``kill``, a job scheduler), a comparison leaves its spawned workers running,
    training on and writing archives (Ctrl-C in a terminal signals the whole process group, this does not).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _in_own_process(fn: Callable[..., list[Row]], args: tuple) -> list[Row]:
    # Spawned, not forked: a forked process inherits torch's thread pools mid-state and can deadlock.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_end_with, initargs=(os.getpid(),)) as process:
        return process.submit(fn, *args).result()


def compare_in_processes(
    jobs: list[tuple[str, Callable[..., list[Row]], tuple]],
    edits: list[int],
    workers: int,
    progress: bool = True,
    on_method_done: Callable[[list[Row]], None] | None = None,
    status: Callable[[str], str] | None = None,
) -> list[Row]:
    """Run each job ``(name, fn, args)``, ``fn(*args) -> rows``, in a process of its own, ``workers`` at a time,
    started in the order given; returns the rows in that order.

    One process per job, so a job that kills its process (out of memory) costs only its own rows, which show the
    failure (``error (BrokenProcessPool ...)``). ``fn`` must be importable by name (a module-level function).
    ``on_method_done(rows_so_far)`` is called as each job ends. ``status(name)``, if given, describes a running
    job in a few words; the progress bar shows it for every running job, refreshed every few seconds.
    """
    done: dict[str, list[Row]] = {}
    bar = tqdm(total=len(jobs), desc="methods", unit="method", disable=not progress)
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_in_own_process, fn, args): name for name, fn, args in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=3.0, return_when=FIRST_COMPLETED)
            for future in finished:
                name = futures[future]
                try:
                    done[name] = future.result()
                    LOG.info("%s finished", name)
                except Exception as error:  # noqa: BLE001  (a lost process is a failed row, never a gap)
                    LOG.error("%s: its process failed: %s", name, error)
                    done[name] = failed_rows(name, edits, error)
                bar.update(1)
                if on_method_done is not None:
                    on_method_done([row for job in jobs if job[0] in done for row in done[job[0]]])
            if status is not None:
                running = [futures[f] for f in futures if f in pending and f.running()]
                bar.set_postfix_str(" | ".join(f"{name}: {status(name)}" for name in running))
    bar.close()
    return [row for name, _, _ in jobs for row in done[name]]
