"""The comparison plot: each metric against the number of sequential edits (log x), one line per method.

Read at a glance: each method has its own marker, marker size and line style and is drawn slightly shifted
along x (12% per method, on the log axis), so lines that overlap (two methods both at 1.0) stay
distinguishable; the x axis is labelled with the edit counts themselves, in thousands from 1,000 on (``2k``) so that
neighbours such as 500, 1,000 and 2,000 stay legible. Failed points are left out of the lines
(a NaN row has no meaningful score) and marked with an ``x`` at the bottom of the panel, so a method that breaks
stays visible; methods that did not run appear in the legend (below the panels) as "not run".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from ..easyedit.scoring import METRICS
from .engine import Row

_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINES = ("-", "--", "-.", ":")
_SHIFT = 1.12  # x factor between neighbouring methods on the log axis


def plot(rows: Sequence[Row], path: str | Path, title: str = "") -> Path:
    """Write a PNG with one panel per metric (the five EasyEdit metrics and the EMT probe); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    panels = list(METRICS.items()) + [("emt_after", "EMT (classification acc.)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    methods = list(dict.fromkeys(row.method for row in rows))
    counts = sorted({row.edits for row in rows})
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        for i, method in enumerate(methods):
            style = {
                "marker": _MARKERS[i % len(_MARKERS)],
                "linestyle": _LINES[i % len(_LINES)],
                "markersize": max(9 - 1.5 * i, 4),  # later methods drawn smaller: an earlier one shows around them
            }
            shift = _SHIFT ** (i - (len(methods) - 1) / 2)  # methods side by side around each edit count
            mine = [r for r in rows if r.method == method]
            if all(r.status.startswith("not run") for r in mine):
                ax.plot([], [], label=f"{method} (not run)", **style)
                continue
            ok = [r for r in mine if r.status == "ok"]
            xs = [r.edits * shift for r in ok]
            ys = [r.emt_after if key == "emt_after" else r.metrics.get(key, math.nan) for r in ok]
            (line,) = ax.plot(xs, ys, label=method, **style)
            failed = [r.edits * shift for r in mine if r.status != "ok"]
            if failed:
                ax.scatter(failed, [0.0] * len(failed), marker="x", color=line.get_color(), label=f"{method} failed")
        ax.set_xscale("log")
        ax.set_xticks(counts, [_count_label(t) for t in counts])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("sequential edits")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    # one legend below the panels, where it hides no point (the first panel's lines: every method)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 120))  # a long title wraps instead of running off the figure
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _count_label(count: int) -> str:
    """An edit count as the x axis shows it: ``500``, ``1k``, ``2.5k``, ``10k``."""
    return f"{count / 1000:g}k" if count >= 1000 else str(count)
