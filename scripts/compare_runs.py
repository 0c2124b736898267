"""Compare runs epoch by epoch (e.g. ImageNet-initialised vs from scratch) from their log.jsonl.

    python scripts/compare_runs.py imagenet=runs/main/log.jsonl none=runs/scratch/log.jsonl \
        --epochs 5 --out docs/results/pretraining
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="label=path/to/log.jsonl")
    ap.add_argument("--epochs", type=int, default=0, help="compare the first N epochs (0: all common)")
    ap.add_argument("--out", required=True, help="output prefix (.md and .png are written)")
    a = ap.parse_args()
    logs = {}
    for spec in a.runs:
        label, path = spec.split("=", 1)
        logs[label] = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    n = min(len(v) for v in logs.values())
    n = min(n, a.epochs) if a.epochs else n
    labels = list(logs)
    lines = ["| epoch | " + " | ".join(f"val Dice ({k})" for k in labels) + " |", "|---|" + "---|" * len(labels)]
    for e in range(n):
        lines.append(f"| {e + 1} | " + " | ".join(f"{logs[k][e]['val_dice']:.4f}" for k in labels) + " |")
    lines.append("| best | " + " | ".join(f"{max(r['val_dice'] for r in logs[k][:n]):.4f}" for k in labels) + " |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k in labels:
        ax.plot(range(1, n + 1), [r["val_dice"] for r in logs[k][:n]], marker="o", label=f"encoder: {k}")
    ax.set(xlabel="epoch", ylabel="validation Dice (pooled)", ylim=(0, 1), title="ImageNet initialisation vs none")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
