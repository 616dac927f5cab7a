"""The comparison table: one row per method and edit count, as Markdown (for reading) and CSV (for tools).

Failed and skipped methods keep their rows: the ``Status`` column says ``ok``, ``NaN (...)``, ``error (...)``,
``out of memory (...)`` or ``not run: <reason>``, and their missing numbers are written as ``-`` (Markdown) or
left empty (CSV), never dropped and never shown as zeros.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from ..easyedit.scoring import METRICS
from .engine import Row

COLUMNS = (
    ["Method", "Edits", "Status"]
    + list(METRICS.values())
    + ["EMT before", "EMT after", "Latency (s/edit, median)", "Peak RSS (MiB)", "Sequence"]
)


def _values(row: Row) -> list[float | int | str]:
    metrics = [row.metrics.get(key, math.nan) for key in METRICS]
    return [row.method, row.edits, row.status, *metrics, row.emt_before, row.emt_after, row.latency_s,
            row.peak_rss_mib, row.sequence]  # fmt: skip


def _cell(value: float | int | str, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value) if value != "" else "-"


def markdown(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table (scores with 3 decimals, latency in seconds, memory in MiB)."""
    digits = [0, 0, 0] + [3] * len(METRICS) + [3, 3, 4, 0, 0]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for row in rows:
        cells = [_cell(v, d).replace("|", "/") for v, d in zip(_values(row), digits, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """The table as CSV with the same columns (missing numbers are empty cells)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in _values(row)])
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a table written by ``write_csv`` (column name -> cell text)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
