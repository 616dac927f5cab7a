"""What a diagnosed editing run found, and its three renderings: a text table, a JSON file and a PNG plot.

One ``RunReport`` per editor run holds one ``EditRecord`` per edit (edited weights, logits, the module
closest to overflowing) and, if the run went non-finite, a ``Failure`` naming the edit, module and tensor and
the kind of failure. The kinds are kept apart on purpose: a MEND whose normaliser statistics are NaN (an
untrained archive) fails at the very first edit for a reason that has nothing to do with the accumulation
of sequential edits, and must not be reported as "NaN after k edits".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .weights import WeightStat

FAILURE_KINDS = {
    "nan_normaliser_statistics": "MEND's normaliser statistics are non-finite (untrained or uninitialised "
    "archive): every update it computes is NaN, from the first edit on",
    "weight_overflow": "an edit wrote a non-finite value into an edited weight (the update overflowed the "
    "weight's dtype or was itself non-finite)",
    "activation_overflow": "the edited weights are finite, but a module's output overflowed its dtype on the "
    "probe input",
    "edit_raised": "the editor raised an exception while editing",
}


@dataclass
class EditRecord:
    """The state of the model right after edit ``index`` (0-based)."""

    index: int
    edit_loss: float | None  # the editor's own loss on the edit sample before the edit (None: it has none)
    weights: list[WeightStat]
    logits_min: float
    logits_max: float
    finite: bool  # probe output and edited weights all finite
    tightest_module: str = ""  # finite module with the least headroom to its dtype's largest value
    tightest_headroom: float = math.inf
    tightest_dtype: str = ""
    first_module: str = ""  # first module whose probe output went non-finite ("" if none)
    first_module_inputs_finite: bool | None = None
    notes: str = ""

    @property
    def weight_norm_total(self) -> float:
        return math.fsum(w.norm for w in self.weights)

    @property
    def largest_relative_update(self) -> float:
        return max((w.relative_update for w in self.weights), default=0.0)


@dataclass
class Failure:
    """The first point at which a run went non-finite."""

    kind: str  # a key of FAILURE_KINDS
    edit: int  # 0-based edit index
    module: str  # module whose output went non-finite first (or the weight's owner)
    tensor: str  # e.g. "output of opt_model.model.decoder.layers.1.fc2", "weight ...fc1.weight[3, 7]"
    detail: str = ""

    @property
    def explanation(self) -> str:
        return FAILURE_KINDS.get(self.kind, self.kind)


@dataclass
class RunReport:
    """One editor's diagnosed run over an edit sequence."""

    editor: str
    settings: dict[str, Any]
    edits: list[EditRecord] = field(default_factory=list)
    failure: Failure | None = None
    initial: list[WeightStat] = field(default_factory=list)  # the tracked weights before the first edit

    @property
    def stayed_finite(self) -> bool:
        return self.failure is None

    def summary(self) -> str:
        """One sentence: what happened, where, and after how many edits."""
        if self.failure is None:
            tight = min(self.edits, key=lambda r: r.tightest_headroom, default=None)
            room = f"; least headroom {tight.tightest_headroom:.3g}x at {tight.tightest_module}" if tight else ""
            return f"{self.editor}: stayed finite for all {len(self.edits)} edits{room}"
        f = self.failure
        return (
            f"{self.editor}: non-finite at edit {f.edit + 1} of {len(self.edits)} ({f.kind}): {f.tensor}. "
            f"{f.explanation}" + (f". {f.detail}" if f.detail else "")
        )


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def format_table(run: RunReport, max_rows: int | None = 40) -> str:
    """Fixed-width text table: one row per edit (the first and last rows only past ``max_rows``), then the summary."""
    header = ("edit", "loss", "sum|W|", "max dW/W", "logit min", "logit max", "headroom", "tightest module", "status")
    rows = []
    for r in run.edits:
        status = "ok" if r.finite else f"NON-FINITE {r.first_module or ''}".rstrip()
        rows.append(
            (
                str(r.index + 1),
                "-" if r.edit_loss is None else _fmt(r.edit_loss),
                _fmt(r.weight_norm_total),
                _fmt(r.largest_relative_update),
                _fmt(r.logits_min),
                _fmt(r.logits_max),
                _fmt(r.tightest_headroom),
                r.tightest_module,
                status,
            )
        )
    if max_rows is not None and len(rows) > max_rows:
        head, tail = max_rows - max_rows // 4, max_rows // 4
        skipped = len(rows) - head - tail
        rows = rows[:head] + [("...", f"({skipped} edits)", *[""] * (len(header) - 2))] + rows[-tail:]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [f"== {run.editor} ==", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(run.summary())
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) as strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return _fmt(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def to_dict(run: RunReport) -> dict[str, Any]:
    """A JSON-ready dict of ``run`` (non-finite floats as "nan" / "inf" strings)."""
    data = asdict(run)
    data["stayed_finite"] = run.stayed_finite
    data["summary"] = run.summary()
    if run.failure is not None:
        data["failure"]["explanation"] = run.failure.explanation
    return _jsonable(data)


def write_json(runs: list[RunReport], path: str | os.PathLike) -> None:
    """Write every run to ``path`` as ``{"runs": [...]}``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"runs": [to_dict(r) for r in runs]}, f, indent=1)


def plot_norm_history(runs: list[RunReport], path: str | os.PathLike) -> None:
    """PNG: the norm of every edited weight after each edit, one panel per run, failing edit marked.

    Non-finite norms are not drawn; the failing edit gets a vertical red line and a label with its kind.
    Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        names = [w.name for w in run.initial]
        spread = []
        for j, name in enumerate(names):
            points = [(0, run.initial[j].norm)] + [(r.index + 1, r.weights[j].norm) for r in run.edits]
            points = [(x, y) for x, y in points if math.isfinite(y)]
            marker = "." if len(points) <= 50 else None
            ax.plot([x for x, _ in points], [y for _, y in points], marker=marker, label=name.split("decoder.")[-1])
            spread += [y for _, y in points]
        if run.failure is not None:
            x = run.failure.edit + 1
            ax.axvline(x, color="red", linestyle="--")
            ax.annotate(
                f"non-finite at edit {x}\n({run.failure.kind})",
                xy=(x, 0.95),
                xycoords=("data", "axes fraction"),
                color="red",
                ha="right",
                va="top",
                fontsize=8,
            )
        ax.set_title(run.editor, fontsize=10)
        ax.set_xlabel("sequential edit (0 = before editing)")
        ax.set_ylabel("Frobenius norm of edited weight")
        if spread and min(spread) > 0 and max(spread) / min(spread) > 20:
            ax.set_yscale("log")  # geometric growth reads as a straight line
        if names:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
