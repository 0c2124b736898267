"""Pictures of a lesion's faint ends, before and after: two models on the same consecutive slices.

    python research/v3/faint_ends.py --data ../shared/data/lgg-kaggle_3m --split-file docs/results/split.json \
        --part test --a v2=src/tumorseg/models/default.safetensors --b v3=NEW.safetensors \
        --out research/v3/results/faint_ends.png [--patient ID] [--slices 6]

For each chosen patient (default: the two whose tumour model A misses most, by missed voxels), the run
of consecutive slices where A misses most tumour; each column one slice (FLAIR), row 1 model A, row 2
model B: truth contour cyan, the model's mask red (A) or green (B), and per slice the Dice of each. Each
model runs as the Predictor runs it (its own context, views and post-processing, the patient one stack).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the maintained comparison tools
from compare_models import _named  # noqa: E402  NAME=MODEL, one rule for the comparison scripts
from PIL import Image, ImageDraw

from tumorseg.engines.loading import load_engine
from tumorseg.model.info import ModelInfo
from tumorseg.model.postprocess import PostProcess
from tumorseg.train.data import discover, load_cases, load_split


def _edge(m: np.ndarray) -> np.ndarray:
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def _panel(
    img: np.ndarray, truth: np.ndarray, pred: np.ndarray, colour: tuple[int, int, int], text: str
) -> Image.Image:
    rgb = np.repeat(img[..., 1:2], 3, -1).astype(np.uint8)
    rgb[_edge(pred)] = colour
    rgb[_edge(truth)] = (0, 255, 255)
    im = Image.fromarray(rgb)
    ImageDraw.Draw(im).text((4, 4), text, fill=(255, 255, 0))
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--part", default="test")
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--patient", action="append", default=None)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--engine", default="torch-fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    split = load_split(a.split_file)
    cases = {c.patient: c for c in discover(a.data) if c.patient in set(split[a.part])}
    models = [_named(a.a), _named(a.b)]
    engines = [load_engine(p, a.engine) for _, p in models]
    posts = [PostProcess.of(ModelInfo.from_meta(e.meta)) for e in engines]
    results = {}
    for pid, case in sorted(cases.items()):
        if a.patient and pid not in a.patient:
            continue
        ds = load_cases([case], engines[0].size)
        if not ds.masks.any():
            continue
        preds = [post.apply_stack(e.run_stack(ds.images)) for e, post in zip(engines, posts)]
        missed = (ds.masks & ~preds[0]).reshape(len(ds), -1).sum(1)
        results[pid] = (ds, preds, missed)
    chosen = a.patient or sorted(results, key=lambda p: -results[p][2].sum())[:2]
    rows = []
    for pid in chosen:
        ds, preds, missed = results[pid]
        n = min(a.slices, len(ds))
        start = int(np.argmax([missed[s : s + n].sum() for s in range(len(ds) - n + 1)]))
        for (name, _), pred, colour in zip(models, preds, [(255, 40, 40), (40, 255, 40)]):
            row = []
            for k in range(start, start + n):
                t, p = ds.masks[k], pred[k]
                d = 2 * (t & p).sum() / max(1, t.sum() + p.sum())
                label = (
                    f"{pid[:12]} s{ds.indices[k]} {name} Dice {d:.2f}"
                    if t.any() or p.any()
                    else f"s{ds.indices[k]} {name}"
                )
                row.append(_panel(ds.images[k], t, p, colour, label))
            rows.append(row)
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            grid.paste(im, (j * w, i * h))
    grid.save(a.out)
    print(a.out, "patients:", ", ".join(chosen))


if __name__ == "__main__":
    main()
