"""A model file's score as training validates and selects (``training.validate``): pooled Dice and the
per-patient mean on the validation patients' original and FLAIR-only slices, no post-processing. The
v2 baseline a ``--select patients`` run's log.jsonl compares with.

    python scripts/train_val_score.py --data ../shared/data/lgg-kaggle_3m --split-file docs/results/split.json \
        --model src/tumorseg/models/default.safetensors [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from tumorseg.model.info import ModelInfo
from tumorseg.nn.serialise import load_model
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.device import DistContext, precision_plan
from tumorseg.train.validation import patients_score, validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    split = load_split(a.split_file)
    by_patient = {c.patient: c for c in discover(a.data)}
    val = load_cases([by_patient[p] for p in split["val"]], 256)
    model, meta = load_model(a.model)
    spec = ModelInfo.from_meta(meta).input
    device = torch.device("cpu")
    amp, mem, _ = precision_plan(device, True)
    args = (spec.normalisation.imagenet, device, amp, 16, DistContext(), mem, spec.context)
    out = {
        "model": a.model,
        "original": validate(model, val, *args),
        "flair_only": validate(model, val.flair_only(), *args),
    }
    out["select"] = patients_score(out["original"], out["flair_only"])
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
