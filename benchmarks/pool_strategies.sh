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
source "$(dirname "$0")/lib.sh"
CLASSIFICATION=eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random
comparisons "digits rotation mnist" "digits rotation" "$@"
for one in "${COMPARISONS[@]}"; do
  case "$one" in
    digits) compare_publish pool-strategies-digits pool_strategies_digits recipes/pool_strategies_digits.yaml \
              --strategies "$CLASSIFICATION" --metrics accuracy,score_seconds,fit_seconds ;;
    mnist) compare_publish pool-strategies-mnist pool_strategies_mnist recipes/pool_strategies_mnist.yaml \
             --strategies "$CLASSIFICATION" --metrics accuracy,score_seconds,fit_seconds ;;
    rotation) compare_publish pool-strategies-rotation pool_strategies_rotation recipes/emcm_rotation_digits.yaml \
                --strategies emcm,committee_variance,gsx,random --metrics rmse,mae,score_seconds,fit_seconds ;;
  esac
done
