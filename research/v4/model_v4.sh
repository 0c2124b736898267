#!/usr/bin/env bash
# Model v4 (issue 35): v2 fine-tuned on the LGG training patients plus ten BraTS 2018 high-grade gliomas
# (brats-train), with sequence dropout to FLAIR alone as a first-class condition. Steps, one at a time:
#   bash research/v4/model_v4.sh train      # background, 1 thread, resumable (--resume --max-minutes N)
#   bash research/v4/model_v4.sh package    # threshold / components / TTA on the LGG validation patients; int8
#   bash research/v4/model_v4.sh select     # the decision rule below, v2 vs v4, int8 both
#
# Written 2026-12-03 before any v4 result (commit before the run's first epoch).
#
# Recipe: start from the bundled v2 (2D, five-stage decoder: same network, same speed); sources
# lgg-kaggle_3m (weight 0.5) and brats-train (weight 0.5: half the patches from high-grade cases; the
# NIfTI cases read as `tumorseg predict` reads them); aug v2 plus --flair-only 0.25 (about 31 % of patches
# FLAIR-only in all); dice+bce; Adam 1e-4 annealed by cosine over the run's wall-time budget (100 min on
# 1 thread: an AVX2 CPU trains fp32; 80 at first, raised to 100 three minutes into the run, before its first epoch ended); batch 8 of 192 px patches; no validation part: the last epoch is kept
# (the LGG validation patients never enter training; they are half of the selection set).
# Split: research/v4/split_v4.json = docs/results/split.json's 62 LGG training patients + 10 brats-train
# cases; Brats18_TCIA05_396_1 (three sequences) and Brats18_CBICA_ATV_1 (FLAIR only) held out, drawn with
# random.Random(35) before training.
#
# Packaging as v2's: threshold, small components and hysteresis chosen on the 14 LGG validation patients
# (original, skull-stripped and FLAIR-only slices); no test-time views (hflip would double the time per slice,
# and the issue holds v4 within 10 % of v2's int8 speed); the int8 twin must pass its check.
#
# Decision rule (the issue's, fixed before any result): v4 replaces v2 when, paired per patient with v2
# (int8 both): (1) the mean per-patient 3D Dice on the original slices of the 28 LGG validation + test
# patients is >= -0.005; (2) the same on FLAIR-only slices is > 0; (3) the whole-tumour 3D Dice over the
# high-grade cases (brats-dev's six + the two held-out brats-train cases, each with its sequences and with
# FLAIR alone: 16 paired values) has a mean difference > 0. 95 % bootstrap intervals reported, not required.
# One candidate is compared (v4).
set -eu
PY=${PYTHON:-.venv/bin/python}
LGG=${LGG:-../shared/data/lgg-kaggle_3m}
BRATS=${BRATS:-../shared/data/brats-train}
RUN=${RUN:-runs/v4_run}
OUT=${OUT:-runs/v4}
SPLIT=research/v4/split_v4.json
V2=src/tumorseg/models/default.safetensors
V2Q=src/tumorseg/models/default-int8.onnx
V4Q=$OUT/default-int8.onnx
mkdir -p "$OUT"
case "${1:?STEP}" in
  train)
    $PY -m tumorseg train --recipe recipes/v4.json --data "$LGG=0.5" --data "$BRATS=0.5" --max-minutes ${MINUTES:-100} --out "$RUN" ;;
  package)
    $PY scripts/package_model.py --run "$RUN" --data "$LGG" --split-file docs/results/split.json --out $OUT/default.safetensors \
      --int8 --threads ${PACK_THREADS:-2} --select-on original,skull_stripped,flair_only --tta none --engine onnx-fp32 ;;
  select)
    $PY research/v4/decide.py --v2 $V2Q --v4 $V4Q --lgg "$LGG" --lgg-split docs/results/split.json \
      --brats-dev ../shared/data/brats-dev --brats-held "$BRATS" --held Brats18_TCIA05_396_1,Brats18_CBICA_ATV_1 \
      --json research/v4/selection.json --cache runs/v4_scores ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
