"""Cross-validation report: each arm's out-of-fold Dice per patient and condition, and two arms paired.

    python scripts/cv_eval.py --data DATA --arm 2d=RUNS/2d_fold0,RUNS/2d_fold1,... --arm 25d=RUNS/25d_fold0,... \
        --json docs/results/cv.json

An arm is one recipe's fold runs (``tumorseg train --fold i/k --select last``); each run's model is run on
the patients its split.json held out. Each arm's post-processing (test-time views, threshold, component
size, 3D hysteresis) is chosen on its own out-of-fold probabilities by the packaging rule; with two arms
the second is paired against the first, patient by patient, and the decision rule is applied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.train.crossval import SUMMARY_KEYS, arm_report, compare_arms, markdown, out_of_fold
from tumorseg.train.data import DatasetError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME=RUN,RUN,... (repeatable; two are paired)")
    ap.add_argument("--conditions", default="skull_stripped,flair_only,flair_only_stripped")
    ap.add_argument("--select-on", default="original,skull_stripped,flair_only")
    ap.add_argument("--tta", default="none,hflip")
    ap.add_argument("--engine", default="torch-fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the post-processing grid")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="", help="also write the report as Markdown")
    a = ap.parse_args()
    conds = [c for c in a.conditions.split(",") if c and c != "original"]
    arms = {}
    for spec in a.arm:
        name, _, runs = spec.partition("=")
        if not name or not runs:
            ap.error(f"--arm {spec!r}: expected NAME=RUN,RUN,...")
        t0 = time.time()
        oof = out_of_fold(
            [r for r in runs.split(",") if r], a.data, conds, a.tta.split(","), a.engine, a.device, a.threads, a.batch
        )
        arms[name] = arm_report(oof, a.select_on.split(","), a.workers)
        arms[name]["seconds"] = round(time.time() - t0, 1)
        del oof
        print(
            f"{name}: {arms[name]['n_patients']} patients out of fold, post {arms[name]['postprocess']}",
            file=sys.stderr,
        )
        for cond, v in arms[name]["conditions"].items():
            print("  " + f"{cond:22s} " + "  ".join(f"{k} {v[k]:.4f}" for k in SUMMARY_KEYS), file=sys.stderr)
    result = {"data": a.data, "engine": a.engine, "arms": arms}
    if len(arms) == 2:
        result["comparison"] = compare_arms(arms)
        print(json.dumps(result["comparison"], indent=1), file=sys.stderr)
    if a.json:
        atomic_write_bytes(Path(a.json), (json.dumps(result, indent=1) + "\n").encode())
    if a.md:
        atomic_write_bytes(Path(a.md), markdown(arms, result.get("comparison")).encode())


if __name__ == "__main__":
    try:
        main()
    except (DatasetError, OSError) as exc:
        sys.exit(f"cv_eval: {exc}")
