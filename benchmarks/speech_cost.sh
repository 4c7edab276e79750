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
# reported too. One thread per run: about 100 minutes for the 25 runs with JOBS=2 on a 2-core machine. For a quick
# check without touching the published results: SEEDS=1 ROUNDS=1 RUNS=/tmp/sc RESULTS=/tmp/sc-results bash ...
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS. The cost plot (WER against seconds of audio) is
# copied to docs/img/speech_cost.png when RESULTS is the published folder.
source "$(dirname "$0")/lib.sh"
compare_publish speech-cost speech_cost recipes/lossprediction_asr.yaml \
  --strategies lossprediction_raw,lossprediction,least_confidence,least_confidence_per_second,random \
  --metrics wer,cer,spearman_raw,spearman_norm
publish_plot speech-cost speech_cost
