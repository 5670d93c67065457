#!/usr/bin/env bash
# The SmolLM2 studies at the budget of issue 24 (300 steps at batch 32, step chosen on 500 held-out
# training examples, full SST-2 dev). Resumable: finished points are read from report/smollm2/points,
# so rerunning this script continues where it stopped. Hours of CPU: run it niced, in the background.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
budget=(--model packaged:smollm2-135m --task sst2 --max-steps 300 --eval-every 50 --select-examples 500
        --data-dir ../shared/data --output report/smollm2 --workers "${WORKERS:-2}" --quiet)
for spec in "ensemble 5" "init 4" "length 4" "scale 3" "neighbors 3"; do
    set -- $spec
    softprompt study "$1" --seeds "$2" "${budget[@]}"
done
