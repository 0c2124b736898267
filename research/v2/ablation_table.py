"""The model-v2 ablation table from the GPU runs' logs and their validation robustness suites.

    python research/v2/ablation_table.py docs/results/v2_ablation > docs/results/v2_ablation/README.md

Numbers are on the 14 validation patients as packed for the GPU trip (lossy WebP, about 1 grey level
of error), at each run's best epoch and its own best threshold, without the small-component rule;
the shipped model's numbers on the lossless data are in docs/results/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONDS = ("original", "skull_stripped", "flair_only", "flair_only_stripped", "zoom_0.75")


def main() -> None:
    root = Path(sys.argv[1])
    print("# Model v2 ablation (validation patients, equal budgets per round)\n")
    print(__doc__.split("\n\n")[2].replace("\n", " ") + "\n")
    print(
        "| round | recipe | epochs run | best epoch | best val Dice | "
        + " | ".join(CONDS)
        + " | mean of original, skull-stripped, FLAIR-only |"
    )
    print("|---" * (6 + len(CONDS)) + "|")
    for rnd in ("round1", "round2"):
        robust_f = root / f"{rnd}_robust_val_packed.json"
        robust = json.loads(robust_f.read_text())["models"] if robust_f.is_file() else {}
        for d in sorted(root.glob(f"{rnd}_*/")):
            name = d.name[len(rnd) + 1 :]
            rows = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if x.strip()]
            best = max(rows, key=lambda r: r["val_dice"])
            r = robust.get(f"{name}/best.safetensors", {})
            cells = [f"{r[c]['dice']:.4f}" if c in r else "–" for c in CONDS]
            mean = (sum(r[c]["dice"] for c in CONDS[:3]) / 3) if all(c in r for c in CONDS[:3]) else None
            print(
                f"| {rnd[-1]} | {name} | {len(rows)} | {best['epoch']} | {best['val_dice']:.4f} | "
                + " | ".join(cells)
                + f" | {mean:.4f} |"
                if mean is not None
                else " | – |"
            )
    ft = root / "cpu_finetune_log.jsonl"
    if ft.is_file():
        rows = [json.loads(x) for x in ft.read_text().splitlines() if x.strip()]
        best = max(rows, key=lambda r: max(r["val_dice_by_threshold"].values()))
        from tumorseg.nn.serialise import read_model_file

        _, meta = read_model_file(Path(__file__).resolve().parents[1] / "src/tumorseg/models/default.safetensors")
        start = max(g["dice"] for g in meta["metrics"]["val_grid"] if g["min_component_pixels"] == 0)
        print(
            f"\nCPU fine-tune of the round-2 winner (160 px patches, lr 5e-5 cosine, 1 thread, lossless data): "
            f"{len(rows)} epochs, best val Dice {max(best['val_dice_by_threshold'].values()):.4f} "
            f"(threshold sweep, no component rule) against {start:.4f} for its starting point (the shipped "
            "model, same sweep, lossless data): stopped and not used."
        )


if __name__ == "__main__":
    main()
