"""A known lesion change on high-grade gliomas: each brats-dev case (never trained on) against a copy whose
tumour lost its outer 2 voxels in every axial slice (the rim made to look like the brain around it, each
sequence drawn from the ring just outside the tumour); the true relative change from the reference masks,
the model's from `followup.compare`. Usage: python research/followup/hgg_known_change.py [brats-dev root]"""

import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from tumorseg.followup.comparison import compare
from tumorseg.inference import Predictor
from tumorseg.studies import read_study

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared/data/brats-dev"


def shrunk(case: Path, out: Path, rim: int = 2) -> float:
    rng = np.random.default_rng(0)
    seg = nib.load(case / f"{case.name}_seg.nii.gz")
    m = np.asanyarray(seg.dataobj) > 0
    inner = np.stack([ndimage.binary_erosion(m[..., k], iterations=rim) for k in range(m.shape[2])], axis=2)
    ring = ndimage.binary_dilation(m, iterations=6) & ~ndimage.binary_dilation(m, iterations=2)
    edge = m & ~inner
    out.mkdir()
    for f in sorted(case.glob("*.nii.gz")):
        if f.name.endswith("_seg.nii.gz"):
            continue
        img = nib.load(f)
        a = np.asanyarray(img.dataobj).astype(np.float32)
        src = a[ring & (a > 10)]
        a[edge] = rng.choice(src, int(edge.sum()))
        a = np.where(edge, ndimage.gaussian_filter(a, 0.7), a)
        nib.save(nib.Nifti1Image(np.clip(a, 0, 255).astype(np.uint8), img.affine, img.header), str(out / f.name))
    nib.save(nib.Nifti1Image(inner.astype(np.uint8), seg.affine, seg.header), str(out / f"{case.name}_seg.nii.gz"))
    return float(inner.sum() - m.sum()) / float(m.sum())


def main() -> None:
    pred = Predictor(engine="onnx-int8")
    rows = []
    for case in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        with tempfile.TemporaryDirectory() as tmp:
            true = shrunk(case, Path(tmp) / case.name)
            for inp in ("all", "flair"):
                pick = (lambda c: c / f"{c.name}_flair.nii.gz") if inp == "flair" else (lambda c: c)
                s = compare(pred, read_study(pick(case)), read_study(pick(Path(tmp) / case.name))).summary
                rows.append(
                    {
                        "case": case.name,
                        "input": inp,
                        "true": round(true, 3),
                        "measured": round(s["volume_change_relative"], 3),
                        "trusted": s["registration"]["trusted"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    for inp in ("all", "flair"):
        err = [abs(r["measured"] - r["true"]) for r in rows if r["input"] == inp]
        print(
            inp,
            "median |error|",
            round(float(np.median(err)), 3),
            "within 5 points",
            sum(e <= 0.05 for e in err),
            "of",
            len(err),
        )


if __name__ == "__main__":
    main()
