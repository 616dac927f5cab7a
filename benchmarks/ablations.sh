#!/bin/bash
# The paper's ablations on the scenes world's dev split (BENCHMARKS.md, "The paper's ablations"): each variant is the
# toy training YAML with max_iters 2000 and the keys named, meta-trained from scratch (about 12 minutes each alone on
# one core), then routed through benchmarks/routing_probe.py on 1,000 dev edits. Outputs under results/ablate/<name>/;
# a variant whose probe output exists is skipped, so a cut run picks up where it stopped.
# Usage (from the project root, after `make setup`): bash benchmarks/ablations.sh [variant ...]
# SEED=<n> trains with another seed (the YAML's is 42) into results/ablate/<name>-seed<n>/: the spread over seeds.
set -euo pipefail
export OMP_NUM_THREADS=1
seed=${SEED:-42}
suffix=""; if [ "$seed" != 42 ]; then suffix=-seed$seed; fi
for spec in "full:" "no_relative:soft_route_terms: absolute" "no_absolute:soft_route_terms: relative" \
            "averaged:soft_weights: average|soft_route_lambda: 0.0" "no_prompt_guided:prompt_guided_keys: false"; do
  name=${spec%%:*}; keys=${spec#*:}
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  dir=results/ablate/$name$suffix; mkdir -p "$dir"
  if grep -qs '"own_expert"' "$dir/routing.txt"; then continue; fi
  .venv/bin/python - "$dir" "$keys" "$seed" <<'P'
import re
import sys

folder, keys, seed = sys.argv[1], [kv for kv in sys.argv[2].split("|") if kv], sys.argv[3]
text = open("hparams/TRAINING/LiveEdit/toy-blip2.yaml").read()
text = re.sub(r"^max_iters:.*$", "max_iters: 2000", text, flags=re.M)
text = re.sub(r"^seed:.*$", f"seed: {seed}", text, flags=re.M)
text = re.sub(r"^results_dir:.*$", f"results_dir: {folder}", text, flags=re.M)
for key, value in (kv.split(": ") for kv in keys):
    if re.search(rf"^{key}:", text, flags=re.M):
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
    else:
        text += f"{key}: {value}\n"
open(f"{folder}/train.yaml", "w").write(text)
P
  .venv/bin/python -m easyedit_liveedit.bench.meta_train --hparams "$dir/train.yaml" --toy-world scenes \
    --results-dir "$dir" --threads 1 > "$dir/train.log" 2>&1
  .venv/bin/python benchmarks/routing_probe.py --edits 1000 --archive "$dir/models/LiveEdit/blip2" > "$dir/routing.txt" 2>&1
done
