"""Training throughput of the ResNet50 U-Net on this CPU: full slices vs patches, fp32 vs bf16.

    python benchmarks/train_throughput.py [--threads 1] [--steps 6] [--out benchmarks/results]

Every configuration runs in the same process, one after the other, on the same random
batches; reports the median images/s over the timed steps (after 2 warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tumorseg.nn.unet import UNetResNet50

CONFIGS = {  # name: (bf16 autocast, channels-last)
    "fp32": (False, False),
    "fp32+channels-last": (False, True),
    "bf16+channels-last": (True, True),
}


def step_rate(size: int, config: str, batch: int, steps: int) -> float:
    bf16, cl = CONFIGS[config]
    torch.manual_seed(0)
    m = UNetResNet50().train()
    if cl:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), 1e-4)
    x = torch.rand(batch, 3, size, size)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    rates = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            rates.append(batch / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="256,160,128")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for size in map(int, a.sizes.split(",")):
        for config in CONFIGS:
            r = step_rate(size, config, a.batch if size < 256 else 8, a.steps)
            rows.append({"size": size, "precision": config, "img_per_s": r})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["img_per_s"]
    for r in rows:
        r["vs_256_fp32"] = r["img_per_s"] / base
    from tumorseg.engines.hardware import machine_record

    rec = machine_record(a.threads) | {"torch": torch.__version__}
    machine = f"{rec['summary']}, torch {torch.__version__}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from tumorseg.train.device import precision_plan

    chosen = precision_plan(torch.device("cpu"), True)[2]
    (out / "train_throughput.json").write_text(
        json.dumps({"machine": rec, "rows": rows, "trainer_chooses": chosen}, indent=1) + "\n"
    )
    lines = [
        f"Machine: {machine}. Median images/s of {a.steps} training steps (forward+backward+Adam). "
        f"`tumorseg train` chooses here: {chosen}.",
        "",
        "| input | precision | images/s | vs 256² fp32 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['size']}² | {r['precision']} | {r['img_per_s']:.2f} | {r['vs_256_fp32']:.1f}x |" for r in rows]
    (out / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
