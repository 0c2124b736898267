"""The input checks on a dataset: each statistic's range and what each check refuses or warns about.

    python scripts/input_checks.py --data ../shared/data/lgg-kaggle_3m [--json out.json]

On the shared LGG slices no slice may be refused (tests/test_input_checks.py asserts it).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from tumorseg.imaging.images import read_image, to_uint8_rgb
from tumorseg.model.input_checks import CannotJudge, judge, neighbour_correlation
from tumorseg.train.data import discover


def run(data: str) -> dict:
    refusals: Counter = Counter()
    warnings: Counter = Counter()
    corr, mean = [], []
    n = 0
    for case in discover(data):
        for s in case.slices:
            raw = read_image(s.image)
            img = to_uint8_rgb(raw)
            n += 1
            gray = img.astype(np.float32).mean(2)
            corr.append(neighbour_correlation(gray))
            mean.append(float(gray.mean()))
            try:
                for w in judge(raw, img, str(s.image)):
                    warnings[w.split(":")[0]] += 1
            except CannotJudge as exc:
                refusals[exc.reason.split("(")[0].strip()] += 1
    pct = [0, 1, 50, 99, 100]
    return {
        "slices": n,
        "refused": sum(refusals.values()),
        "refusals": dict(refusals),
        "warnings": dict(warnings),
        "neighbour_correlation_percentiles": dict(zip(map(str, pct), np.percentile(corr, pct).round(3).tolist())),
        "mean_intensity_percentiles": dict(zip(map(str, pct), np.percentile(mean, pct).round(1).tolist())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    r = run(a.data)
    print(json.dumps(r, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
