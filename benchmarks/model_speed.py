"""Two model files on one engine, side by side: median ms per slice over alternating rounds on the same slices
(a new model must stay within 10 % of the bundled one's time per slice).

    python benchmarks/model_speed.py --model v2=V2-int8.onnx --model v5=src/tumorseg/models/default-int8.onnx \
        [--threads 2] [--rounds 5] [--json benchmarks/results/model_speed_v2_v5.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from tumorseg.engines.hardware import machine_record
from tumorseg.engines.loading import load_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE (twice or more)")
    ap.add_argument("--engine", default="onnx-int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    engines = {}
    for spec in a.model:
        name, _, path = spec.partition("=")
        engines[name] = load_engine(path, a.engine, a.threads)
    size = next(iter(engines.values())).size
    x = (np.random.default_rng(0).random((a.slices, size, size, 3)) * 255).astype(np.uint8)
    for e in engines.values():
        e.run(x[:4])  # warm
    times: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(a.rounds):
        for n, e in engines.items():  # alternating: the machine's noise falls on both alike
            t = time.perf_counter()
            for s in range(0, a.slices, 8):
                e.run(x[s : s + 8])
            times[n].append((time.perf_counter() - t) / a.slices * 1000)
    med = {n: statistics.median(v) for n, v in times.items()}
    first = next(iter(med))
    out = {
        "engine": a.engine,
        "machine": machine_record(a.threads),
        "ms_per_slice_median": med,
        "ratio_to_first": {n: m / med[first] for n, m in med.items()},
        "all_ms": times,
    }
    print(json.dumps({k: out[k] for k in ("ms_per_slice_median", "ratio_to_first")}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
