#!/usr/bin/env bash
# Model v5 (issue 43): v2 fine-tuned on the LGG training patients (0.7) and ten brats-train high-grade cases (0.3),
# then averaged with v2 (alpha 0.5): the averaged model is the one candidate. Steps, one at a time:
#   bash research/v5/model_v5.sh train      # background, 1 thread, resumable (tumorseg train --resume RUN)
#   bash research/v5/model_v5.sh average    # theta = 0.5 * theta_v2 + 0.5 * theta_finetuned -> runs/v5_avg (a run folder;
#                                           # research/v3/soup.py --start-of: the run's start, v2, joins it, WiSE-FT)
#   bash research/v5/model_v5.sh package    # threshold / components on the 14 LGG validation patients; int8 twin
#   bash research/v5/model_v5.sh select     # the rule (research/v5/README.md), v2 vs v5, int8 both, this CPU recorded
#   bash research/v5/model_v5.sh endpoint   # after the decision only: the fine-tuned end point, for the record
# Written 2026-12-06 before training started (the pre-registration is research/v5/README.md).
set -eu
PY=${PYTHON:-.venv/bin/python}
LGG=${LGG:-../shared/data/lgg-kaggle_3m}
BRATS=${BRATS:-../shared/data/brats-train}
RUN=${RUN:-runs/v5_run}
AVG=${AVG:-runs/v5_avg}
OUT=${OUT:-runs/v5}
V2=src/tumorseg/models/default.safetensors
V2Q=src/tumorseg/models/default-int8.onnx
HELD=Brats18_TCIA05_396_1,Brats18_CBICA_ATV_1
mkdir -p "$OUT"
case "${1:?STEP}" in
  train)
    $PY -m tumorseg train --recipe recipes/v5.json --data "$LGG=0.7" --data "$BRATS=0.3" \
      --max-minutes ${MINUTES:-75} --out "$RUN" ;;
  average)
    $PY research/v3/soup.py --run "$RUN" --start-of "$RUN" --out "$AVG" ;;
  package)
    $PY scripts/package_model.py --run "$AVG" --data "$LGG" --split-file docs/results/split.json \
      --out $OUT/default.safetensors --int8 --threads ${PACK_THREADS:-2} \
      --select-on original,skull_stripped,flair_only --tta none --engine ${PACK_ENGINE:-torch-bf16} ;;
  score-v2)  # v2's scores into the cache while the fine-tune trains (1 thread)
    OMP_NUM_THREADS=1 $PY research/v5/decide.py --base v2=$V2Q --candidate v5=$OUT/default-int8.onnx --lgg "$LGG" \
      --lgg-split docs/results/split.json --brats-dev ../shared/data/brats-dev --brats-held "$BRATS" --held $HELD \
      --cache runs/v5_scores --only base ;;
  select)
    $PY research/v5/decide.py --base v2=$V2Q --candidate v5=$OUT/default-int8.onnx --lgg "$LGG" \
      --lgg-split docs/results/split.json --brats-dev ../shared/data/brats-dev --brats-held "$BRATS" --held $HELD \
      --json research/v5/selection.json --cache runs/v5_scores ;;
  endpoint)
    RUN_E=${RUN_E:-runs/v5_end}; mkdir -p $RUN_E
    $PY scripts/package_model.py --run "$RUN" --data "$LGG" --split-file docs/results/split.json \
      --out $RUN_E/pkg/default.safetensors --int8 --threads ${PACK_THREADS:-2} \
      --select-on original,skull_stripped,flair_only --tta none --engine ${PACK_ENGINE:-torch-bf16}
    # after the decision the bundled file is v5: the end point is compared with it (and v2's scores are in selection.json)
    $PY research/v5/decide.py --base v5=$V2Q --candidate v5-endpoint=$RUN_E/pkg/default-int8.onnx --lgg "$LGG" \
      --lgg-split docs/results/split.json --brats-dev ../shared/data/brats-dev --brats-held "$BRATS" --held $HELD \
      --json research/v5/endpoint.json --cache runs/v5_scores ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
