# Shared by the benchmark scripts that run `activelab compare` (sourced, not run): the repository root as the working
# folder, one thread per run, and the knobs every script takes from the environment:
#   JOBS     runs at a time (compare --jobs; default 1)        SEEDS    seeds per strategy (default 5)
#   ROUNDS   loop.rounds for a quick check (default: the recipe's)
#   RUNS     where the run folders go (default runs)           RESULTS  where the outputs are copied (default
#                                                                       benchmarks/results)
# A quick check that leaves the published results alone:
#   SEEDS=1 ROUNDS=1 RUNS=/tmp/check-runs RESULTS=/tmp/check-results bash benchmarks/<script>.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=${ACTIVELAB:-.venv/bin/activelab}        # ACTIVELAB: another command in its place (the scripts' tests use a stub)
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-benchmarks/results}
SEEDS=${SEEDS:-5}
JOBS=${JOBS:-1}
ROUND_OVERRIDES=()
[ -n "${ROUNDS:-}" ] && ROUND_OVERRIDES+=("loop.rounds=$ROUNDS")
mkdir -p "$RESULTS"

# compare_publish RUN_FOLDER RESULT_NAME RECIPE [overrides and compare options ...]
#   activelab compare RECIPE into $RUNS/RUN_FOLDER (resumable: the same command continues an interrupted
#   comparison), then its compare.md and compare.json copied to $RESULTS/RESULT_NAME.{md,json}.
compare_publish() {
  local folder=$1 name=$2 recipe=$3
  shift 3
  "$A" compare "$recipe" ${ROUND_OVERRIDES[@]+"${ROUND_OVERRIDES[@]}"} "$@" --seeds "$SEEDS" --jobs "$JOBS" \
    --out "$RUNS/$folder" -q
  cp "$RUNS/$folder/compare.md" "$RESULTS/$name.md"
  cp "$RUNS/$folder/compare.json" "$RESULTS/$name.json"
  echo "wrote $RESULTS/$name.{md,json}"
}

# publish_plot RUN_FOLDER NAME: a comparison's cost plot ($RUNS/RUN_FOLDER/compare_cost.png) copied to
#   docs/img/NAME.png for the docs, only when RESULTS is the published folder (a quick check leaves the docs alone).
publish_plot() {
  if [ "$RESULTS" = benchmarks/results ] && [ -f "$RUNS/$1/compare_cost.png" ]; then
    cp "$RUNS/$1/compare_cost.png" "docs/img/$2.png"
    echo "wrote docs/img/$2.png"
  fi
}

# comparisons KNOWN DEFAULT [NAME ...]: the names a script was given (or DEFAULT's) into the array COMPARISONS,
# each checked against KNOWN before anything runs: an unknown one is a one-line error (exit 2).
comparisons() {
  local known=$1 default=$2 one
  shift 2
  read -r -a COMPARISONS <<< "${*:-$default}"
  for one in "${COMPARISONS[@]}"; do
    case " $known " in
      *" $one "*) ;;
      *) echo "unknown comparison '$one' (${known// /, })" >&2; exit 2 ;;
    esac
  done
}
