"""The training slices' brain median per channel, which whole studies are standardised to.

    python scripts/intensity_reference.py --data ../shared/data/lgg-kaggle_3m --split-file docs/results/split.json

Brain = head pixels deeper than 10 px (io.head_depth), on the middle half of each training patient's
slices (every third). The result is io.LGG_BRAIN_MEDIAN.
"""

from __future__ import annotations

import argparse

import numpy as np

from tumorseg.imaging.images import read_image, to_uint8_rgb
from tumorseg.imaging.intensity import head_depth
from tumorseg.train.data import discover, load_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    a = ap.parse_args()
    train = set(load_split(a.split_file)["train"])
    vals = []
    for case in discover(a.data):
        if case.patient not in train:
            continue
        n = len(case.slices)
        for s in case.slices[n // 4 : 3 * n // 4 : 3]:
            img = to_uint8_rgb(read_image(s.image))
            vals.append(img[head_depth(img) > 10])
    v = np.concatenate(vals)
    print("brain median per channel (pre-contrast, FLAIR, post-contrast):", np.median(v, axis=0).tolist())
    print("percentiles 25/75:", np.percentile(v, [25, 75], axis=0).tolist())


if __name__ == "__main__":
    main()
