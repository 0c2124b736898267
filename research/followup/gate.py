"""Calibrate the follow-up registration gate (issue 44.2): can it tell the same brain moved from the same brain
mirrored left-right and from another patient's brain? Pairs built from brats-dev and brats-train FLAIRs:
- moved: the scan against itself under a known rigid move (rotation 3-10 degrees, shift 4-15 mm, same grid);
- mirrored: the scan against its data flipped along the first axis, header kept (a left-right flip);
- two patients: each scan against the next case's scan (no IDs, as NIfTI).
For each pair: brain overlap, FLAIR correlation inside the baseline brain after registration, and the
correlation of the follow-up flipped left-right and registered (the mirror test).

    python research/followup/gate.py ../shared/data/brats-dev ../shared/data/brats-train --json research/followup/gate.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tumorseg.engines.hardware import machine_record
from tumorseg.followup.registration import MIRROR_MARGIN, QUALITY_MIN_CORRELATION, register
from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.studies import read_study


def moved(src: Path, out: Path, rng: np.random.Generator) -> None:
    img = sitk.ReadImage(str(src))
    t = sitk.Euler3DTransform()
    t.SetCenter(img.TransformContinuousIndexToPhysicalPoint([s / 2 for s in img.GetSize()]))
    t.SetRotation(*(math.radians(a) * rng.choice([-1, 1]) for a in rng.uniform(3, 10, 3)))
    t.SetTranslation([float(x) * rng.choice([-1, 1]) for x in rng.uniform(4, 15, 3)])
    sitk.WriteImage(sitk.Cast(sitk.Resample(img, img, t, sitk.sitkLinear, 0), img.GetPixelID()), str(out))


def mirrored(src: Path, out: Path) -> None:
    img = nib.load(str(src))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine, img.header), str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--json", default="")
    ap.add_argument("--max-cases", type=int, default=0, help="the first N cases only (the same pairs as a full run's)")
    a = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    flairs = sorted(f for r in a.roots for f in Path(r).glob("*/*_flair.nii.gz"))
    n = a.max_cases or len(flairs)
    rng = np.random.default_rng(44)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tumorseg-gate-") as tmp:
        for i, f in enumerate(flairs[:n]):
            case = f.parent.name
            mv, mr = Path(tmp) / f"{case}_moved.nii.gz", Path(tmp) / f"{case}_mirrored.nii.gz"
            moved(f, mv, rng)
            mirrored(f, mr)
            other = flairs[(i + 1) % len(flairs)]
            base = read_study(f)
            for kind, path in (("moved", mv), ("mirrored", mr), ("two_patients", other)):
                t = time.perf_counter()
                reg = register(base, read_study(path))
                row = {
                    "case": case,
                    "pair": kind,
                    "other": other.parent.name if kind == "two_patients" else case,
                    "brain_dice": reg.brain_dice,
                    "correlation": reg.correlation,
                    "mirrored_correlation": reg.mirrored_correlation,
                    "mirror_suspected": reg.mirror_suspected,
                    "trusted": reg.trusted,
                    "seconds": time.perf_counter() - t,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    def col(kind, key):
        return [r[key] for r in rows if r["pair"] == kind and r[key] is not None]

    gap = {k: [r["mirrored_correlation"] - r["correlation"] for r in rows if r["pair"] == k] for k in
           ("moved", "mirrored", "two_patients")}  # fmt: skip
    summary = {
        "thresholds": {"correlation": QUALITY_MIN_CORRELATION, "mirror_margin": MIRROR_MARGIN},
        "correlation": {k: [min(col(k, "correlation")), max(col(k, "correlation"))] for k in gap},
        "brain_dice": {k: [min(col(k, "brain_dice")), max(col(k, "brain_dice"))] for k in gap},
        "mirror_gap": {k: [min(v), max(v)] for k, v in gap.items()},
        "trusted": {k: sum(r["trusted"] for r in rows if r["pair"] == k) for k in gap},
        "pairs": {k: sum(r["pair"] == k for r in rows) for k in gap},
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
    }
    print(json.dumps(summary, indent=1))
    if a.json:
        rec = {"summary": summary, "rows": rows, "machine": machine_record(1)}
        atomic_write_bytes(Path(a.json), (json.dumps(rec, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
