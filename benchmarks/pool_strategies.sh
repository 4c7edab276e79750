#!/usr/bin/env bash
# The guide's remaining pool strategies (issue 15): expected error reduction (exact, approximated), Suggestive
# Annotation, USDM and learning loss against entropy, margin and random on digits (recipes/pool_strategies_digits.yaml),
# and EMCM against committee variance, GSx and random on the rotation-regression task
# (recipes/emcm_rotation_digits.yaml); 5 seeds each. mnist: the classification strategies on a 10,000-image MNIST
# pool (recipes/pool_strategies_mnist.yaml), whose score_seconds are the cost per round on a 10,000-item pool.
# Each comparison runs into runs/<name>/ (resumable); its compare.md and compare.json are copied to benchmarks/results/pool_strategies_<name>.{md,json}; the seconds each
# strategy spends choosing a batch are the runs' score_seconds (compare.json keeps every metrics row's mean).
#   bash benchmarks/pool_strategies.sh [digits] [rotation] [mnist]      # default: digits rotation
# One thread per run; JOBS=N runs N runs at a time (compare --jobs), e.g. JOBS=2 on a 2-core machine. Digits take
# about 15 minutes with JOBS=2 here (exact EER is the slowest: about 3 minutes a run).
# For a quick check, without touching the published results:
#   SEEDS=1 ROUNDS=1 RUNS=/tmp/ps-runs RESULTS=/tmp/ps-results bash benchmarks/pool_strategies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-benchmarks/results}
overrides=()
[ -n "${ROUNDS:-}" ] && overrides+=("loop.rounds=$ROUNDS")
mkdir -p "$RESULTS"
for name in "${@:-digits rotation}"; do
  for one in $name; do
    case "$one" in
      digits) recipe=recipes/pool_strategies_digits.yaml
              strategies=eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random ;;
      rotation) recipe=recipes/emcm_rotation_digits.yaml; strategies=emcm,committee_variance,gsx,random ;;
      mnist) recipe=recipes/pool_strategies_mnist.yaml
             strategies=eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random ;;
      *) echo "unknown comparison '$one' (digits, rotation, mnist)" >&2; exit 2 ;;
    esac
    $A compare "$recipe" ${overrides[@]+"${overrides[@]}"} --strategies "$strategies" --seeds "${SEEDS:-5}" --metrics "$( [ "$one" = rotation ] && echo rmse,mae,score_seconds,fit_seconds || echo accuracy,score_seconds,fit_seconds )" --jobs "${JOBS:-1}" --out "$RUNS/pool-strategies-$one" -q
    cp "$RUNS/pool-strategies-$one/compare.md" "$RESULTS/pool_strategies_$one.md"
    cp "$RUNS/pool-strategies-$one/compare.json" "$RESULTS/pool_strategies_$one.json"
    echo "wrote $RESULTS/pool_strategies_$one.{md,json}"
  done
done
