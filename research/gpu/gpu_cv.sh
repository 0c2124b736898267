#!/usr/bin/env bash
# Cross-validation of the 2D and the 2.5D recipe on one GPU (issue 21's tie-breaker): 5 folds of the 76
# train + val patients per arm, and each arm trained once on all 76, twelve runs side by side; then the
# out-of-fold report (each arm's post-processing chosen out of fold, every patient scored under the
# robustness conditions, 2.5D paired against 2D with the decision rule) and the all-76 model of the arm
# the rule picks, packed for the trip back. Test patients are never touched.
#
#   bash research/gpu/gpu_prepare.sh gpujob          # here: the data pack and the encoder weights (35 + 17 MB)
#   OUT=$OUT bash research/gpu/gpu_cv.sh gpujob [EPOCHS] [MAX_MINUTES]   # there, from the repository root
#
# ARMS="A B" picks the two recipes from the table below (default "2d 25d"): B is paired against A under the
# decision rule, and the all-76 model is B's if B wins, else A's. 2d4 / 2d4i are v3d's four-stage decoder
# (without / with the per-image Dice loss of v3e), e.g. ARMS="2d 2d4".
#
# Sizing: each run's learning rate follows a cosine over MAX_MINUTES of wall time (--schedule cosine-time),
# so all twelve end annealed at the limit however fast the GPU shares out; each log says how many epochs of
# 2,400 patches that was (v2's H100 run: ~400 patches/s per run with two side by side). Dry run on a CPU:
# DEVICE=cpu FOLDS=2 SAMPLES=16 PATCH=64 IMAGE=64 BATCH=8 DATA=small-set SPLIT=its-split.json ... gpujob 3 0.3
set -u
PY=${PYTHON:-python3}
PACK=${1:?PACK_DIR}
EPOCHS=${2:-1000}  # an upper bound: the schedule anneals over MAX_MINUTES of wall time (cosine-time)
MAXMIN=${3:-6}
OUT=${OUT:-out}
FOLDS=${FOLDS:-5}
DATA=${DATA:-/tmp/lgg}
RUNS=${RUNS:-/tmp/cv}
SPLIT=${SPLIT:-docs/results/split.json}
DEVICE=${DEVICE:-cuda}
declare -A ARM=([2d]="--context 0" [25d]="--context 1 --context-share 0.15"
  [2d4]="--context 0 --decoder-channels 256,128,64,32"
  [2d4i]="--context 0 --decoder-channels 256,128,64,32 --loss image-dice+bce")
read -r A B <<< "${ARMS:-2d 25d}"
for arm in "$A" "$B"; do [ -n "${ARM[$arm]+x}" ] || { echo "unknown arm '$arm' (known: ${!ARM[*]})" >&2; exit 2; }; done
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=src PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
[ -d "$DATA/kaggle_3m" ] || [ -n "$(ls "$DATA" 2>/dev/null)" ] || $PY research/gpu/gpu_unpack.py "$PACK/PACK.zip" "$DATA"
stamp unpacked
ENC=$PACK/enc_fp16.safetensors
[ -f "$ENC" ] || ENC=none
# v2's recipe (gpu_train.sh, recipe B) with no epoch selection: a fold's held-out patients only measure
RECIPE=(--data "$DATA" --split "$SPLIT" --encoder-weights "$ENC" --device "$DEVICE" --batch-size "${BATCH:-32}"
  --lr 3e-4 --schedule cosine-time --epochs "$EPOCHS" --samples-per-epoch "${SAMPLES:-2400}" --image-size "${IMAGE:-256}"
  --patch-size "${PATCH:-192}" --fg-fraction 0.5 --aug v2 --loss dice+bce --select last --patience 1000
  --max-minutes "$MAXMIN" --threads "${THREADS:-1}")
folds=()
for ((i = 0; i < FOLDS; i++)); do folds+=("$i/$FOLDS"); done
for arm in "$A" "$B"; do
  for f in "${folds[@]}" all; do
    name=${arm}_${f/\//of}  # 2d_0of5 ... 2d_all
    # shellcheck disable=SC2086
    $PY -m tumorseg train "${RECIPE[@]}" ${ARM[$arm]} --fold "$f" --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
  done
done
wait
stamp trained
for f in "$RUNS"/*.log; do echo "$(basename "$f"): $(grep -c '^epoch\|epoch [0-9]*:' "$f") epochs; $(tail -n 1 "$f")"; done
arm_runs() { local a=$1 r=""; for ((i = 0; i < FOLDS; i++)); do r+="$RUNS/${a}_${i}of$FOLDS,"; done; echo "${r%,}"; }
REPORT=cv_${A}_vs_$B
$PY scripts/cv_eval.py --data "$DATA" --arm "$A=$(arm_runs "$A")" --arm "$B=$(arm_runs "$B")" --device "$DEVICE" \
  --engine torch-fp32 --batch 64 --workers 16 --json "$OUT/$REPORT.json" \
  --md "$OUT/$REPORT.md" 2> "$RUNS/cv_eval.log"
rc=$?
tail -n 40 "$RUNS/cv_eval.log"
[ $rc = 0 ] || { ( cd "$RUNS" && tar czf "$OUT/cv_runs.tgz" ./*.log ./*/log.jsonl 2>/dev/null ); stamp "cv_eval failed"; exit 1; }
stamp evaluated
# the all-76 model of the recipe the rule picks, fp16, in parts under the 16 MiB return limit
$PY - "$OUT/$REPORT.json" "$RUNS" "$OUT" "$A" "$B" <<'PY'
import json, sys
from pathlib import Path
import torch
from tumorseg.nn.serialise import load_model, save_model
report, runs, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
r = json.loads(report.read_text())
arm = sys.argv[5] if r["comparison"]["decision"]["b_beats_a"] else sys.argv[4]
net, meta = load_model(runs / f"{arm}_all" / "best.safetensors")
post = r["arms"][arm]["postprocess"]  # chosen out of fold: the all-76 model has no validation of its own
meta.update(threshold=post["threshold"], min_component_pixels=post["min_component_pixels"],
            hysteresis_low=post["hysteresis_low"], tta=post["tta"])
meta.setdefault("training", {})["cross_validation"] = {"report": report.name, "arm": arm, "postprocess": post}
save_model(net, out / "all76_fp16.safetensors", meta, dtype=torch.float16)
print("chosen arm", arm)
PY
( cd "$RUNS" && tar czf "$OUT/cv_runs.tgz" ./*.log ./*/log.jsonl ./*/config.json ./*/split.json 2>/dev/null )
( cd "$OUT" && split -b 15M all76_fp16.safetensors all76_fp16.part_ && rm all76_fp16.safetensors )
ls -la "$OUT"
stamp done
