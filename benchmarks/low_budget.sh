#!/usr/bin/env bash
# Active learning on a budget (issue 16): strategies that select on a label-free representation (TypiClust,
# ProbCover, with cold start) against random, uncertainty and BADGE, 10 to 100 labels, a linear probe on SimCLR
# features of the pool, 5 seeds. Each comparison runs into runs/<out>/ (resumable) and its compare.md and
# compare.json are copied to benchmarks/results/low_budget_<name>.{md,json}, which the docs include.
#   bash benchmarks/low_budget.sh [digits] [mnist] [fashion]      # default: digits
# One thread per run. digits: about 15 minutes on a 2-core machine; mnist and fashion: the SimCLR encoder trains
# once per data set (about 10 minutes), then about 30 minutes each.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=.venv/bin/activelab
STRATEGIES=random,typiclust,probcover,entropy,margin,badge,typiclust_then_margin
mkdir -p benchmarks/results

for name in "${@:-digits}"; do
  case "$name" in
    digits|mnist|fashion) ;;
    *) echo "unknown comparison '$name' (digits, mnist, fashion)" >&2; exit 2 ;;
  esac
  recipe="recipes/lowbudget_$name.yaml"
  $A compare "$recipe" --strategies "$STRATEGIES" --seeds 5 --jobs "${JOBS:-1}" --out "runs/lowbudget-$name" -q
  cp "runs/lowbudget-$name/compare.md" "benchmarks/results/low_budget_$name.md"
  cp "runs/lowbudget-$name/compare.json" "benchmarks/results/low_budget_$name.json"
  echo "wrote benchmarks/results/low_budget_$name.{md,json}"
done
