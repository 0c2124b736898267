"""Where the default int8 engine spends its time: onnxruntime's profiler, by operator type and model part.

    python benchmarks/profile_int8.py [--threads 2] [--runs 20] [--json benchmarks/results/profile_int8.json]

Runs the bundled int8 model at batch 1 on a 256x256 slice, with onnxruntime profiling on, and sums
the kernel times per operator type and per part (encoder / decoder / head, from node names; "other"
is what onnxruntime added: the input's quantisation and layout transposes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

PARTS = (("encoder", "encoder"), ("decoder", "decoder"), ("blocks.", "decoder"), ("head", "head"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    import onnxruntime as ort

    from tumorseg import engines

    q = engines.bundled_model_path().with_name("default-int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(q.read_bytes(), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, 3, 256, 256)).astype(np.float32)
        name = sess.get_inputs()[0].name
        for _ in range(3 + a.runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    total_runs = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            total_runs += 1
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        node = e["name"][: -len("_kernel_time")]
        # the export form (model.UNetExportForm) names its decoder blocks "blocks.N"
        part = next((p for k, p in PARTS if k in node), "other")
        by_op[op] += e["dur"]
        by_part[part] += e["dur"]
    runs = max(1, total_runs)
    tot = sum(by_op.values()) / runs / 1000
    res = {
        "threads": a.threads,
        "runs": runs,
        "kernel_ms_per_run": tot,
        "by_op_ms": {k: v / runs / 1000 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "by_part_ms": {k: v / runs / 1000 for k, v in sorted(by_part.items(), key=lambda kv: -kv[1])},
    }
    print(f"kernel time per run: {tot:.1f} ms ({runs} runs, {a.threads} threads)")
    for k, v in list(res["by_op_ms"].items())[:12]:
        print(f"  {k:28s} {v:7.2f} ms  {100 * v / tot:5.1f} %")
    for k, v in res["by_part_ms"].items():
        print(f"  part {k:23s} {v:7.2f} ms  {100 * v / tot:5.1f} %")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
