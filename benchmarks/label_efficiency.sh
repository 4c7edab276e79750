#!/usr/bin/env bash
# Label efficiency: the README's results tables. Each compare prints its table (mean ± std over seeds) and writes
# runs/<out>/compare.{md,csv,json,png}; interrupted comparisons resume where they stopped.
# One thread per run; about 8 minutes for digits and 40 minutes for Fashion-MNIST on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
$A compare recipes/ceal_digits.yaml --strategies ceal,entropy,margin,bald,random --seeds 3 \
   --metrics accuracy,n_pseudo,pseudo_accuracy --out runs/compare-digits -q
$A compare recipes/ceal_fashion_mnist.yaml --strategies ceal,entropy,random --seeds 3 \
   --metrics accuracy,n_pseudo,pseudo_accuracy --out runs/compare-fashion -q
