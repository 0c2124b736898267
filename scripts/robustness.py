"""Robustness suite on the validation patients (or another split part) for one or more model files.

    python scripts/robustness.py --data ../shared/data/lgg-kaggle_3m --split-file docs/results/split.json \
        --model src/tumorseg/models/default.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tumorseg.engines.loading import load_engine
from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.model.metrics import paired_difference
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.robustness import CONDITIONS, run_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--part", default="val", choices=["val", "test", "train"])
    ap.add_argument("--model", action="append", required=True, help="model file (repeatable)")
    ap.add_argument("--engine", default="torch-bf16")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    split = load_split(a.split_file)
    cases = [c for c in discover(a.data) if c.patient in set(split[a.part])]
    engines = {m: load_engine(m, a.engine) for m in a.model}
    ds = load_cases(cases, next(iter(engines.values())).size)
    result = {
        "part": a.part,
        "n_patients": len(cases),
        "n_slices": len(ds),
        "engine": a.engine,
        "models": run_suite(engines, ds, a.conditions.split(",")),
    }
    for m, r in result["models"].items():
        print(m, file=sys.stderr)
        for cond, v in r.items():
            print(
                f"  {cond:22s} Dice {v['dice']:.4f}  recall {v['recall']:.4f}  precision {v['precision']:.4f}  "
                f"patient mean {v['dice_per_patient_mean']:.4f}  empty FP {v['empty_slice_fp_rate']:.3f}",
                file=sys.stderr,
            )
    if len(result["models"]) == 2:
        result["paired"] = paired_difference(*result["models"].values())
        print(json.dumps(result["paired"], indent=1), file=sys.stderr)
    if a.json:
        atomic_write_bytes(Path(a.json), (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
