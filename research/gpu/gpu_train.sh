#!/usr/bin/env bash
# Model v2 ablation on one GPU: three recipes side by side, equal budgets, then the robustness
# suite on the validation patients, then the chosen run packed for the trip back.
#
#   OUT=out-folder bash research/gpu/gpu_train.sh PACK_DIR [EPOCHS] [MAX_MINUTES]
#
# PACK_DIR holds PACK.zip (../shared/gpu/pack.py), unpack.py and enc_fp16.safetensors (the MSRA
# stem-layer3 ImageNet weights as fp16 safetensors). Runs from source: PYTHONPATH=src.
# The choice among the v2 recipes is made on validation patients only: the mean pooled Dice over
# the original, skull-stripped and FLAIR-only conditions of the robustness suite.
set -u
PY=${PYTHON:-python3}
PACK=${1:?PACK_DIR}
EPOCHS=${2:-30}
MAXMIN=${3:-5.5}
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
DATA=${DATA:-/tmp/lgg}
RUNS=${RUNS:-/tmp/runs}
SPLIT=${SPLIT:-docs/results/split.json}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
[ -d "$DATA/kaggle_3m" ] || $PY research/gpu/gpu_unpack.py "$PACK/PACK.zip" "$DATA"
stamp unpacked
COMMON="--data $DATA --split $SPLIT --encoder-weights $PACK/enc_fp16.safetensors --device ${DEVICE:-cuda}
  --batch-size ${BATCH:-32} --lr 3e-4 --schedule cosine --epochs $EPOCHS --samples-per-epoch ${SAMPLES:-2400}
  --patch-size 256 --fg-fraction 0.5
  --patience 1000 --max-minutes $MAXMIN --threads ${THREADS:-4}"
declare -A RECIPE=(
  [A_v1aug_dicebce]="--aug v1 --loss dice+bce"
  [B_v2aug_dicebce]="--aug v2 --loss dice+bce"
  [C_v2aug_tverskybce]="--aug v2 --loss tversky+bce"
)
for name in "${!RECIPE[@]}"; do
  [[ "$name" =~ ${ONLY:-.} ]] || { unset "RECIPE[$name]"; continue; }
  $PY -m tumorseg train $COMMON ${RECIPE[$name]} --out "$RUNS/$name" > "$OUT/train_$name.log" 2>&1 &
done
wait
stamp trained
models=()
for name in "${!RECIPE[@]}"; do [ -f "$RUNS/$name/best.safetensors" ] && models+=(--model "$RUNS/$name/best.safetensors"); done
timeout 120 $PY scripts/robustness.py --data "$DATA" --split-file $SPLIT "${models[@]}" \
  --conditions original,skull_stripped,flair_only,flair_only_stripped,zoom_0.75 --json "$RUNS/robust_val.json" \
  > "$RUNS/robust_val.log" 2>&1
stamp robustness
$PY - "$RUNS" "$OUT" <<'PY'
import json, sys
from pathlib import Path
import torch
from tumorseg.nn.serialise import load_model, save_model
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
score = {}
try:
    r = json.loads((runs / "robust_val.json").read_text())["models"]
    for m, v in r.items():
        score[Path(m).parent.name] = sum(v[c]["dice"] for c in ("original", "skull_stripped", "flair_only")) / 3
except Exception as exc:
    print("robustness suite missing, choosing on validation Dice alone:", exc)
    for d in runs.iterdir():
        if (d / "log.jsonl").is_file():
            score[d.name] = max(json.loads(l)["val_dice"] for l in (d / "log.jsonl").read_text().splitlines() if l)
v2 = {k: s for k, s in score.items() if not k.startswith("A_")} or score
best = max(v2, key=v2.get)
print("selection scores", json.dumps(score), "->", best)
net, meta = load_model(runs / best / "best.safetensors")
save_model(net, out / "best_fp16.safetensors", meta, dtype=torch.float16)
(out / "chosen.txt").write_text(best + "\n" + json.dumps(score) + "\n")
PY
( cd "$RUNS" && tar czf "$OUT/runs_logs.tgz" */log.jsonl */config.json */split.json */curve.png robust_val.json robust_val.log 2>/dev/null )
cp "$OUT"/train_*.log /tmp/ 2>/dev/null; tar czf "$OUT/train_logs.tgz" -C "$OUT" $(cd "$OUT" && ls train_*.log) && rm -f "$OUT"/train_*.log
( cd "$OUT" && split -b 15M best_fp16.safetensors best_fp16.part_ && rm best_fp16.safetensors )
ls -la "$OUT"
stamp done
