"""Paired, per-patient comparison of two model files on one split part, with bootstrap intervals.

    python scripts/compare_models.py --data ../shared/data/lgg-kaggle_3m --split val \
        --split-file docs/results/split.json --a v1=OLD.safetensors --b v2=NEW.safetensors \
        --out docs/results/v1_vs_v2_val

Both models run with the same engine; each keeps its own threshold and small-component rule.
Writes OUT.json and OUT.md: headline metrics with 95 % bootstrap intervals over patients, the
per-patient 3D Dice of both, the paired difference (bootstrap interval, Wilcoxon signed-rank test)
and wins/losses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.model.metrics import HEADLINE, bootstrap_ci, metrics_from_counts
from tumorseg.train.evaluation import evaluate


def _named(spec: str) -> tuple[str, str]:
    name, _, path = spec.partition("=")
    return (name, path) if path else (Path(spec).stem, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val", choices=["val", "test", "all"])
    ap.add_argument("--split-file", default=None)
    ap.add_argument("--a", required=True, help="NAME=MODEL (the reference, e.g. v1)")
    ap.add_argument("--b", required=True, help="NAME=MODEL (the candidate)")
    ap.add_argument("--engine", default="torch-bf16")
    ap.add_argument("--out", required=True, help="output path without suffix")
    a = ap.parse_args()
    res = {}
    for spec in (a.a, a.b):
        name, path = _named(spec)
        r = evaluate(a.data, path, a.split, a.split_file, engine=a.engine)
        counts = r["per_patient_counts"]
        res[name] = {
            "model": path,
            "metrics": metrics_from_counts(counts),
            "ci95": bootstrap_ci(counts),
            "per_patient": r["per_patient"],
            "threshold": r["metrics"]["threshold"],
            "ece": r["ece"],
        }
    (na, ra), (nb, rb) = res.items()
    pats = sorted(set(ra["per_patient"]) & set(rb["per_patient"]))
    da = np.array([ra["per_patient"][p] for p in pats])
    db = np.array([rb["per_patient"][p] for p in pats])
    diff = db - da
    rng = np.random.default_rng(0)
    boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    from scipy.stats import wilcoxon

    try:
        p_value = float(wilcoxon(db, da).pvalue)
    except ValueError:
        p_value = float("nan")
    paired = {
        "n_patients": len(pats),
        "mean_difference": float(diff.mean()),
        "ci95": (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
        "wins": int((diff > 0.001).sum()),
        "losses": int((diff < -0.001).sum()),
        "ties": int((abs(diff) <= 0.001).sum()),
        "wilcoxon_p": p_value,
    }
    out = {"split": a.split, "engine": a.engine, "models": res, "paired": paired}
    atomic_write_bytes(Path(a.out + ".json"), (json.dumps(out, indent=1) + "\n").encode())
    lines = [
        f"# {na} vs {nb} on the {a.split} patients ({len(pats)}), engine {a.engine}",
        "",
        f"| metric | {na} | {na} 95 % CI | {nb} | {nb} 95 % CI |",
        "|---|---|---|---|---|",
    ]
    for k in HEADLINE:
        lines.append(
            f"| {k} | {ra['metrics'][k]:.4f} | {ra['ci95'][k][0]:.4f}–{ra['ci95'][k][1]:.4f} | "
            f"{rb['metrics'][k]:.4f} | {rb['ci95'][k][0]:.4f}–{rb['ci95'][k][1]:.4f} |"
        )
    lines += [
        "",
        f"Paired per-patient 3D Dice, {nb} − {na}: mean {paired['mean_difference']:+.4f} "
        f"(95 % CI {paired['ci95'][0]:+.4f} to {paired['ci95'][1]:+.4f}), {paired['wins']} better, "
        f"{paired['losses']} worse, {paired['ties']} equal; Wilcoxon p = {p_value:.3g}.",
        "",
        f"| patient | {na} | {nb} | difference |",
        "|---|---|---|---|",
    ]
    for p, x, y in zip(pats, da, db):
        lines.append(f"| {p} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
    atomic_write_bytes(Path(a.out + ".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines[: 12 + len(HEADLINE)]))


if __name__ == "__main__":
    main()
