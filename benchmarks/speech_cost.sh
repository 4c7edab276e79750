#!/usr/bin/env bash
# Speech recognition (issue 16): labels and labelling cost side by side. recipes/lossprediction_asr.yaml (a
# 1,200-utterance pool of generated spoken commands, 100 initial + 5 x 100, a small Conformer with the
# loss-prediction module) under loss prediction (the per-second head, the recipe's default, and the raw-loss head),
# least confidence, least confidence per second of audio (per_cost) and random, 5 seeds; the task declares each
# item's cost (its seconds of audio), so compare reports WER and CER against labelled utterances and against
# seconds of audio listened to (AUC over both). The comparison runs into runs/speech-cost/ (resumable); its
# compare.md and compare.json are copied to benchmarks/results/speech_cost.{md,json}.
#   JOBS=2 bash benchmarks/speech_cost.sh
# The Spearman correlation of the loss module's prediction with the true CTC loss on the unlabelled pool is
# reported too. One thread per run: about 10 minutes a run on a shared 2-core machine (measured on 3 rounds of one
# run), so about two hours with JOBS=2 (ROUNDS=4 stops at 500 labels). For a quick check
# without touching the published results: SEEDS=1 ROUNDS=1 RUNS=/tmp/sc RESULTS=/tmp/sc-results bash ...
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-benchmarks/results}
overrides=()
[ -n "${ROUNDS:-}" ] && overrides+=("loop.rounds=$ROUNDS")
mkdir -p "$RESULTS"
.venv/bin/activelab compare recipes/lossprediction_asr.yaml ${overrides[@]+"${overrides[@]}"} \
  --strategies lossprediction_raw,lossprediction,least_confidence,least_confidence_per_second,random --seeds "${SEEDS:-5}" \
  --metrics wer,cer,spearman_raw,spearman_norm --jobs "${JOBS:-1}" --out "$RUNS/speech-cost" -q
cp "$RUNS/speech-cost/compare.md" "$RESULTS/speech_cost.md"
cp "$RUNS/speech-cost/compare.json" "$RESULTS/speech_cost.json"
echo "wrote $RESULTS/speech_cost.{md,json}"
