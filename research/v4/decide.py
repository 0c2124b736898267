"""Model v4's decision (issue 35): v2 and a candidate, int8 both, paired per patient on the selection set.

    python research/v4/decide.py --v2 src/tumorseg/models/default-int8.onnx --v4 runs/v4/default-int8.onnx \
        --lgg ../shared/data/lgg-kaggle_3m --lgg-split docs/results/split.json --brats-dev ../shared/data/brats-dev \
        --brats-held ../shared/data/brats-train --held CASE,CASE --json research/v4/selection.json

- LGG: the split's validation + test patients (28), per-patient 3D Dice of the stacked slices on the original
  slices and on FLAIR-only slices (the robustness suite's conditions), the model's own post-processing.
- High grade: brats-dev's cases and the held-out brats-train cases, whole-tumour 3D Dice with their sequences
  and with FLAIR alone, run as a user would (``evaluation.external_case``); and, where the BraTS evaluation
  package is installed (``pip install brats-evaluation``, AGPL, not a tumorseg dependency), its lesion-wise
  Dice and HD95 on the same masks (research/v4/panoptica_wt.yaml: its glioma config, whole tumour only).
- The rule (research/v4/model_v4.sh, fixed before any result): LGG original mean difference >= -0.005, LGG
  FLAIR-only > 0, high-grade mean over both input conditions > 0. 95 % bootstrap intervals over patients.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tumorseg.engines.loading import load_engine
from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.inference import Predictor
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.evaluation import EXTERNAL_CONDITIONS, external_case
from tumorseg.train.robustness import run_suite

HERE = Path(__file__).resolve().parent


def paired(a: dict[str, float], b: dict[str, float], n: int = 2000) -> dict:
    """b - a over the keys both have: mean, 95 % percentile bootstrap, better/worse counts."""
    keys = sorted(set(a) & set(b))
    d = np.array([b[k] - a[k] for k in keys])
    rng = np.random.default_rng(0)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
    return {
        "mean_difference": float(d.mean()),
        "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "better": int((d > 0.001).sum()),
        "worse": int((d < -0.001).sum()),
        "n": len(d),
        "mean_a": float(np.mean([a[k] for k in keys])),
        "mean_b": float(np.mean([b[k] for k in keys])),
    }


def lgg_part(models: dict[str, str], data: str, split_file: str) -> dict:
    split = load_split(split_file)
    pats = set(split["val"]) | set(split["test"])
    engines = {name: load_engine(path, "onnx-int8") for name, path in models.items()}
    ds = load_cases([c for c in discover(data) if c.patient in pats], next(iter(engines.values())).size)
    suite = run_suite(engines, ds, ["original", "flair_only"])
    return {name: {c: r[c]["patient_dice"] for c in r} for name, r in suite.items()}


def lesionwise(mask_file: str, truth_file: str, tmp: Path, name: str) -> dict | None:
    """brats-evaluation's metrics for one whole-tumour mask (None where the package is not installed)."""
    try:
        import nibabel as nib
        from brats_evaluation import evaluate_single_exam
        from panoptica import Panoptica_Evaluator
    except ImportError:
        return None
    ev = Panoptica_Evaluator.load_from_config(str(HERE / "panoptica_wt.yaml"))
    seg = nib.load(truth_file)
    ref = tmp / f"{name}_ref.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(seg.dataobj) > 0).astype(np.uint8), seg.affine), str(ref))
    r = evaluate_single_exam(mask_file, str(ref), name, ev).get("wt", {})
    keys = ("global_bin_dsc", "global_bin_hd95", "sq_dsc", "sq_hd95", "rq", "pq", "tp", "fp", "fn")
    return {k: (float(r[k]) if r.get(k) is not None else None) for k in keys}


def high_grade_part(models: dict[str, str], cases: list[Path]) -> dict:
    out: dict[str, list] = {}
    for name, path in models.items():
        pred = Predictor(path, engine="onnx-int8")
        rows = []
        with tempfile.TemporaryDirectory(prefix="tumorseg-select-") as tmp:
            for case in cases:
                row = external_case(pred, case, Path(tmp), keep_masks=True)
                for cond in EXTERNAL_CONDITIONS:
                    f = row[cond].pop("mask_file")
                    lw = lesionwise(f, str(case / f"{case.name}_seg.nii.gz"), Path(tmp), f"{case.name}_{cond}")
                    if lw is not None:
                        row[cond]["brats_evaluation"] = lw
                rows.append(row)
                print(
                    f"{name} {case.name:28s} 3 seq {row['three_sequences']['dice']:.3f}  "
                    f"FLAIR {row['flair_only']['dice']:.3f}",
                    file=sys.stderr,
                )
        out[name] = rows
    return out


def scores(name: str, path: str, a, cases: list[Path]) -> tuple[dict, list]:
    """One model's LGG per-patient scores and high-grade rows, from the cache when its file was scored before
    on the same inputs (the cache key: the file's sha256 and the inputs)."""
    from tumorseg.imaging.files import file_sha256

    key = {"model_sha256": file_sha256(path), "lgg": a.lgg, "split": a.lgg_split, "cases": [str(c) for c in cases]}
    cache = Path(a.cache) / f"{key['model_sha256'][:16]}.json" if a.cache else None
    if cache is not None and cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            print(f"{name}: scores reused from {cache}", file=sys.stderr)
            return got["lgg"], got["high_grade"]
    lgg = lgg_part({name: path}, a.lgg, a.lgg_split)[name]
    hg = high_grade_part({name: path}, cases)[name]
    if cache is not None:
        atomic_write_bytes(cache, (json.dumps({"key": key, "lgg": lgg, "high_grade": hg}) + "\n").encode())
    return lgg, hg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--v2", required=True)
    ap.add_argument("--v4", required=True)
    ap.add_argument("--lgg", required=True)
    ap.add_argument("--lgg-split", required=True)
    ap.add_argument("--brats-dev", required=True)
    ap.add_argument("--brats-held", required=True)
    ap.add_argument("--held", default="", help="held-out brats-train cases, comma-separated")
    ap.add_argument("--json", default="")
    ap.add_argument("--cache", default="", help="folder: each model's scores kept by its file's sha256 and reused")
    a = ap.parse_args()
    models = {"v2": a.v2, "v4": a.v4}
    cases = sorted(p for p in Path(a.brats_dev).iterdir() if p.is_dir())
    cases += [Path(a.brats_held) / c for c in a.held.split(",") if c]
    lgg, hg = {}, {}
    for name, path in models.items():
        lgg[name], hg[name] = scores(name, path, a, cases)

    def hg_scores(name: str, conds=EXTERNAL_CONDITIONS) -> dict[str, float]:
        return {f"{r['case']}|{c}": r[c]["dice"] for r in hg[name] for c in conds}

    result = {
        "lgg_original": paired(lgg["v2"]["original"], lgg["v4"]["original"]),
        "lgg_flair_only": paired(lgg["v2"]["flair_only"], lgg["v4"]["flair_only"]),
        "high_grade": paired(hg_scores("v2"), hg_scores("v4")),
        **{f"high_grade_{c}": paired(hg_scores("v2", (c,)), hg_scores("v4", (c,))) for c in EXTERNAL_CONDITIONS},
    }
    result["passes"] = {
        "lgg_original >= -0.005": result["lgg_original"]["mean_difference"] >= -0.005,
        "lgg_flair_only > 0": result["lgg_flair_only"]["mean_difference"] > 0,
        "high_grade > 0": result["high_grade"]["mean_difference"] > 0,
    }
    result["decision"] = "v4 replaces v2" if all(result["passes"].values()) else "v2 stays"
    print(json.dumps({k: v for k, v in result.items()}, indent=1), file=sys.stderr)
    if a.json:
        full = {**result, "models": models, "lgg_patient_dice": lgg, "high_grade_cases": hg, "held_out": a.held}
        atomic_write_bytes(Path(a.json), (json.dumps(full, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
