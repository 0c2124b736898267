"""Follow-up speed: registration alone and the whole comparison (both studies segmented, registered,
measured, outputs written) of two 155-slice studies, on N CPU threads.

python benchmarks/followup.py [--case ../shared/data/brats-dev/BraTS-GLI-00000-000] [--threads 2] [--rounds 3]
    [--spaces own,halfway] [--json benchmarks/results/followup.json]

Registration with and without the mirror test, and the whole comparison in each measuring space asked for
(issue 47: the cost of measuring change in one space), interleaved round by round.

The follow-up is the case's FLAIR under a known rigid move (8, -5, 6 degrees; 10, -12, 6 mm), as in
tests/test_followup.py. Medians of the rounds, with the CPU's flags class, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path


def moved_copy(src: Path, out: Path) -> Path:
    """``src`` under the known rigid move (8, -5, 6 degrees about its centre; 10, -12, 6 mm), written to ``out``."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    t = sitk.Euler3DTransform()
    t.SetCenter(img.TransformContinuousIndexToPhysicalPoint([s / 2 for s in img.GetSize()]))
    t.SetRotation(*(math.radians(x) for x in (8.0, -5.0, 6.0)))
    t.SetTranslation((10.0, -12.0, 6.0))
    sitk.WriteImage(sitk.Cast(sitk.Resample(img, img, t, sitk.sitkLinear, 0), img.GetPixelID()), str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--case", default=str(Path(__file__).resolve().parents[2] / "shared/data/brats-dev/BraTS-GLI-00000-000")
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--spaces", default="", help="measuring spaces to time side by side (default: the module's)")
    a = ap.parse_args()
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(a.threads)
    from tumorseg.engines.hardware import cpu_info
    from tumorseg.followup.comparison import compare
    from tumorseg.followup.registration import register
    from tumorseg.followup.reports import write_outputs
    from tumorseg.inference import Predictor
    from tumorseg.studies import read_study

    case = Path(a.case)
    src = case / f"{case.name}_flair.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        moved = moved_copy(src, Path(tmp) / "later_flair.nii.gz")
        pred = Predictor(engine=a.engine, threads=a.threads)
        pred.predict_study(src)  # warm the engine once
        import tumorseg.followup.comparison as followup

        spaces = [x for x in a.spaces.split(",") if x] or [followup.SPACE]
        reg_s, reg_nomirror_s, whole = [], [], {sp: [] for sp in spaces}
        for r in range(a.rounds):
            s0, s1 = read_study(src), read_study(moved)
            t0 = time.perf_counter()
            register(s0, s1)
            reg_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            register(s0, s1, mirror_test=False)
            reg_nomirror_s.append(time.perf_counter() - t0)
            for sp in spaces:
                t0 = time.perf_counter()
                fu = compare(pred, src, moved, interval_days=91, space=sp)
                write_outputs(fu, Path(tmp) / f"out{r}_{sp}")
                whole[sp].append(time.perf_counter() - t0)
        whole_s = whole[followup.SPACE] if followup.SPACE in whole else whole[spaces[0]]
    cpu = cpu_info().as_dict()
    out = {
        "case": case.name,
        "slices": int(s0.n_slices),
        "threads": a.threads,
        "engine": pred.engine.name,
        "cpu": {"model": cpu.get("model"), "flags_class": cpu.get("flags_class")},
        "registration_s": {"median": statistics.median(reg_s), "all": reg_s},
        "registration_without_mirror_test_s": {"median": statistics.median(reg_nomirror_s), "all": reg_nomirror_s},
        "whole_followup_s": {"median": statistics.median(whole_s), "all": whole_s},
        "whole_followup_by_space_s": {sp: {"median": statistics.median(v), "all": v} for sp, v in whole.items()},
        "goal_s": 30,
    }
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
