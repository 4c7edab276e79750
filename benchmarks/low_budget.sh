#!/usr/bin/env bash
# Active learning on a budget (issue 16): strategies that select on a label-free representation (TypiClust,
# ProbCover, with cold start) against random, uncertainty and BADGE, 10 to 100 labels, a linear probe on SimCLR
# features of the pool, 5 seeds. Each comparison runs into runs/<out>/ (resumable) and its compare.md and
# compare.json are copied to benchmarks/results/low_budget_<name>.{md,json}, which the docs include.
#   bash benchmarks/low_budget.sh [digits] [mnist] [fashion]      # default: digits
# One thread per run. digits: about 15 minutes on a 2-core machine; mnist and fashion: the SimCLR encoder trains
# once per data set (about 10 minutes), then about 30 minutes each.
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS.
source "$(dirname "$0")/lib.sh"
STRATEGIES=random,typiclust,probcover,entropy,margin,badge,typiclust_then_margin
for name in "${@:-digits}"; do
  for one in $name; do
    case "$one" in
      digits|mnist|fashion) compare_publish "lowbudget-$one" "low_budget_$one" "recipes/lowbudget_$one.yaml" \
                              --strategies "$STRATEGIES" ;;
      *) unknown "$one" "digits, mnist, fashion" ;;
    esac
  done
done
