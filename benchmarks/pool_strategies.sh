#!/usr/bin/env bash
# The guide's remaining pool strategies (issue 15): expected error reduction (exact, approximated), Suggestive
# Annotation, USDM and learning loss against entropy, margin and random on digits (recipes/pool_strategies_digits.yaml),
# and EMCM against committee variance, GSx and random on the rotation-regression task
# (recipes/emcm_rotation_digits.yaml); 5 seeds each. Each comparison runs into runs/<name>/ (resumable); its
# compare.md and compare.json are copied to benchmarks/results/pool_strategies_<name>.{md,json}; the seconds each
# strategy spends choosing a batch are the runs' score_seconds (compare.json keeps every metrics row's mean).
#   bash benchmarks/pool_strategies.sh [digits] [rotation]      # default: both
# One thread per run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
mkdir -p benchmarks/results
for name in "${@:-digits rotation}"; do
  for one in $name; do
    case "$one" in
      digits) recipe=recipes/pool_strategies_digits.yaml
              strategies=eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random ;;
      rotation) recipe=recipes/emcm_rotation_digits.yaml; strategies=emcm,committee_variance,gsx,random ;;
      *) echo "unknown comparison '$one' (digits, rotation)" >&2; exit 2 ;;
    esac
    $A compare "$recipe" --strategies "$strategies" --seeds 5 --metrics "$( [ "$one" = rotation ] && echo rmse,mae,score_seconds || echo accuracy,score_seconds )" --out "runs/pool-strategies-$one" -q
    cp "runs/pool-strategies-$one/compare.md" "benchmarks/results/pool_strategies_$one.md"
    cp "runs/pool-strategies-$one/compare.json" "benchmarks/results/pool_strategies_$one.json"
    echo "wrote benchmarks/results/pool_strategies_$one.{md,json}"
  done
done
