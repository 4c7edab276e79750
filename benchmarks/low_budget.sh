#!/usr/bin/env bash
# Active learning on a budget (issue 16): strategies that select on a label-free representation (TypiClust,
# ProbCover, with cold start) against random, uncertainty and BADGE, 10 to 100 labels, a linear probe on a
# label-free representation of the pool, 5 seeds. Each comparison runs into runs/lowbudget-<name>/ (resumable) and
# its compare.md and compare.json are copied to benchmarks/results/low_budget_<name>.{md,json}.
#   bash benchmarks/low_budget.sh [digits] [mnist] [fashion] [mnist_simclr] [fashion_simclr]    # default: digits
#   digits: SimCLR features (300 steps); mnist, fashion: the pixels' first 64 principal components (PCA);
#   mnist_simclr, fashion_simclr: the same 5,000-image pools on SimCLR features (1,000 steps per pool, one encoder
#   per seed's pool, cached in runs/features-cache and shared by the strategies).
# One thread per run. digits: about 15 minutes on a 2-core machine; mnist and fashion: about 30 minutes each; the
# SimCLR variants add about 8 CPU minutes of encoder training per pool (five pools): mnist_simclr took about 40
# minutes with JOBS=1; fashion_simclr 28 minutes with JOBS=2 (two of its five encoders
# already cached).
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS.
source "$(dirname "$0")/lib.sh"
STRATEGIES=random,typiclust,probcover,entropy,margin,badge,typiclust_then_margin
comparisons "digits mnist fashion mnist_simclr fashion_simclr" "digits" "$@"
for one in "${COMPARISONS[@]}"; do
  case "$one" in
    digits|mnist|fashion) compare_publish "lowbudget-$one" "low_budget_$one" "recipes/lowbudget_$one.yaml" \
                            --strategies "$STRATEGIES" ;;
    mnist_simclr|fashion_simclr)
      data=${one%_simclr}
      compare_publish "lowbudget-$data-simclr" "low_budget_$one" "recipes/lowbudget_$data.yaml" \
        "task.params.features={kind: simclr, seed: 0, cache_dir: $RUNS/features-cache, max_steps: 1000}" \
        --strategies "$STRATEGIES" ;;
  esac
done
