#!/usr/bin/env bash
# The paper's ablation at the fast sizes (issue 19): temporal, spatial_temporal,
# spatial_temporal_generative and full, each trained as the ddtracking_fast_phantoms recipe (13
# phantoms, options, seeds, 20 then 40 epochs in one run), for
#   benchmarks/bench_ddtracking.py --ablation WORK/ablation
#
#   scripts/train_ddtracking_ablation.sh [WORK]     # default build/weights; resumes a stopped run
#
# The phantoms come from `python scripts/build_weights.py ddtracking_fast_phantoms` (run it first, or let
# this script run its phantom step). About 5 minutes per variant on one CPU core.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(realpath -m "${1:-$here/build/weights}")
python=${PYTHON:-$here/.venv/bin/python}
"$python" "$here/scripts/build_weights.py" ddtracking_fast_phantoms --work "$work" >/dev/null   # the phantoms (and that model)
options=$("$python" - "$here" <<'PY'
import shlex, sys
sys.path.insert(0, sys.argv[1] + "/scripts")
from build_weights import RECIPES
recipe = RECIPES["ddtracking_fast_phantoms"]
options = [o for o in recipe["options"]]
i = options.index("--variant")
del options[i:i + 2]
print(shlex.join(["train/" + s for s in recipe["subjects"]]), "|", shlex.join(options))
PY
)
subjects=${options%%|*}
args=${options#*|}
mkdir -p "$work/ablation" && cd "$work"
for variant in temporal spatial_temporal spatial_temporal_generative full; do
  out=ablation/$variant.pt
  [ -e "$out" ] && { echo "$out: done"; continue; }
  resume=--force
  [ -e "ablation/$variant.ckpt.pt" ] && resume=--resume
  echo "+ difftract train ddtracking ... --variant $variant --out $out --epochs 40"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=${THREADS:-1} "$here/.venv/bin/difftract" -q train ddtracking $subjects --variant "$variant" \
    --out "$out" --epochs 40 $args --device cpu $resume
done
