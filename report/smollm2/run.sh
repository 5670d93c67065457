#!/usr/bin/env bash
# The SmolLM2 studies at the budget of issue 24 (300 steps at batch 32, step chosen on 500 held-out
# training examples, full SST-2 dev). Resumable: finished points are read from report/smollm2/points,
# so rerunning this script continues where it stopped. Hours of CPU: run it niced, in the background.
#
# Two shard chains (one core each) walk the whole queue, so neither core waits at a study's boundary
# for the other's last point; a final pass without --shard writes each study's tables and plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
budget=(--model packaged:smollm2-135m --task sst2 --max-steps 300 --eval-every 50 --select-examples 500
        --data-dir ../shared/data --output report/smollm2 --quiet)
queue=("ensemble 5" "init 4" "length 4" "scale 3" "neighbors 3")
chains=${CHAINS:-2}

chain() {
    local k=$1
    for spec in "${queue[@]}"; do
        set -- $spec
        softprompt study "$1" --seeds "$2" "${budget[@]}" --shard "$k/$chains"
    done
}
for k in $(seq 1 "$chains"); do chain "$k" & done
wait
for spec in "${queue[@]}"; do
    set -- $spec
    softprompt study "$1" --seeds "$2" "${budget[@]}"
done
