#!/usr/bin/env bash
# ASAL (issue 18; Mayer & Timofte, WACV 2020) against exact entropy sampling and random: MNIST, a 5,000-image pool,
# 20 to 200 labels, a small CNN, 5 seeds (recipes/asal_mnist.yaml). The comparison runs into runs/asal-mnist/
# (resumable); its compare.md and compare.json are copied to benchmarks/results/asal_mnist.{md,json}, with a table of
# the cost per round appended: every strategy's scoring and fitting seconds (metrics.jsonl), and ASAL's own split
# (<run>/asal/cost.jsonl: GAN training, sampling and classifying the generated images, latent optimisation,
# embedding them, building the faiss index, the nearest-neighbour search).
#   bash benchmarks/asal.sh
# One thread per run. Each ASAL run trains its DCGAN once (1,500 steps: 5 minutes on a shared 2-core machine),
# kept in runs/asal-cache so a rerun reads it; an ASAL run takes about 8 minutes, an entropy or random run about 2,
# so the comparison takes about an hour (estimated from a 2-round smoke run, not measured whole).
# The nearest-neighbour search at scale (10^6 vectors) is benchmarks/asal_nn.py.
# JOBS=N runs N runs at a time (compare --jobs; on a GPU they share it). For a quick check, without touching the
# published results:  SEEDS=1 ROUNDS=2 RUNS=/tmp/asal-runs RESULTS=/tmp/asal-results bash benchmarks/asal.sh
source "$(dirname "$0")/lib.sh"
compare_publish asal-mnist asal_mnist recipes/asal_mnist.yaml "scorer.params.gan.cache_dir=$RUNS/asal-cache" \
  "task.params.features.cache_dir=$RUNS/features-cache" --strategies asal,entropy,random
"$PY" benchmarks/asal_cost.py "$RUNS/asal-mnist" "$RESULTS/asal_mnist"
echo "wrote $RESULTS/asal_mnist.{md,json} with ASAL's cost per round"
