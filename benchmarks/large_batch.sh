#!/usr/bin/env bash
# Batch-aware acquisition at larger budgets (issue 16): BADGE and stochastic batch acquisition against top-k
# uncertainty and random, 100 to 1,100 labels in batches of 100, a linear probe on PCA features of a 5,000-image
# MNIST pool, 5 seeds. The comparison runs into runs/largebatch-mnist/ (resumable); its compare.md and compare.json
# are copied to benchmarks/results/large_batch_mnist.{md,json}, which the docs include.
#   bash benchmarks/large_batch.sh
# One thread per run; about 30 minutes on a 2-core machine.
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS.
source "$(dirname "$0")/lib.sh"
compare_publish largebatch-mnist large_batch_mnist recipes/largebatch_mnist.yaml \
  --strategies random,entropy,margin,bald,badge,power_bald,softrank_margin
