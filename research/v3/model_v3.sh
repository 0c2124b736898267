#!/usr/bin/env bash
# Model v3 (2.5D) on this machine's CPU: the fine-tune from v2, its packaging (threshold, component size,
# 3D hysteresis and test-time views chosen on validation), and every comparison with v2 the model card
# reports. Steps can be run one at a time: bash research/v3/model_v3.sh STEP (train | train-b | train-c | train-d | train-e | train-d2 | soup | wise | ensemble | package | val | arms | loss | seed | decoder | test | external | pictures).
#
#   DATA=../shared/data/lgg-kaggle_3m RUN=runs/v3_ctx1 OUT=runs/v3 bash research/v3/model_v3.sh train
#   RUN=runs/v3b_ctx OUT=runs/v3b TAG=v3b bash research/v3/model_v3.sh train-b   # the second attempt; then
#   package, val, test, external with the same RUN/OUT/TAG
#   RUN=runs/v3c_2d OUT=runs/v3c TAG=v3c bash research/v3/model_v3.sh train-c   # the third: the same without context
#   RUN=runs/v3d_half OUT=runs/v3d TAG=v3d bash research/v3/model_v3.sh train-d # the fourth: v3c with a four-stage decoder
#   RUN=runs/v3e_run OUT=runs/v3e TAG=v3e bash research/v3/model_v3.sh train-e   # the fifth: v3d with the per-image Dice loss
#   RUN=runs/v3d_seed1 OUT=runs/v3d_s1 TAG=v3d_seed1 bash research/v3/model_v3.sh train-d2  # v3d, another seed: the noise
#     yardstick; then package, and seed (paired with v3d on validation)
#   RUN=runs/v3f_soup OUT=runs/v3f TAG=v3f bash research/v3/model_v3.sh soup     # the sixth: v3d and v3e averaged
#   RUN=runs/v3g_wise OUT=runs/v3g TAG=v3g bash research/v3/model_v3.sh wise     # the seventh: halfway from v2 to v3b
#   RUN=runs/v3h_ens OUT=runs/v3h TAG=v3h bash research/v3/model_v3.sh ensemble  # the eighth: v2 and v3d, logits averaged;
#     then PACK_TTA=none … package
#
# Decision rule (written before the results): v3 replaces the bundled v2 only if, on the validation
# patients, its paired per-patient 3D Dice minus v2's is positive on the original slices AND on the
# robustness suite's FLAIR-only conditions (flair_only, flair_only_stripped); the test patients and
# brats-dev are looked at only after that decision, for the model card.
# Reading of "positive", written down before v3c's results (2026-11-30): the mean paired difference on the
# original slices must be at least +0.005 (v3b's +0.000002 was read as a tie: it rounds to zero and more
# patients were worse than better), and above zero on both FLAIR-only conditions. Intervals are reported,
# not required to exclude zero: 14 patients cannot resolve differences of this size.
set -eu
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/lgg-kaggle_3m}
RUN=${RUN:-runs/v3_ctx1}
OUT=${OUT:-runs/v3}
TAG=${TAG:-v3}  # the candidate's name in the result files: v3 (attempt 1), v3b (2), v3c (3)
SPLIT=docs/results/split.json
V2=src/tumorseg/models/default.safetensors
V3=$OUT/default.safetensors
# the comparisons run the engine each model ships with and runs by default: its int8 twin
V2Q=src/tumorseg/models/default-int8.onnx
V3Q=$OUT/default-int8.onnx
mkdir -p "$OUT"
# v3b's recipe apart from the input: train-b (2.5D) and train-c (2D) share it, so the two arms differ in the context only
RECIPE_B=(--data "$DATA" --split $SPLIT --init-model $V2 --encoder-weights ../shared/weights/resnet50_imagenet_msra_stem-layer3.pth
  --select patients --aug v2 --loss dice+bce --lr 1e-4 --schedule cosine --epochs 14 --samples-per-epoch 1600
  --batch-size 8 --patch-size 192 --patience 1000 --max-minutes 110 --threads 1)
# v3d's: v3c's recipe with a four-stage decoder, the fresh head learning 30x faster (train-d and train-e share it)
RECIPE_D=("${RECIPE_B[@]}" --context 0 --decoder-channels 256,128,64,32 --fresh-lr-mult 30)
# two int8 models paired per patient on the validation patients under the robustness suite's conditions
paired_val() {
  $PY scripts/robustness.py --data "$DATA" --split-file $SPLIT --part val --engine onnx-int8 --model "$1" --model "$2" \
    --conditions original,skull_stripped,flair_only,flair_only_stripped --json "$3"
}
case "${1:?STEP}" in
  train)  # one background run of ~95 min on 1 thread (AVX-512 bf16 CPU: ~4.6 images/s at 192 px)
    $PY -m tumorseg train --data "$DATA" --split $SPLIT --init-model $V2 --encoder-weights ../shared/weights/resnet50_imagenet_msra_stem-layer3.pth \
      --context 1 --aug v2 --loss dice+bce --lr 1e-4 --schedule cosine --epochs 14 --samples-per-epoch 1600 \
      --batch-size 8 --patch-size 192 --patience 1000 --max-minutes 95 --threads 1 --out "$RUN" ;;
  train-b)  # attempt 2 (v3b): the context must be used. Neighbour weights start as 0.15 of FLAIR's each (a lone
    # image still gets v2's answer) and learn 50x faster (conv1's weights are ~4 in size: at 1e-4 Adam barely
    # moves them); best epoch by the per-patient mean on the original AND FLAIR-only validation slices.
    # ~105 min on 1 thread (AVX-512 bf16 CPU).
    $PY -m tumorseg train "${RECIPE_B[@]}" --context 1 --context-share 0.15 --context-lr-mult 50 --out "$RUN" ;;
  train-c)  # attempt 3 (v3c), the ablation's other arm: v3b's recipe without the context (3 channels, 2D), so
    # 2D vs 2.5D differ in nothing else. ~105 min on 1 thread (AVX-512 bf16 CPU).
    $PY -m tumorseg train "${RECIPE_B[@]}" --context 0 --out "$RUN" ;;
  train-d)  # v3d, the speed question (issue 21's optional half): v3c's recipe with a four-stage decoder (no convolution
    # at full resolution; the logits upsampled). Decoder blocks 1-4 start from v2, the head fresh and learning 30x
    # faster (at 1e-4 alone it had reached a loss of 1.29 after 76 steps, v3c 0.15: restarted so). Read against v3c
    # (the same recipe with five stages) for what the speed costs, and against v2 by the rule above; written
    # 2026-12-01 before any v3d result. ~90 min on 1 thread (AVX-512 bf16 CPU).
    $PY -m tumorseg train "${RECIPE_D[@]}" --out "$RUN" ;;
  train-e)  # v3e, aimed at the faint ends themselves: v3d's recipe with one change, the loss. Batch Dice weighs a
    # patch by its tumour area, so the faint end of a lesion (a few hundred pixels) hardly counts beside a full
    # cross-section; image-dice+bce averages Dice over the patches that hold tumour (each counts the same) and
    # leaves tumour-free patches to BCE. Read against v2 by the rule above (unchanged) and against v3d (the loss
    # alone differs). Written 2026-12-01 before any v3e result. This is the fifth candidate read on the same 14
    # validation patients: a pass would be a fifth look, and the card says so. Capped at 100 min (1 thread).
    $PY -m tumorseg train "${RECIPE_D[@]}" --loss image-dice+bce --max-minutes 100 --out "$RUN" ;;
  train-d2)  # v3d again with another seed (fresh head, patch sampling, augmentation): not a candidate but a yardstick.
    # Read against v3d on the validation patients, it says how far two runs of ONE recipe differ (seed noise),
    # the scale against which the candidates' differences from v2 (+0.003 to -0.006) must be read. Written
    # 2026-12-01 before the run. ~100 min on 1 thread (AVX-512 bf16 CPU).
    $PY -m tumorseg train "${RECIPE_D[@]}" --seed 1 --max-minutes 100 --out "$RUN" ;;
  soup)  # v3f, the sixth candidate, no training: the uniform average of the weights of v3d's and v3e's selected
    # checkpoints (a "model soup", Wortsman et al. 2022: fine-tunes of one start point average into one model
    # that often beats each). Same architecture and start (v2); the losses differ, so the soup sits between batch
    # Dice (v3d, +0.003 on the original slices, FLAIR-only +0.05/+0.02) and per-image Dice (v3e, the faint end of
    # HT_7680 found, false alarms doubled). Written 2026-12-01 before any soup result; then package, val (the same
    # rule as above, its sixth look at the 14 validation patients), and test/external after the decision.
    $PY research/v3/soup.py --run ${V3D_RUN:-runs/v3d_half} --run ${V3E_RUN:-runs/v3e_run} --out "$RUN" ;;
  wise)  # v3g, the seventh candidate, no training: the halfway point between v3b's start and v3b's selected
    # checkpoint, WiSE-FT (Wortsman et al. 2022): the weight average of a start point and its fine-tune often keeps
    # the start's accuracy where the start is strong and the fine-tune's gains under shift. Here the start is v2
    # widened to 2.5D as v3b's run widened it (neighbours at 0.15 of FLAIR's weights: a lone image gets v2's answer),
    # strong on the original slices (its recipe, epoch and threshold were chosen on these 14 patients); v3b gains
    # +0.05/+0.02 FLAIR-only and ties on the original slices. Only v3b and v3c have v2's architecture (v3d-v3f start
    # from a fresh head, whose start is no working model); v3b, not v3c, which lost HT_7680 (-0.45). One weight,
    # 0.5, no sweep (a sweep would be chosen on the same patients). Written 2026-12-01 before any v3g result; then
    # package, val (the rule above, its seventh look at the 14 validation patients), test/external after it.
    $PY research/v3/soup.py --run ${V3B_RUN:-runs/v3b_ctx} --start-of ${V3B_RUN:-runs/v3b_ctx} --out "$RUN" ;;
  ensemble)  # v3h, the eighth candidate, no training: v2 and v3d in one file, the mean of their logits (an ensemble,
    # model.logit_mean_of_files). Every candidate so far gained on FLAIR-only input (+0.05 to +0.09, ten to twenty
    # times the seed noise) and none on the original slices, where v2 is strong (and flattered: its recipe, epoch
    # and threshold were chosen on these patients); v3g, the weight-space halfway point, tied (-0.000). An ensemble
    # keeps each member's weights, so it needs no common start (v3d's four-stage decoder and fresh head cannot be
    # souped with v2) and usually beats each member. v3d, not v3e or v3f: the best candidate on the original
    # validation slices (+0.003), a choice made on the validation patients (said here and in the card). Two forward
    # passes per slice, as flip TTA costs, so it is packaged without TTA (PACK_TTA=none): the default stays within
    # 2x v2's time; the file holds two networks (~118 MB fp16, ~60 MB int8). Written 2026-12-01 before any v3h
    # result; then PACK_TTA=none … package, val (the rule above, its eighth look), test/external after it.
    $PY research/v3/soup.py --run ${V3D_RUN:-runs/v3d_half} --model $V2 --combine logits --out "$RUN" ;;
  package)
    $PY scripts/package_model.py --run "$RUN" --data "$DATA" --out "$V3" --int8 --threads ${PACK_THREADS:-2} \
      --select-on original,skull_stripped,flair_only --tta ${PACK_TTA:-none,hflip} ;;
  val)
    $PY scripts/compare_models.py --data "$DATA" --split val --split-file $SPLIT --engine onnx-int8 \
      --a v2=$V2Q --b $TAG=$V3Q --out research/v3/results/v2_vs_${TAG}_val
    paired_val $V2Q $V3Q research/v3/results/robustness_v2_${TAG}_val.json
    $PY research/v3/context_ablation.py --data "$DATA" --split-file $SPLIT --engine onnx-int8 \
      --model v2=$V2Q --model $TAG=$V3Q --out research/v3/results/${TAG}_ablation_val ;;
  arms)  # the matched ablation: 2.5D (v3b) vs 2D (v3c), one recipe, paired on the validation patients
    paired_val ${V3B:-runs/v3b}/default-int8.onnx ${V3C:-runs/v3c}/default-int8.onnx research/v3/results/robustness_v3b_v3c_val.json ;;
  loss|seed)  # v3d against TAG, paired on the validation patients: loss, v3e (one recipe; batch Dice vs per-image
    # Dice); seed, v3d's seed-1 replicate (train-d2; TAG=v3d_seed1): how far one recipe's two runs differ
    paired_val ${V3D:-runs/v3d}/default-int8.onnx $V3Q research/v3/results/robustness_v3d_${TAG}_val.json ;;
  decoder)  # v3d against v3c (one recipe, five vs four decoder stages), paired on the validation patients, and the
    # speed of v2, v3c and v3d side by side (eager fp32 and int8 per slice, 2 threads)
    paired_val ${V3C:-runs/v3c}/default-int8.onnx $V3Q research/v3/results/robustness_v3c_${TAG}_val.json
    $PY benchmarks/decoder_speed.py --model v2=src/tumorseg/models --model v3c=${V3C:-runs/v3c} --model $TAG=$OUT \
      --threads 2 --json benchmarks/results/decoder_speed.json ;;
  test)
    $PY scripts/compare_models.py --data "$DATA" --split test --split-file $SPLIT --engine onnx-int8 \
      --a v2=$V2Q --b $TAG=$V3Q --out research/v3/results/v2_vs_${TAG}_test ;;
  external)
    $PY scripts/external_eval.py --data ../shared/data/brats-dev --model $V3Q --engine onnx-int8 \
      --json research/v3/results/external_brats_dev_${TAG}.json ;;
  pictures)
    $PY research/v3/faint_ends.py --data "$DATA" --split-file $SPLIT --part test --engine onnx-int8 --a v2=$V2Q --b $TAG=$V3Q \
      --out research/v3/results/faint_ends_test_${TAG}.png ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
