"""Decoder variants side by side: eager fp32 and int8 latency per slice, and their ratio, in one run.

    python benchmarks/decoder_speed.py --model v2=src/tumorseg/models --model v3d=runs/v3d --threads 2
    python benchmarks/decoder_speed.py --random --data ../shared/data/lgg-kaggle_3m --threads 2

Each --model is a packaged folder (default.safetensors and its default-int8.onnx, as package_model.py
writes them). --random times the five-stage (paper) and the four-stage decoder with seeded random
weights instead (speed only: int8 calibrated on 64 training slices), which needs no trained model. The
models take turns over --rounds rounds because this machine slows down in bursts; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tumorseg.engines.hardware import cpu_info
from tumorseg.engines.loading import load_engine
from tumorseg.engines.runners import OnnxEngine, TorchEngine
from tumorseg.nn.onnx_export import onnx_model

DECODERS = {"5 stages (paper, v2)": (256, 128, 64, 32, 16), "4 stages (no full-resolution conv)": (256, 128, 64, 32)}


def random_engines(data: str, threads: int) -> dict:
    import torch

    from tumorseg.nn.unet import UNetResNet50
    from tumorseg.train.data import load_split
    from tumorseg.train.export import calibration_slices

    split = {"training": {"split": load_split("docs/results/split.json")}}
    calib = calibration_slices(data, 256, split=split)
    out = {}
    for name, ch in DECODERS.items():
        torch.manual_seed(0)
        net = UNetResNet50(3, ch).eval()
        meta = {"architecture": {"name": "unet-resnet50", "decoder_channels": list(ch)}, "input_size": 256}
        meta["normalisation"] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        q = onnx_model(net, meta, "onnx-int8", calib)
        path = Path(f"<random {name}>")
        out[name] = {
            "fp32": TorchEngine(path, meta, net, threads, False, torch.device("cpu")),
            "int8": OnnxEngine(path, meta, q, threads, "onnx-int8"),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", action="append", default=[], help="NAME=FOLDER with default.safetensors + default-int8.onnx"
    )
    ap.add_argument("--random", action="store_true", help="time the two decoders with random weights")
    ap.add_argument("--data", default="../shared/data/lgg-kaggle_3m", help="--random: calibration slices")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10, help="batch-1 runs per engine per round")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.random:
        engines = random_engines(a.data, a.threads)
    elif a.model:
        engines = {}
        for spec in a.model:
            name, _, folder = spec.partition("=")
            f = Path(folder)
            engines[name] = {
                "fp32": load_engine(f / "default.safetensors", "torch-fp32", a.threads),
                "int8": load_engine(f / "default-int8.onnx", "onnx-int8", a.threads),
            }
    else:
        ap.error("give --model NAME=FOLDER (twice) or --random")
    x = (np.random.default_rng(0).random((1, 256, 256, 3)) * 255).astype(np.uint8)
    times = {n: {k: [] for k in e} for n, e in engines.items()}
    for _ in range(a.rounds):
        for name, pair in engines.items():
            for kind, eng in pair.items():
                for _ in range(2):
                    eng.run(x)
                t0 = time.perf_counter()
                for _ in range(a.runs):
                    eng.run(x)
                times[name][kind].append((time.perf_counter() - t0) / a.runs * 1000)
    cpu = cpu_info()
    result = {
        "cpu": {"model": cpu.model, "class": cpu.flags_class, "flags": list(cpu.flags)},
        "threads": a.threads,
        "models": {},
    }
    for name, t in times.items():
        f, q = statistics.median(t["fp32"]), statistics.median(t["int8"])
        result["models"][name] = {"fp32_ms": f, "int8_ms": q, "int8_vs_fp32": f / q, "rounds_ms": t}
        print(f"{name:36s} fp32 {f:6.1f} ms   int8 {q:5.1f} ms   int8 = {f / q:.2f}x fp32", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
