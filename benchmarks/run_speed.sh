#!/usr/bin/env bash
# The speed figures of the README, in one go, on whatever CPU this is (each result JSON records it).
#   bash benchmarks/run_speed.sh [DATA]      DATA: ../shared/data/lgg-kaggle_3m (Dice on the test patients)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/lgg-kaggle_3m}"
PY=.venv/bin/python
$PY benchmarks/inference.py --data "$DATA" --threads 2 --rounds 3
$PY benchmarks/study_cli.py --threads 2 --runs 3
$PY benchmarks/train_throughput.py --threads 2 --steps 4 --sizes 256,160
