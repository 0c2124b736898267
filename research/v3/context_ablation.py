"""Ablation of the v3 ingredients on the validation patients: context (2.5D vs each slice alone), 3D
hysteresis, and left-right flip TTA, for a 2D reference model and a 2.5D model.

    python research/v3/context_ablation.py --data ../shared/data/lgg-kaggle_3m --split-file docs/results/split.json \
        --model v2=src/tumorseg/models/default.safetensors --model v3=runs/v3/default.safetensors \
        --out research/v3/results/v3_ablation_val

Each row: a model, whether its slices see their neighbours ("stack": the patient one stack, as the
Predictor reads a study; "alone": every slice as a single image, whose neighbours are itself), the views
(none | hflip) and the post-processing (the model's threshold and component rule, with or without its
3D hysteresis), on the original slices and FLAIR-only; pooled Dice, recall, per-patient mean and the
share of tumour-free slices with a false alarm. Validation patients only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the maintained comparison tools
from compare_models import _named  # noqa: E402  NAME=MODEL, one rule for the comparison scripts

from tumorseg.engines.loading import load_engine
from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.model.info import ModelInfo
from tumorseg.model.metrics import SegmentationMetrics
from tumorseg.model.postprocess import PostProcess
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.robustness import transformed

KEYS = ("dice", "recall", "precision", "dice_per_patient_mean", "empty_slice_fp_rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL (repeatable)")
    ap.add_argument("--engine", default="torch-fp32")
    ap.add_argument("--conditions", default="original,flair_only")
    ap.add_argument("--out", required=True, help="output path without suffix (.json and .md)")
    a = ap.parse_args()
    split = load_split(a.split_file)
    cases = [c for c in discover(a.data) if c.patient in set(split["val"])]
    rows = []
    for name, path in map(_named, a.model):
        eng = load_engine(path, a.engine)
        info = ModelInfo.from_meta(eng.meta)
        ds = load_cases(cases, eng.size)
        groups = ds.groups()
        alone = [(i, i + 1) for i in range(len(ds))]
        for cond in a.conditions.split(","):
            imgs, masks = transformed(ds, cond)
            for context in ("stack", "alone") if info.input.context else ("stack",):
                for tta in ("none", "hflip"):
                    prob = eng.run_stack(imgs, groups if context == "stack" else alone, tta=tta)
                    for low in sorted({0.0, info.post.hysteresis_low}):
                        post = PostProcess(info.post.threshold, info.post.min_component_pixels, eng.size, low)
                        pred = np.concatenate([post.apply_stack(prob[x:y]) for x, y in groups])
                        m = SegmentationMetrics()
                        m.update(pred, masks, ds.patients)
                        r = m.aggregate()
                        rows.append(
                            {"model": name, "condition": cond, "context": context, "tta": tta,
                             "hysteresis_low": low, **{k: float(r[k]) for k in KEYS}}
                        )  # fmt: skip
                        print(json.dumps(rows[-1]))
    atomic_write_bytes(Path(a.out + ".json"), (json.dumps(rows, indent=1) + "\n").encode())
    lines = [
        "| model | condition | neighbours | views | hysteresis | Dice | recall | precision | per-patient | empty FP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['condition']} | {r['context']} | {r['tta']} | {r['hysteresis_low']:g} | "
            f"{r['dice']:.4f} | {r['recall']:.4f} | {r['precision']:.4f} | {r['dice_per_patient_mean']:.4f} | "
            f"{r['empty_slice_fp_rate']:.3f} |"
        )
    atomic_write_bytes(Path(a.out + ".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
