"""Turn a finished training run into the bundled default model.

    python scripts/package_model.py --run runs/main --data ../shared/data/lgg-kaggle_3m

Chooses the threshold and the 2D small-component filter on the VALIDATION patients only
(the model is run once on them, the grid is swept on cached probabilities), stores the
weights as fp16 after checking that validation Dice moves by less than 0.002, and writes
src/tumorseg/models/default.safetensors with a sha256 sidecar. Test patients are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tumorseg.data import discover, load_cases
from tumorseg.engines import load_engine
from tumorseg.evaluation import remove_small_components
from tumorseg.metrics import SegmentationMetrics
from tumorseg.model import file_sha256, load_model, read_model_file, save_model


def val_probs(model_path: Path, data: str, split: dict, engine: str):
    eng = load_engine(model_path, engine)
    cases = [c for c in discover(data) if c.patient in set(split["val"])]
    ds = load_cases(cases, eng.size)
    probs = np.concatenate([eng.run(ds.images[s : s + 16]) for s in range(0, len(ds), 16)])
    return ds, probs


def score(ds, probs, thr: float, min_px: int) -> dict:
    m = SegmentationMetrics()
    pred = probs >= thr
    if min_px:
        pred = np.stack([remove_small_components(p, min_px) for p in pred])
    m.update(pred, ds.masks, ds.patients)
    return m.compute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--engine", default="torch-bf16")
    ap.add_argument("--out", default="src/tumorseg/models/default.safetensors")
    a = ap.parse_args()
    run = Path(a.run)
    best = run / "best.safetensors"
    _, meta = read_model_file(best)
    split = json.loads((run / "split.json").read_text())
    split = {k: split[k] for k in ("train", "val", "test")}
    ds, probs = val_probs(best, a.data, split, a.engine)
    grid = []
    for thr in (0.3, 0.4, 0.5, 0.6, 0.7):
        for min_px in (0, 10, 20, 40, 80):
            r = score(ds, probs, thr, min_px)
            grid.append({"threshold": thr, "min_component_pixels": min_px, "dice": r["dice"],
                         "dice_per_patient_mean": r["dice_per_patient_mean"],
                         "empty_slice_fp_rate": r["empty_slice_fp_rate"]})
    # objective on validation: pooled and per-patient Dice equally
    choice = max(grid, key=lambda g: g["dice"] + g["dice_per_patient_mean"])
    print(json.dumps(choice), file=sys.stderr)

    net, _ = load_model(best)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    meta["threshold"] = choice["threshold"]
    meta["min_component_pixels"] = choice["min_component_pixels"]
    meta["training"]["split"] = split
    meta["training"]["epochs_run"] = len(log)
    meta["training"]["wall_clock_hours"] = round(sum(r["epoch_seconds"] for r in log) / 3600, 2)
    meta["metrics"]["val_selection"] = choice
    meta["metrics"]["val_grid"] = grid
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net, out, meta, dtype=torch.float16)
    # fp16 storage must not move validation Dice by 0.002 or more
    ds2, probs16 = val_probs(out, a.data, split, a.engine)
    d32 = score(ds, probs, choice["threshold"], choice["min_component_pixels"])["dice"]
    d16 = score(ds2, probs16, choice["threshold"], choice["min_component_pixels"])["dice"]
    print(f"val Dice fp32 weights {d32:.5f}, fp16 weights {d16:.5f}", file=sys.stderr)
    if abs(d32 - d16) >= 0.002:
        save_model(net, out, meta)
        print("fp16 moved Dice too much: stored fp32", file=sys.stderr)
    info = {"file": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
            "val_dice_fp32_weights": d32, "val_dice_stored": d16, "selection": choice}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
