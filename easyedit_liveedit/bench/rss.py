"""Peak resident memory of this process over a block of code, sampled by a background thread.

Why RSS and not ``tracemalloc``: torch allocates tensor storage with its own allocator, which tracemalloc never
sees, so tracemalloc would report a few MiB of Python objects for a run that holds gigabytes of weights. The
resident set size counts everything the process holds in RAM; sampling it every ``interval`` seconds can miss
a peak shorter than the interval, which is why the block's start and end are sampled too.
"""

from __future__ import annotations

import os
import resource
import threading
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (``/proc/self/statm``; the lifetime peak where that is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) is the best available figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss:
    """``with PeakRss() as m: ...`` then ``m.peak_mib``: the highest RSS seen while the block ran."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_mib(self) -> float:
        """Peak RSS in MiB (NaN if the block never ran)."""
        return self.peak / 2**20 if self.peak else float("nan")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
