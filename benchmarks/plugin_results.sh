#!/usr/bin/env bash
# The plugin pages' comparisons (issue 16, item 7), over 5 seeds, with their outputs committed; each page includes
# its output.
#   mnist        CEAL on MNIST (recipes/ceal_mnist.yaml: ceal, entropy, random; accuracy and CEAL's pseudo-labels)
#   nmt          curriculum AL for translation (recipes/curriculum_nmt.yaml: curriculum_al, uncertainty,
#                uncertainty_curriculum, random, random_curriculum; BLEU, chrF, steps to BLEU 50)
#   detection    MI-AOD (recipes/miaod_digits.yaml: miaod, random, entropy, no_stages; mAP@0.5 and COCO mAP)
#   restoration  on-demand learning (recipes/ondemand_denoise.yaml: ondemand, rigid, fixated_1..5; PSNR per level)
# Each comparison runs into runs/plugin-<name>/ (resumable: the same command continues an interrupted one); its
# compare.md and compare.json are copied to benchmarks/results/plugin_<name>.{md,json} (detection's cost plot to
# docs/img/detection_cost.png).
#   JOBS=2 bash benchmarks/plugin_results.sh [mnist] [nmt] [detection] [restoration]    # default: all four
# One thread per run; JOBS=N runs N runs at a time (compare --jobs). With JOBS=2 on a 2-core machine, 5 seeds took
# about 20 minutes (mnist), 45 (nmt), 60 (restoration) and 70 (detection).
# For a quick check, without touching the published results:
#   SEEDS=1 ROUNDS=1 RUNS=/tmp/pr-runs RESULTS=/tmp/pr-results bash benchmarks/plugin_results.sh nmt
source "$(dirname "$0")/lib.sh"
comparisons "mnist nmt detection restoration" "mnist nmt detection restoration" "$@"
for one in "${COMPARISONS[@]}"; do
  case "$one" in
    mnist) compare_publish plugin-mnist plugin_mnist recipes/ceal_mnist.yaml --strategies ceal,entropy,random \
             --metrics accuracy,n_pseudo,pseudo_accuracy ;;
    nmt) compare_publish plugin-nmt plugin_nmt recipes/curriculum_nmt.yaml \
           --strategies curriculum_al,uncertainty,uncertainty_curriculum,random,random_curriculum \
           --metrics bleu,chrf,steps_to_bleu ;;
    detection) compare_publish plugin-detection plugin_detection recipes/miaod_digits.yaml \
                 --strategies miaod,random,entropy,no_stages --metrics mAP50,mAP
               publish_plot plugin-detection detection_cost ;;   # mAP@0.5 against boxes labelled
    restoration) compare_publish plugin-restoration plugin_restoration recipes/ondemand_denoise.yaml \
                   --strategies ondemand,rigid,fixated_1,fixated_2,fixated_3,fixated_4,fixated_5 \
                   --metrics psnr_mean,psnr_level1,psnr_level2,psnr_level3,psnr_level4,psnr_level5,ssim_mean ;;
  esac
done
