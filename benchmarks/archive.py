"""Archive throughput: studies per minute, plain local run against --dask local:1 and local:2, side by side.

    python benchmarks/archive.py [--studies 8] [--slices 48] [--rounds 2] [--out benchmarks/results/archive.json]

Synthetic NIfTI studies (240 x 240 x --slices, a bright blob), the bundled model and its default
engine, each configuration a fresh `tumorseg predict` process (so LocalCluster start-up, worker
start and model loading are counted, as a user pays them); the configurations take turns over
--rounds rounds; medians. Overhead per study = (Dask wall - local wall) / studies at equal cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_studies(folder: Path, n: int, slices: int) -> list[Path]:
    import nibabel as nib

    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:slices, :240, :240].astype(np.float32)
    brain = ((zz - slices / 2) / (slices / 2)) ** 2 + ((yy - 120) / 90) ** 2 + ((xx - 120) / 75) ** 2 < 1
    paths = []
    for k in range(n):
        cy, cx = rng.integers(80, 160, 2)
        tumour = ((zz - slices / 2) / (slices / 5)) ** 2 + ((yy - cy) / 18) ** 2 + ((xx - cx) / 15) ** 2 < 1
        vol = (brain * 300 + tumour * 350 + rng.normal(0, 12, brain.shape)).clip(0).astype(np.int16)
        p = folder / f"study{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([0.9, 0.9, 3.0, 1.0])), str(p))
        paths.append(p)
    return paths


def run(inputs: list[Path], out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "tumorseg", "predict", *map(str, inputs), "--out", str(out), *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{r.stderr[-1500:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/archive.json")
    a = ap.parse_args()
    from tumorseg.engines.hardware import machine_record
    from tumorseg.engines.loading import load_engine

    cores = os.cpu_count() or 1
    engine = load_engine(None, threads=1)  # warms the engine probe for the 1-thread workers
    load_engine(None, threads=cores)  # ... and for the local run's threads
    configs = {
        f"local ({cores} threads)": ["--threads", str(cores)],
        "dask local:1": ["--dask", "local:1", "--threads", "1"],
        f"dask local:{cores}": ["--dask", f"local:{cores}", "--threads", "1"],
    }
    walls: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_studies(Path(tmp), a.studies, a.slices)
        for r in range(a.rounds):
            for name, extra in configs.items():
                walls[name].append(run(inputs, Path(tmp) / f"out{r}-{len(walls[name])}-{name[:5]}", extra))
                print(f"round {r + 1}: {name} {walls[name][-1]:.1f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in walls.items()}
    local = med[f"local ({cores} threads)"]
    rows = [
        {
            "config": k,
            "wall_s_median": v,
            "studies_per_min": 60 * a.studies / v,
            "overhead_s_per_study_vs_local": (v - local) / a.studies,
        }
        for k, v in med.items()
    ]
    res = {
        "machine": machine_record(cores),
        "engine_1_thread": engine.name,
        "studies": a.studies,
        "slices_per_study": a.slices,
        "rounds": a.rounds,
        "rows": rows,
        "samples": walls,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    for r in rows:
        print(
            f"{r['config']:<22} {r['wall_s_median']:6.1f} s  {r['studies_per_min']:5.1f} studies/min  "
            f"{r['overhead_s_per_study_vs_local']:+.2f} s/study vs local"
        )


if __name__ == "__main__":
    main()
