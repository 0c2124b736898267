#!/usr/bin/env bash
# From a finished training run to the bundled model and every number in the README and model card.
# Usage: scripts/finalize.sh [RUN_DIR] [DATA_DIR]
# The v1 model for the paired comparisons is taken from git (the commit that shipped it).
set -euo pipefail
RUN=${1:-runs/v2}
DATA=${2:-../shared/data/lgg-kaggle_3m}
BRATS=${BRATS:-../shared/data/brats-dev}
PY=${PY:-.venv/bin/python}
V1=${V1:-runs/v1/default.safetensors}
V2=src/tumorseg/models/default.safetensors
SPLIT=docs/results/split.json
mkdir -p docs/results "$(dirname "$V1")"
[ -f "$V1" ] || git show 7e81581:src/tumorseg/models/default.safetensors > "$V1"
# 1. validation-only choices (threshold, small components over three robustness conditions, fp16 check)
$PY scripts/package_model.py --run "$RUN" --data "$DATA" --select-on original,skull_stripped,flair_only --int8 \
    --threads 2 > docs/results/package.json
cp "$RUN/split.json" $SPLIT
cp "$RUN/log.jsonl" docs/results/train_log.jsonl
cp "$RUN/config.json" docs/results/train_config.json
cp "$RUN/curve.png" docs/results/curve.png
$PY research/v2/ablation_table.py docs/results/v2_ablation > docs/results/v2_ablation/README.md
# 2. validation: paired v1/v2, robustness suite; external development cases
$PY scripts/compare_models.py --data "$DATA" --split val --split-file $SPLIT --a v1=$V1 --b v2=$V2 \
    --out docs/results/v1_vs_v2_val
$PY scripts/robustness.py --data "$DATA" --split-file $SPLIT --model $V1 --model $V2 --json docs/results/robustness_val.json
$PY scripts/external_eval.py --data "$BRATS" --model $V1 --json docs/results/external_brats_dev_v1.json
$PY scripts/external_eval.py --data "$BRATS" --model $V2 --json docs/results/external_brats_dev_v2.json
# 3. the test patients, once
$PY scripts/compare_models.py --data "$DATA" --split test --split-file $SPLIT --a v1=$V1 --b v2=$V2 \
    --out docs/results/v1_vs_v2_test
$PY -m tumorseg evaluate --data "$DATA" --split test --threads 2 \
    --json docs/results/test_metrics.json --report docs/results/test_report
# 4. speed, measured alone (nothing else running): every engine, REST, study; the page; the int8 profile; load
$PY benchmarks/inference.py --data "$DATA" --threads 2
$PY benchmarks/page.py --threads 2
$PY benchmarks/profile_int8.py --json benchmarks/results/profile_int8.json
$PY benchmarks/startup.py
$PY benchmarks/load.py --start --clients 8 --requests 500
$PY benchmarks/load.py --start --clients 8 --requests 500 --hostile --out benchmarks/results/load_hostile.json
