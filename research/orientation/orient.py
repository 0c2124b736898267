"""Does the model's answer on BraTS NIfTI depend on the slice orientation it is fed? Dice per case, as read
(posterior at the top of each slice) and turned upright (display_transform: anterior at top, radiological)."""

import json
import sys
from pathlib import Path

import numpy as np

import tumorseg.inference
from tumorseg.imaging.geometry import display_transform
from tumorseg.inference import Predictor
from tumorseg.studies import read_reference, read_study

root = Path(sys.argv[1]) if len(sys.argv) > 1 else None

# predict_study now turns slices upright itself (geometry.model_turn, adopted by the rule in README.md); this
# script compares the two feedings explicitly, so the built-in turn is switched off here
tumorseg.inference.model_turn = lambda st: {"transpose": False, "flip_x": False, "flip_y": False}
pred = Predictor(engine="onnx-int8", threads=1)
rows = []
for case in sorted((root or Path(__file__).resolve().parents[3] / "shared/data/brats-dev").iterdir()):
    if not case.is_dir():
        continue
    ref_p = case / f"{case.name}_seg.nii.gz"
    if not ref_p.exists():
        continue
    for inp in ("flair", "all"):
        st = read_study(case / f"{case.name}_flair.nii.gz" if inp == "flair" else case)
        ref = read_reference(ref_p, st) > 0
        t = display_transform(st)
        out = {}
        for name, flip in (("as_read", False), ("upright", True)):
            s2 = read_study(case / f"{case.name}_flair.nii.gz" if inp == "flair" else case)
            if flip and t["flip_y"]:
                s2.volume = np.ascontiguousarray(s2.volume[:, ::-1])
            if flip and t["flip_x"]:
                s2.volume = np.ascontiguousarray(s2.volume[:, :, ::-1])
            sp = pred.predict_study(s2)
            m = sp.mask
            if flip and t["flip_x"]:
                m = m[:, :, ::-1]
            if flip and t["flip_y"]:
                m = m[:, ::-1]
            out[name] = 2 * (m & ref).sum() / max(1, m.sum() + ref.sum())
        rows.append({"case": case.name, "input": inp, "flip_x": t["flip_x"], "flip_y": t["flip_y"], **out})
        print(json.dumps(rows[-1]), flush=True)
for inp in ("flair", "all"):
    r = [x for x in rows if x["input"] == inp]
    print(inp, "mean as_read", np.mean([x["as_read"] for x in r]), "upright", np.mean([x["upright"] for x in r]))
