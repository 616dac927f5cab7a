"""The dev-split table of ``benchmarks/tune_baselines.sh`` and the setting its rule picks per method.

Usage (from the project root): .venv/bin/python benchmarks/tune_summary.py [results/tune]

One row per setting (``results/tune/<setting>/rows.json``): its meta-training seconds (``*.training.json`` of the
archive it trained; ``-`` where it edited with another setting's archive), the five metrics and EMT at 1,000 dev
edits, and their mean (a run that failed: its status). The rule, fixed before the runs: per method, the setting
trained on the editor's rendering with the highest mean of the five metrics at 1,000 edits (``*_dataset``, EasyEdit's
rendering with the shipped archive, is a reference, not a candidate).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc")


def main(root: Path) -> None:
    rows, best = [], {}
    for folder in sorted(p for p in root.iterdir() if (p / "rows.json").is_file()):
        (row,) = [r for r in json.loads((folder / "rows.json").read_text()) if r["edits"] == 1000]
        if row["status"] != "ok":
            rows.append((folder.name, "-", row["status"], None, None))
            continue
        values = [row["metrics"][m] for m in METRICS]
        mean = sum(values) / len(values)
        trained = [json.loads(p.read_text()) for p in folder.glob("models/*/*.training.json")]
        seconds = f"{trained[0]['seconds']:.0f} ({trained[0]['steps']} steps)" if trained else "-"
        rows.append((folder.name, seconds, values, row["emt_after"], mean))
        if not folder.name.endswith("_dataset") and mean > best.get(row["method"], ("", -1.0))[1]:
            best[row["method"]] = (folder.name, mean)
    print("| setting | training s | Rel | T-Gen | M-Gen | T-Loc | M-Loc | EMT after | mean of five |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seconds, values, emt, mean in rows:
        if isinstance(values, str):  # a failed run: its status
            print(f"| {name} | {seconds} | {values} | | | | | | |")
            continue
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {seconds} | {cells} | {emt:.3f} | {mean:.3f} |")
    for method, (name, mean) in sorted(best.items()):
        print(f"\n{method}: {name} (mean {mean:.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/tune"))
