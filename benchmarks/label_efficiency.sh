#!/usr/bin/env bash
# Label efficiency of the CEAL classification recipes: `activelab compare` over 5 seeds (mean, 95% interval, area
# under the curve, labels to reach random's final accuracy, pairwise penalty matrix). Each comparison runs into
# runs/<out>/ (interrupted comparisons resume where they stopped) and its compare.md and compare.json are copied
# to benchmarks/results/label_efficiency_<name>.{md,json}, which the docs include.
#   bash benchmarks/label_efficiency.sh [digits] [fashion]      # default: both
# One thread per run; about 15 minutes for digits and 70 minutes for Fashion-MNIST on a 2-core machine.
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS.
source "$(dirname "$0")/lib.sh"
comparisons "digits fashion" "digits fashion" "$@"
for one in "${COMPARISONS[@]}"; do
  case "$one" in
    digits) compare_publish compare-digits label_efficiency_digits recipes/ceal_digits.yaml \
              --strategies ceal,entropy,margin,bald,random --metrics accuracy,n_pseudo,pseudo_accuracy ;;
    fashion) compare_publish compare-fashion label_efficiency_fashion recipes/ceal_fashion_mnist.yaml \
               --strategies ceal,entropy,random --metrics accuracy,n_pseudo,pseudo_accuracy ;;
  esac
done
