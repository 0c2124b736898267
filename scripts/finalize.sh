#!/usr/bin/env bash
# From a finished training run to the bundled model, its test evaluation and the benchmarks.
# Usage: scripts/finalize.sh [RUN_DIR] [DATA_DIR]
set -euo pipefail
RUN=${1:-runs/main}
DATA=${2:-../shared/data/lgg-kaggle_3m}
PY=${PY:-.venv/bin/python}
mkdir -p docs/results
# 1. validation-only choices (threshold, small components, fp16 check, int8 check) -> bundled model
$PY scripts/package_model.py --run "$RUN" --data "$DATA" --int8 --threads 2 > docs/results/package.json
cp "$RUN/split.json" docs/results/split.json
cp "$RUN/log.jsonl" docs/results/train_log.jsonl
cp "$RUN/config.json" docs/results/train_config.json
cp "$RUN/curve.png" docs/results/curve.png
# 2. the test patients, once
$PY -m tumorseg evaluate --data "$DATA" --split test --threads 2 \
    --json docs/results/test_metrics.json --report docs/results/test_report
