"""A whole 155-slice study through `tumorseg predict`, default engine against torch-fp32, side by side.

    python benchmarks/study_cli.py [--case ../shared/data/brats-dev/BraTS-GLI-00000-000] [--runs 3]
        [--threads 2] [--out benchmarks/results/study_cli.json]

Each run is a fresh `tumorseg predict CASE --out DIR` process (reading the NIfTI files, segmenting
every slice, writing mask.nii.gz, overlays and study.json), wall time from start to exit; the two
engines take turns. The default engine's probe is warmed first (its one-time cost is reported by
benchmarks/inference.py), so the default runs are what a user sees from the second study on.
Without --case a synthetic 155 x 240 x 240 FLAIR volume is used.
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

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats-dev" / "BraTS-GLI-00000-000"


def _synthetic(folder: Path) -> Path:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:155, :240, :240].astype(np.float32)
    brain = ((zz - 77) / 70) ** 2 + ((yy - 120) / 90) ** 2 + ((xx - 120) / 75) ** 2 < 1
    tumour = ((zz - 80) / 15) ** 2 + ((yy - 100) / 20) ** 2 + ((xx - 140) / 18) ** 2 < 1
    vol = (brain * 300 + tumour * 400 + rng.normal(0, 10, brain.shape)).clip(0).astype(np.int16)
    path = folder / "synthetic_flair.nii.gz"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def _run(case: str, out: Path, threads: int, engine: str | None) -> float:
    cmd = [sys.executable, "-m", "tumorseg", "predict", case, "--out", str(out), "--threads", str(threads)]
    cmd += ["--engine", engine] if engine else []
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-1500:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default=str(BRATS) if BRATS.is_dir() else "")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/study_cli.json")
    a = ap.parse_args()
    from tumorseg.engines.hardware import machine_record
    from tumorseg.engines.loading import load_engine

    default = load_engine(None, threads=a.threads)  # warms this machine's probe cache
    with tempfile.TemporaryDirectory() as tmp:
        case = a.case or str(_synthetic(Path(tmp)))
        walls: dict[str, list[float]] = {"default": [], "torch-fp32": []}
        for k in range(a.runs):
            for name in walls:
                walls[name].append(_run(case, Path(tmp) / f"{name}{k}", a.threads, None if name == "default" else name))
                print(f"run {k + 1}: {name} {walls[name][-1]:.1f} s", file=sys.stderr)
        study_json = next((Path(tmp) / "default0").rglob("study.json"))
        study = json.loads(study_json.read_text())
        output_mb = sum(p.stat().st_size for p in study_json.parent.rglob("*") if p.is_file()) / 1e6
    med = {k: statistics.median(v) for k, v in walls.items()}
    res = {
        "machine": machine_record(a.threads),
        "case": Path(case).name if a.case else "synthetic 155x240x240 FLAIR",
        "slices": study.get("n_slices"),
        "output_mb": output_mb,
        "default_engine": default.name,
        "default_reason": default.reason,
        "wall_s_median": med,
        "samples": walls,
        "speedup_default_vs_fp32": med["torch-fp32"] / med["default"],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
