"""Whole-tumour 3D Dice on external glioma cases (BraTS layout), run as a user would.

    python scripts/external_eval.py --data ../shared/data/brats-dev --model MODEL --json out.json

Each case ``<case>/<case>_{t1,flair,t1c,seg}.nii.gz`` is given to ``Predictor.predict_study`` twice:
as a 4D NIfTI in the LGG channel order (pre-contrast, FLAIR, post-contrast; FLAIR copied in for a
missing pre-contrast T1, as the LGG set does) and as FLAIR alone. Truth is seg > 0 (whole tumour).
The temporary NIfTIs live in a temporary folder that is removed afterwards. Never train on these cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.inference import Predictor
from tumorseg.train.evaluation import external_case


def summarise(rows: list[dict]) -> dict:
    """Mean, median and a 95 % percentile-bootstrap interval over cases of the 3D Dice, per condition."""
    out = {}
    rng = np.random.default_rng(0)
    for k in ("three_sequences", "flair_only"):
        d = np.array([r[k]["dice"] for r in rows])
        boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
        out[k] = {
            "mean_dice": float(d.mean()),
            "median_dice": float(np.median(d)),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "mean_recall": float(np.mean([r[k]["recall"] for r in rows])),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--engine", default=None)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    pred = Predictor(a.model, engine=a.engine)
    cases = sorted(p for p in Path(a.data).iterdir() if p.is_dir())
    rows = []
    with tempfile.TemporaryDirectory(prefix="tumorseg-external-") as tmp:
        for case in cases:
            row = external_case(pred, case, Path(tmp))
            if row is None:
                continue
            rows.append(row)
            print(
                f"{case.name:28s} 3 seq Dice {row['three_sequences']['dice']:.3f} "
                f"({row['three_sequences']['pred_ml']:.1f} of {row['truth_ml']:.1f} mL)  "
                f"FLAIR only {row['flair_only']['dice']:.3f}",
                file=sys.stderr,
            )
    summary = {
        k: {
            "mean_dice": float(np.mean([r[k]["dice"] for r in rows])),
            "median_dice": float(np.median([r[k]["dice"] for r in rows])),
            "mean_recall": float(np.mean([r[k]["recall"] for r in rows])),
        }
        for k in ("three_sequences", "flair_only")
    }
    print(json.dumps(summary), file=sys.stderr)
    if a.json:
        out = {
            "data": str(a.data),
            "model": str(pred.model_path),
            "engine": pred.engine.name,
            "cases": rows,
            "summary": summary,
        }
        atomic_write_bytes(Path(a.json), (json.dumps(out, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
