#!/usr/bin/env bash
# Every method on one footing (issue 17, bench/RESULTS.md): each tuned on split seed 0 with
# kga_fast.compare's budget (unlearning seed 0), then its chosen setting reported on split seeds
# 1 and 2 over unlearning seeds 0-2, all judged against a pool of 8 retrains; then the table of
# every method against every target (bench/targets.py).
#
#   bench/compare_methods.sh runs/cmp50                          # quick subsets, 50% forgotten
#   bench/compare_methods.sh runs/cmp10 --forget-fraction 0.1    # the literature's 10%
#
# Extra arguments go to every scripts/compare.py call (the run folder options).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
shift
py=${PYTHON:-python}
"$py" scripts/compare.py --run-dir "$out-s0" --seed 0 --retrains 8 --tune "$@"
for split in 1 2; do
  "$py" scripts/compare.py --run-dir "$out-s$split" --seed "$split" --retrains 8 \
    --tuned "$out-s0/tuned.json" --seeds 0,1,2 "$@"
done
"$py" bench/targets.py "$out-s1" "$out-s2"
