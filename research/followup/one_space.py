"""Score the six follow-up candidates of research/followup/one_space.md (the rule written before this ran).

    python research/followup/one_space.py --shared ../shared --json research/followup/one_space.json
    python research/followup/one_space.py --candidates own --kinds unchanged --threads 2 \
        --json research/followup/band_v5.json     # the band of the bundled model in the chosen space

Unchanged pairs (repeatability) and known-change pairs (error against the truth); every candidate sees the same
pairs, one registration per pair, and each segmentation is computed once and shared between candidates (a cache
keyed by the volume's bytes and the flips), so the candidates differ only in where the change is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import tumorseg.followup.comparison as followup
from tumorseg.engines.hardware import machine_record
from tumorseg.imaging.files import atomic_write_bytes
from tumorseg.inference import Predictor
from tumorseg.studies import read_study

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
from hgg_known_change import shrunk  # noqa: E402  (brats-dev's known edit: one home)

from tests.test_followup import _shrunk as lgg_shrunk  # noqa: E402  (the LGG known edit: one home)

CANDIDATES = [(s, f) for s in ("own", "baseline", "halfway") for f in (False, True)]
HELD = ("Brats18_TCIA05_396_1", "Brats18_CBICA_ATV_1")
LGG_PATIENTS = ("TCGA_DU_7010_19860307", "TCGA_FG_5962_20000626")


class Cached:
    """The Predictor with each (volume, flips) segmentation computed once."""

    def __init__(self, pred):
        self.pred, self.memo, self.segmentations, self.seconds = pred, {}, 0, 0.0

    def predict_study(self, st, tta=False, on_progress=None, **kw):
        key = (hashlib.sha1(np.ascontiguousarray(st.volume).tobytes()).hexdigest(), st.volume.shape, bool(tta))
        if key not in self.memo:
            t = time.perf_counter()
            self.memo[key] = self.pred.predict_study(st, tta=tta, **kw)
            self.segmentations += 1
            self.seconds += time.perf_counter() - t
        return self.memo[key]


def moved_m1(src: Path, out: Path, thick_mm: float = 0.0) -> None:
    """M1: 5 degrees about the axial axis, 2 about the left-right one, shifted 6 / -4 / 2 voxels, resampled on the
    same grid (linear); with ``thick_mm`` the scan is first resampled to slices that thick (a clinical study)."""
    img = sitk.ReadImage(str(src))
    if thick_mm:
        sp = list(img.GetSpacing())
        size = list(img.GetSize())
        size[2] = int(round(size[2] * sp[2] / thick_mm))
        sp[2] = thick_mm
        img = sitk.Resample(
            img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), sp, img.GetDirection(), 0, img.GetPixelID()
        )
        sitk.WriteImage(img, str(out.with_name("thick_" + out.name)))
    t = sitk.Euler3DTransform()
    t.SetCenter(img.TransformContinuousIndexToPhysicalPoint([s / 2 for s in img.GetSize()]))
    t.SetRotation(math.radians(2.0), 0.0, math.radians(5.0))
    sp = img.GetSpacing()
    t.SetTranslation([6 * sp[0], -4 * sp[1], 2 * sp[2]])
    sitk.WriteImage(sitk.Cast(sitk.Resample(img, img, t, sitk.sitkLinear, 0), img.GetPixelID()), str(out))


def score_pair(pred, a, b, kind: str, name: str, true: float | None) -> list[dict]:
    rows = []
    reg_memo = {}
    real_register = followup.register

    def register_once(x, y, mirror_test=True):
        if "r" not in reg_memo:
            reg_memo["r"] = real_register(x, y, mirror_test)
        return reg_memo["r"]

    followup.register = register_once
    try:
        for space, flips in CANDIDATES:
            s = followup.compare(pred, a, b, space=space, flips=flips).summary
            v0 = s["measured_in"]["volume_ml"]["baseline"]
            rows.append(
                {
                    "pair": name,
                    "kind": kind,
                    "candidate": space + ("+flips" if flips else ""),
                    "volume_baseline_ml": v0,
                    "volume_change_ml": s["volume_change_ml"],
                    "volume_change_relative": s["volume_change_relative"],
                    "new_ml": s["new_ml"],
                    "resolved_ml": s["resolved_ml"],
                    "true_relative": true,
                    "trusted": s["registration"]["trusted"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        followup.register = real_register
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for space, flips in CANDIDATES:
        c = space + ("+flips" if flips else "")
        un = [r for r in rows if r["candidate"] == c and r["kind"] == "unchanged"]
        kn = [r for r in rows if r["candidate"] == c and r["kind"] == "known"]
        rel = [abs(r["volume_change_relative"] or 0.0) for r in un]
        nr = [(r["new_ml"] + r["resolved_ml"]) / r["volume_baseline_ml"] for r in un if r["volume_baseline_ml"]]
        err = [abs(r["volume_change_relative"] - r["true_relative"]) for r in kn]
        out[c] = {
            "mean_abs_volume_change": float(np.mean(rel)) if rel else None,
            "mean_new_plus_resolved": float(np.mean(nr)) if nr else None,
            "R": float(np.mean(rel) + np.mean(nr)) if rel else None,
            "E_points": 100 * float(np.mean(err)) if err else None,  # None: no known pairs scored
            "n_unchanged": len(un),
            "n_known": len(kn),
            "band": {
                "abs_volume_change_ml_p95": float(np.percentile([abs(r["volume_change_ml"]) for r in un], 95)),
                "abs_volume_change_pct_p95": 100 * float(np.percentile(rel, 95)),
                "new_ml_p95": float(np.percentile([r["new_ml"] for r in un], 95)),
                "resolved_ml_p95": float(np.percentile([r["resolved_ml"] for r in un], 95)),
            }
            if un
            else None,
        }
    return out


def decide(summary: dict) -> dict:
    """The rule: lowest R among candidates with E <= own's E; ties (0.001) to the cheaper one."""
    cost = {"own": 0, "own+flips": 4, "baseline": 1, "baseline+flips": 3, "halfway": 2, "halfway+flips": 4}
    e_own = summary["own"]["E_points"]
    eligible = [c for c, v in summary.items() if c == "own" or (v["E_points"] is not None and v["E_points"] <= e_own)]
    best = min(summary[c]["R"] for c in eligible)
    ties = [c for c in eligible if summary[c]["R"] <= best + 0.001]
    winner = min(ties, key=lambda c: cost[c])
    return {"eligible": eligible, "winner": winner, "own_E_points": e_own}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--json", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--candidates", default="", help="comma-separated (default: all six)")
    ap.add_argument("--kinds", default="unchanged,known", help="which pairs: unchanged, known")
    a = ap.parse_args()
    global CANDIDATES
    if a.candidates:
        CANDIDATES = [(c.split("+")[0], c.endswith("+flips")) for c in a.candidates.split(",")]
    kinds = set(a.kinds.split(","))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(a.threads)
    data = Path(a.shared) / "data"
    dev = sorted(p for p in (data / "brats-dev").iterdir() if p.is_dir())
    pred = Cached(Predictor(engine="onnx-int8", threads=a.threads))
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tumorseg-onespace-") as tmp:
        tmp = Path(tmp)
        unchanged = [(c.name, c / f"{c.name}_flair.nii.gz", 0.0) for c in dev]
        unchanged += [(h, data / "brats-train" / h / f"{h}_flair.nii.gz", 0.0) for h in HELD]
        unchanged += [(f"{c.name}@5mm", c / f"{c.name}_flair.nii.gz", 5.0) for c in dev[:3]]
        for name, flair, thick in unchanged if "unchanged" in kinds else []:
            out = tmp / f"{name.replace('@', '_')}_m1.nii.gz"
            moved_m1(flair, out, thick)
            base = out.with_name("thick_" + out.name) if thick else flair
            rows += score_pair(pred, read_study(base), read_study(out), "unchanged", name, 0.0)
        for c in dev if "known" in kinds else []:
            true = shrunk(c, tmp / f"{c.name}_shrunk")
            rows += score_pair(pred, read_study(c), read_study(tmp / f"{c.name}_shrunk"), "known", c.name, true)
        lgg = data / "lgg-kaggle_3m" / "kaggle_3m"
        sp = (0.94, 0.94, 3.0)
        for p in LGG_PATIENTS if "known" in kinds else []:
            true = lgg_shrunk(lgg / p, tmp / f"{p}_later", 3)
            a_st, b_st = read_study(lgg / p, spacing=sp), read_study(tmp / f"{p}_later", spacing=sp)
            rows += score_pair(pred, a_st, b_st, "known", p, true)
    summary = summarise(rows)
    result = {
        "summary": summary,
        "decision": decide(summary) if kinds == {"unchanged", "known"} and not a.candidates else None,
        "model": pred.pred.engine_line(),
        "segmentations": pred.segmentations,
        "segmentation_seconds": pred.seconds,
        "wall_seconds": time.perf_counter() - t0,
        "machine": machine_record(a.threads),
        "rows": rows,
    }
    print(json.dumps({k: result[k] for k in ("summary", "decision", "model")}, indent=1))
    if a.json:
        atomic_write_bytes(Path(a.json), (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
