"""How long choosing the post-processing takes (packaging and cross-validation share the grid).

    python benchmarks/postprocess_grid.py --data ../shared/data/lgg-kaggle_3m --workers 1 --json out.json

The bundled model's int8 engine is run on the validation patients under the conditions packaging
selects on (original, skull-stripped, FLAIR-only) and both test-time views; then
``evaluation.choose_postprocess`` sweeps its grid over those probabilities with --workers processes.
Reports both times, the slices, and the row it chose (the bundled model's own packaging chose on bf16
probabilities, so its recorded choice may differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tumorseg.engines.hardware import cpu_info
from tumorseg.engines.loading import load_engine
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.evaluation import choose_postprocess
from tumorseg.train.robustness import transformed

CONDITIONS = ("original", "skull_stripped", "flair_only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/lgg-kaggle_3m")
    ap.add_argument("--split-file", default="docs/results/split.json")
    ap.add_argument("--threads", type=int, default=2, help="inference threads")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the grid")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    split = load_split(a.split_file)
    eng = load_engine(None, "onnx-int8", a.threads)
    ds = load_cases([c for c in discover(a.data) if c.patient in set(split["val"])], eng.size)
    t0 = time.perf_counter()
    views = {}
    for tta in ("none", "hflip"):
        views[tta] = {}
        for cond in CONDITIONS:
            images, masks = transformed(ds, cond)
            views[tta][cond] = (eng.run_stack(images, ds.groups(), tta=tta).astype(np.float16), masks)
    t_inf = time.perf_counter() - t0
    t0 = time.perf_counter()
    choice, grid = choose_postprocess(views, ds.patients, list(CONDITIONS), a.workers)
    t_grid = time.perf_counter() - t0
    cpu = cpu_info()
    result = {
        "cpu": {"model": cpu.model, "class": cpu.flags_class},
        "slices": len(ds),
        "patients": len(set(ds.patients)),
        "inference_seconds": round(t_inf, 1),
        "grid_rows": len(grid),
        "grid_seconds": round(t_grid, 1),
        "workers": a.workers,
        "choice": choice,
    }
    print(json.dumps(result, indent=1), file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
