#!/usr/bin/env bash
# The SmolLM2 studies at the budget of issue 24 (300 steps at batch 32, step chosen on 500 held-out
# training examples, full SST-2 dev). Resumable: finished points are read from report/smollm2/points,
# so rerunning this script continues where it stopped. Hours of CPU: run it niced, in the background.
#
# Two shard chains (one core each) walk the whole queue, so neither core waits at a study's boundary
# for the other's last point; with --steal, a chain done with its share takes the other's points not yet
# begun. The chain that finishes a study last runs its final pass (no --shard): the points that train
# nothing (the ensemble's vote, the neighbours' controls, prompt design) and the study's tables and
# plots, while the other chain goes on to the next study.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
budget=(--model packaged:smollm2-135m --task sst2 --max-steps 300 --eval-every 50 --select-examples 500
        --data-dir ../shared/data --output report/smollm2 --quiet)
# neighbours right after init: it trains nothing new (init's random-uniform runs, the default cell)
# length: p = 1, 20, 100 at 4 seeds, p = 5 and 150 (the curve's shape) at 2, as the issue's plan sizes it
queue=("ensemble 5" "init 4" "neighbors 3" "scale 3" "length 4 --seeds-for p=5:2 --seeds-for p=150:2")
chains=${CHAINS:-2}
marks=$(mktemp -d)
trap 'rm -rf "$marks"' EXIT

final() {  # the last chain to finish study $1 runs its final pass; mkdir is the atomic claim
    local k
    for k in $(seq 1 "$chains"); do [ -e "$marks/$1.$k" ] || return 0; done
    mkdir "$marks/$1.final" 2>/dev/null || return 0
    softprompt study "$1" --seeds "${@:2}" "${budget[@]}"
}

chain() {
    local k=$1
    for spec in "${queue[@]}"; do
        set -- $spec
        softprompt study "$1" --seeds "${@:2}" "${budget[@]}" --shard "$k/$chains" --steal
        touch "$marks/$1.$k"
        final "$@"
    done
}
pids=()
for k in $(seq 1 "$chains"); do chain "$k" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
