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
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-benchmarks/results}
SEEDS=${SEEDS:-5}
STRATEGIES=pal,random_rate,threshold_entropy,entropy,random
POLICY="$RUNS/pal/digits/policy.pt"
overrides=("scorer.params.policy=$POLICY")
[ -n "${ROUNDS:-}" ] && overrides+=("loop.rounds=$ROUNDS")
mkdir -p "$RESULTS"

$A pal learn recipes/pal_digits.yaml "scorer.params.policy=$POLICY" ${EPISODES:+--episodes "$EPISODES"} -q
$A pal info "$POLICY"

for name in "${@:-digits mnist}"; do
  for one in $name; do
    case "$one" in
      digits) recipe=recipes/pal_digits.yaml; out=pal_digits ;;
      mnist) recipe=recipes/pal_transfer_mnist.yaml; out=pal_transfer_mnist ;;
      *) echo "unknown comparison '$one' (digits, mnist)" >&2; exit 2 ;;
    esac
    $A compare "$recipe" "${overrides[@]}" --strategies "$STRATEGIES" --seeds "$SEEDS" --jobs "${JOBS:-1}" --out "$RUNS/$out" -q
    cp "$RUNS/$out/compare.md" "$RESULTS/$out.md"
    cp "$RUNS/$out/compare.json" "$RESULTS/$out.json"
    echo "wrote $RESULTS/$out.{md,json}"
  done
done
