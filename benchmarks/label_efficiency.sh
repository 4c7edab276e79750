#!/usr/bin/env bash
# Label efficiency of the CEAL classification recipes: `activelab compare` over 5 seeds (mean, 95% interval, area
# under the curve, labels to reach random's final accuracy, pairwise penalty matrix). Each comparison runs into
# runs/<out>/ (interrupted comparisons resume where they stopped) and its compare.md and compare.json are copied
# to benchmarks/results/label_efficiency_<name>.{md,json}, which the docs include.
#   bash benchmarks/label_efficiency.sh [digits] [fashion]      # default: both
# One thread per run; about 15 minutes for digits and 70 minutes for Fashion-MNIST on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
mkdir -p benchmarks/results

publish() {  # publish <compare folder> <name>
  cp "$1/compare.md" "benchmarks/results/label_efficiency_$2.md"
  cp "$1/compare.json" "benchmarks/results/label_efficiency_$2.json"
  echo "wrote benchmarks/results/label_efficiency_$2.{md,json}"
}

for what in "${@:-digits fashion}"; do
  for one in $what; do
    case "$one" in
      digits)
        $A compare recipes/ceal_digits.yaml --strategies ceal,entropy,margin,bald,random --seeds 5 \
           --metrics accuracy,n_pseudo,pseudo_accuracy --out runs/compare-digits -q
        publish runs/compare-digits digits ;;
      fashion)
        $A compare recipes/ceal_fashion_mnist.yaml --strategies ceal,entropy,random --seeds 5 \
           --metrics accuracy,n_pseudo,pseudo_accuracy --out runs/compare-fashion -q
        publish runs/compare-fashion fashion ;;
      *) echo "unknown comparison '$one' (digits, fashion)" >&2; exit 2 ;;
    esac
  done
done
