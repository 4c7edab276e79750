#!/usr/bin/env bash
# PAL (Fang, Li & Cohn, EMNLP 2017; issue 18): a stream-selection policy learnt by deep Q-learning in simulation on
# digits, then compared on the same stream with random asking at the policy's rate, a threshold stream on entropy
# and pool-based top-k entropy (and random top-k), 5 seeds each:
#   in-domain: the digits policy on digits       -> benchmarks/results/pal_digits.{md,json}
#   transfer:  the digits policy on MNIST (5,000) -> benchmarks/results/pal_transfer_mnist.{md,json}
# The policy is learnt once (runs/pal/digits/, resumable: run the script again after a kill) and used by every seed.
#   bash benchmarks/pal.sh [digits] [mnist]            # default: both
# One thread, on a loaded 2-core machine: learning about 3 minutes (20 episodes of about 8 s); each comparison
# 25 runs of about 10 s (8 rounds of a linear probe); about 13 minutes in all (estimated from a smoke run: 3
# episodes, 1 seed, 2 rounds took 2 minutes 10 s for both comparisons).
# For a quick check, without touching the published results:
#   EPISODES=2 SEEDS=1 ROUNDS=2 RUNS=/tmp/pal-runs RESULTS=/tmp/pal-results bash benchmarks/pal.sh
source "$(dirname "$0")/lib.sh"
STRATEGIES=pal,random_rate,threshold_entropy,entropy,random
POLICY="$RUNS/pal/digits/policy.pt"

comparisons "digits mnist" "digits mnist" "$@"     # checked before the policy is learnt
"$A" pal learn recipes/pal_digits.yaml "scorer.params.policy=$POLICY" ${EPISODES:+--episodes "$EPISODES"} -q
"$A" pal info "$POLICY"

for one in "${COMPARISONS[@]}"; do
  case "$one" in
    digits) compare_publish pal_digits pal_digits recipes/pal_digits.yaml "scorer.params.policy=$POLICY" \
              --strategies "$STRATEGIES" ;;
    mnist) compare_publish pal_transfer_mnist pal_transfer_mnist recipes/pal_transfer_mnist.yaml \
             "scorer.params.policy=$POLICY" --strategies "$STRATEGIES" ;;
  esac
done
