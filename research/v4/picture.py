"""A high-grade case before/after for the model card: FLAIR, the truth's outline, v2's and v4's masks.

    python research/v4/picture.py --case ../shared/data/brats-dev/BraTS-GLI-00000-000 \
        --model v2=src/tumorseg/models/default-int8.onnx --model v4=runs/v4/default-int8.onnx \
        --out research/v4/hgg_before_after.png

Each model runs as a user would (``Predictor.predict_study`` on the case folder: its sequences, FLAIR filling a
missing one); the slice shown is the truth's largest, turned as the page shows studies (radiological).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tumorseg.imaging.geometry import display_turn, turned
from tumorseg.imaging.images import write_png
from tumorseg.imaging.render import contour_overlay
from tumorseg.inference import Predictor
from tumorseg.model.metrics import dice_score
from tumorseg.studies import read_reference, read_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    case = Path(a.case)
    st = read_study(case)
    truth = read_reference(case / f"{case.name}_seg.nii.gz", st)
    k = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(1)))
    t = display_turn(st)
    flair = np.repeat(st.volume[k][..., 1:2], 3, -1)
    panels = [turned(contour_overlay(flair, truth[k], color=(0, 220, 255)), t)]
    for spec in a.model:
        name, path = spec.split("=", 1)
        sp = Predictor(path, engine="onnx-int8").predict_study(st)
        m = sp.mask
        d = dice_score(int((m & truth).sum()), int((m & ~truth).sum()), int((~m & truth).sum()))
        print(f"{name}: whole-tumour 3D Dice {d:.3f} on {case.name}")
        panels.append(turned(contour_overlay(flair, m[k], color=(255, 60, 60)), t))
    row = np.concatenate([np.pad(p[..., :3], ((0, 0), (0, 4), (0, 0))) for p in panels], 1)
    write_png(a.out, row)


if __name__ == "__main__":
    main()
