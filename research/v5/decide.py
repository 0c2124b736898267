"""Model v5's decision (issue 43): v2 and the one candidate, int8 both, paired per patient on the selection set.

    python research/v5/decide.py --base v2=src/tumorseg/models/default-int8.onnx --candidate v5=runs/v5/default-int8.onnx \
        --lgg ../shared/data/lgg-kaggle_3m --lgg-split docs/results/split.json --brats-dev ../shared/data/brats-dev \
        --brats-held ../shared/data/brats-train --held CASE,CASE --json research/v5/selection.json --cache runs/v5_scores

The scoring is v4's (``research/v4/decide.py``: LGG per-patient 3D Dice on original and FLAIR-only slices through
the robustness suite; high grade as a user runs it, ``evaluation.external_case``, with the BraTS evaluation
package's metrics where installed). What v5's rule changes (research/v5/README.md, written before training):
- a FLAIR-only case gives one input, so its "three sequences" run (FLAIR in every channel) is not counted again;
- the high-grade interval is a bootstrap over cases (a case's values resampled together);
- the CPU that scored both models is written into the result (int8 Dice differs by CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "v4"))
from decide import paired, scores  # noqa: E402  (v4's scoring: one home)

from tumorseg.engines.hardware import machine_record  # noqa: E402
from tumorseg.imaging.files import atomic_write_bytes  # noqa: E402
from tumorseg.train.evaluation import EXTERNAL_CONDITIONS  # noqa: E402


def case_values(rows: list[dict], conds=EXTERNAL_CONDITIONS) -> dict[str, dict[str, float]]:
    """case -> {condition: Dice}; a FLAIR-only case keeps only its FLAIR-alone value (one input, counted once)."""
    out = {}
    for r in rows:
        flair_only_case = r.get("sequences") == ["flair"]
        out[r["case"]] = {c: r[c]["dice"] for c in conds if not (flair_only_case and c != "flair_only")}
    return out


def paired_by_case(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], n: int = 2000) -> dict:
    """b - a over every (case, condition) value both have; the mean over values, its 95 % percentile bootstrap
    drawing cases (each case's values together), better/worse counts over values and cases."""
    cases = sorted(set(a) & set(b))
    per_case = [np.array([b[c][k] - a[c][k] for k in sorted(set(a[c]) & set(b[c]))]) for c in cases]
    per_case = [d for d in per_case if len(d)]
    values = np.concatenate(per_case)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n):
        pick = rng.integers(0, len(per_case), len(per_case))
        boots.append(np.concatenate([per_case[i] for i in pick]).mean())
    va = [a[c][k] for c in cases for k in sorted(set(a[c]) & set(b[c]))]
    vb = [b[c][k] for c in cases for k in sorted(set(a[c]) & set(b[c]))]
    return {
        "mean_difference": float(values.mean()),
        "ci95_by_case": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "better": int((values > 0.001).sum()),
        "worse": int((values < -0.001).sum()),
        "n_values": len(values),
        "n_cases": len(per_case),
        "cases_better": int(sum(d.mean() > 0.001 for d in per_case)),
        "cases_worse": int(sum(d.mean() < -0.001 for d in per_case)),
        "mean_a": float(np.mean(va)),
        "mean_b": float(np.mean(vb)),
    }


def named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=PATH")
    return name, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=named, required=True, help="NAME=PATH of the bundled model's int8 file")
    ap.add_argument("--candidate", type=named, required=True, help="NAME=PATH of the candidate's int8 file")
    ap.add_argument("--lgg", required=True)
    ap.add_argument("--lgg-split", required=True)
    ap.add_argument("--brats-dev", required=True)
    ap.add_argument("--brats-held", required=True)
    ap.add_argument("--held", default="", help="held-out brats-train cases, comma-separated")
    ap.add_argument("--json", default="")
    ap.add_argument("--cache", default="", help="folder: each model's scores kept by its file's sha256 and reused")
    ap.add_argument("--only", choices=["base", "candidate"], help="score one model into the cache and stop")
    a = ap.parse_args()
    (bn, bp), (cn, cp) = a.base, a.candidate
    models = {bn: bp, cn: cp}
    cases = sorted(p for p in Path(a.brats_dev).iterdir() if p.is_dir())
    cases += [Path(a.brats_held) / c for c in a.held.split(",") if c]
    if a.only:
        name, path = (bn, bp) if a.only == "base" else (cn, cp)
        scores(name, path, a, cases)
        return
    lgg, hg = {}, {}
    for name, path in models.items():
        lgg[name], hg[name] = scores(name, path, a, cases)
    result = {
        "lgg_original": paired(lgg[bn]["original"], lgg[cn]["original"]),
        "lgg_flair_only": paired(lgg[bn]["flair_only"], lgg[cn]["flair_only"]),
        "high_grade": paired_by_case(case_values(hg[bn]), case_values(hg[cn])),
        **{
            f"high_grade_{c}": paired_by_case(case_values(hg[bn], (c,)), case_values(hg[cn], (c,)))
            for c in EXTERNAL_CONDITIONS
        },
    }
    result["passes"] = {
        "lgg_original >= -0.005": result["lgg_original"]["mean_difference"] >= -0.005,
        "lgg_flair_only > 0": result["lgg_flair_only"]["mean_difference"] > 0,
        "high_grade > 0": result["high_grade"]["mean_difference"] > 0,
    }
    result["margins"] = {
        "lgg_original": result["lgg_original"]["mean_difference"] + 0.005,
        "lgg_flair_only": result["lgg_flair_only"]["mean_difference"],
        "high_grade": result["high_grade"]["mean_difference"],
    }
    result["decision"] = f"{cn} replaces {bn}" if all(result["passes"].values()) else f"{bn} stays"
    result["machine"] = machine_record(0)
    print(json.dumps(result, indent=1), file=sys.stderr)
    if a.json:
        full = {**result, "models": models, "lgg_patient_dice": lgg, "high_grade_cases": hg, "held_out": a.held}
        atomic_write_bytes(Path(a.json), (json.dumps(full, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
