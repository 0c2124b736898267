"""The README's table of model-v3 candidates, from the result files `research/v3/model_v3.sh` wrote.

    python research/v3/candidates_table.py [--results research/v3/results]

One row per candidate that has a validation comparison (robustness_v2_<tag>_val.json): paired per-patient
3D Dice minus v2's on the original slices with its interval, on the two FLAIR-only conditions, and, where
they exist (read only after each decision), on the test patients and brats-dev's means. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

WHAT = {  # one line each; the recipes are in research/v3/model_v3.sh and the model card
    "v3": "2.5D fine-tune of v2, neighbour weights from zero",
    "v3b": "2.5D, neighbours from FLAIR's weights, 50× faster",
    "v3c": "v3b's recipe in 2D (the matched ablation)",
    "v3d": "v3c with a four-stage decoder (faster int8)",
    "v3e": "v3d with per-image Dice (finds faint ends)",
    "v3f": "weight average of v3d and v3e (a soup)",
    "v3g": "halfway from v2 to v3b in weight space (WiSE-FT)",
    "v3h": "v2 and v3d in one file, logits averaged (1.8× v2's time)",
}


def _d(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _ci(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{_d(p['mean_difference'])} ({_d(lo)}, {_d(hi)})"


def _external(path: Path) -> str:
    if not path.is_file():
        return "–"
    s = json.loads(path.read_text())["summary"]
    return f"{s['three_sequences']['mean_dice']:.3f} / {s['flair_only']['mean_dice']:.3f}"


def table(results: Path) -> str:
    tags = sorted(
        (
            m.group(1)
            for f in results.glob("robustness_v2_*_val.json")
            if (m := re.match(r"robustness_v2_(v3\w*)_val", f.stem))
        ),
        key=lambda t: (len(t), t),
    )
    v2 = _external(results / "external_brats_dev_v2_int8.json")
    rows = [
        "| candidate | what it is | val, original | val, FLAIR only / stripped | test (after) "
        f"| brats-dev 3 seq / FLAIR (v2 {v2}) |",
        "|---|---|---|---|---|---|",
    ]
    for t in tags:
        val = json.loads((results / f"robustness_v2_{t}_val.json").read_text())["paired"]
        test = results / f"v2_vs_{t}_test.json"
        after = _ci(json.loads(test.read_text())["paired"]) if test.is_file() else "–"
        flair = f"{_d(val['flair_only']['mean_difference'])} / {_d(val['flair_only_stripped']['mean_difference'])}"
        ext = _external(results / f"external_brats_dev_{t}.json")
        rows.append(f"| {t} | {WHAT.get(t, '')} | {_ci(val['original'])} | {flair} | {after} | {ext} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="research/v3/results")
    print(table(Path(ap.parse_args().results)))


if __name__ == "__main__":
    main()
