#!/usr/bin/env bash
# Transfer without a download (issue 17): what a backbone pretrained here on Fashion-MNIST does to label efficiency
# on MNIST. Pretrains a torchvision ResNet-18 on 6,000 labelled Fashion-MNIST images (2 epochs) into
# runs/backbones/resnet18_fashion.pth (skipped when that file exists), then runs recipes/transfer_mnist.yaml under
# six strategies, 5 seeds: the same ResNet-18 from scratch, from the pretrained weights with every weight
# fine-tuned, or as a linear probe on the frozen pretrained body, each with random and with margin sampling. The
# comparison runs into runs/transfer-mnist/ (resumable: run the script again after an interruption) and its
# compare.md and compare.json are copied to benchmarks/results/transfer_mnist.{md,json}, which the docs include
# (the .md with the pretraining's output appended).
#   bash benchmarks/transfer.sh
# One thread (OMP_NUM_THREADS=1): about 4 CPU minutes of pretraining, 20 fine-tuning runs of 1 to 2 CPU minutes
# each and 10 probe runs of under half a minute (the measured time is in docs/plugins/ceal-classification.md; wall
# time is longer on a busy machine).
# Knobs (benchmarks/lib.sh): JOBS, SEEDS, ROUNDS, RUNS, RESULTS.
source "$(dirname "$0")/lib.sh"
WEIGHTS=runs/backbones/resnet18_fashion.pth      # the path recipes/transfer_mnist.yaml reads
STRATEGIES=scratch_random,scratch_margin,pretrained_random,pretrained_margin,probe_random,probe_margin

if [ ! -f "$WEIGHTS" ]; then
  mkdir -p "$(dirname "$WEIGHTS")"
  "$A" pretrain --data fashion_mnist --arch resnet18 --max-train 6000 --epochs 2 --seed 0 --out "$WEIGHTS" -q \
    | tee runs/backbones/pretrain.txt
fi
compare_publish transfer-mnist transfer_mnist recipes/transfer_mnist.yaml --strategies "$STRATEGIES" \
  --target-strategy scratch_random
# the pretraining's own numbers (its command's output), below the table
{
  echo
  echo "## The pretrained backbone"
  echo
  echo "Made by: \`activelab pretrain --data fashion_mnist --arch resnet18 --max-train 6000 --epochs 2 --seed 0 --out $WEIGHTS\`"
  echo
  if [ -f runs/backbones/pretrain.txt ]; then sed 's/^/    /' runs/backbones/pretrain.txt; else echo "(its output was not kept)"; fi
} >> "$RESULTS/transfer_mnist.md"
