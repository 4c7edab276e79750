#!/usr/bin/env bash
# Batch-aware acquisition at larger budgets (issue 16): BADGE and stochastic batch acquisition against top-k
# uncertainty and random, 100 to 1,100 labels in batches of 100, a linear probe on PCA features of a 5,000-image
# MNIST pool, 5 seeds. The comparison runs into runs/largebatch-mnist/ (resumable); its compare.md and compare.json
# are copied to benchmarks/results/large_batch_mnist.{md,json}, which the docs include.
#   bash benchmarks/large_batch.sh
# One thread per run; about 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p benchmarks/results
.venv/bin/activelab compare recipes/largebatch_mnist.yaml \
  --strategies random,entropy,margin,bald,badge,power_bald,softrank_margin --seeds 5 --out runs/largebatch-mnist -q
cp runs/largebatch-mnist/compare.md benchmarks/results/large_batch_mnist.md
cp runs/largebatch-mnist/compare.json benchmarks/results/large_batch_mnist.json
echo "wrote benchmarks/results/large_batch_mnist.{md,json}"
