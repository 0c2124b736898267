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


def gemm_ceiling(threads: int, runs: int = 20) -> float:
    """G operations/s of one large int8 convolution (1x1, 1024 -> 1024 channels, 64x64) quantised the same way:
    what onnxruntime reaches on this CPU when the arithmetic is all there is, to compare the model against."""
    import io

    import onnxruntime as ort
    import torch

    from tumorseg.nn.quantize import quantize_qdq

    conv = torch.nn.Conv2d(1024, 1024, 1).eval()
    buf = io.BytesIO()
    torch.onnx.export(conv, (torch.zeros(1, 1024, 64, 64),), buf, input_names=["x"], opset_version=17, dynamo=False)
    x = np.random.default_rng(0).random((1, 1024, 64, 64)).astype(np.float32)

    q = quantize_qdq(buf.getvalue(), [{"x": x}])
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ceiling")
        sess = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
        for _ in range(3 + runs):
            sess.run(None, {"x": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    # the convolution kernel alone (the input's quantisation and output's dequantisation left out)
    ts = [
        e["dur"] / 1e6
        for e in events
        if e.get("cat") == "Node"
        and e.get("args", {}).get("op_name") == "QLinearConv"
        and e["name"].endswith("_kernel_time")
    ]
    return 2.0 * 1024 * 1024 * 64 * 64 / float(np.median(ts)) / 1e9


PARTS = (("encoder", "encoder"), ("decoder", "decoder"), ("blocks.", "decoder"), ("head", "head"))


def conv_operations(size: int) -> float:
    """2 x multiply-adds of every convolution of the export form (the graph the int8 file was built from)."""
    import torch

    from tumorseg.engines.bundled import bundled_model_path
    from tumorseg.nn.export_form import export_form
    from tumorseg.nn.serialise import load_model

    net, _ = load_model(bundled_model_path())
    total = [0.0]

    def hook(mod, _inp, out):
        total[0] += 2.0 * out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    form = export_form(net, size)
    for m in form.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        form(torch.zeros(1, 3, size, size))
    return total[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    import onnxruntime as ort

    from tumorseg.engines import bundled

    q = bundled.bundled_model_path().with_name("default-int8.onnx")
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
    conv_ops = conv_operations(256) * runs
    tot = sum(by_op.values()) / runs / 1000
    res = {
        "threads": a.threads,
        "runs": runs,
        "kernel_ms_per_run": tot,
        "by_op_ms": {k: v / runs / 1000 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "by_part_ms": {k: v / runs / 1000 for k, v in sorted(by_part.items(), key=lambda kv: -kv[1])},
        "conv_gop_per_run": conv_ops / runs / 1e9,
        "conv_gops_achieved": conv_ops / (by_op.get("QLinearConv", 0) / 1e6) / 1e9 if conv_ops else None,
    }
    print(f"kernel time per run: {tot:.1f} ms ({runs} runs, {a.threads} threads)")
    for k, v in list(res["by_op_ms"].items())[:12]:
        print(f"  {k:28s} {v:7.2f} ms  {100 * v / tot:5.1f} %")
    for k, v in res["by_part_ms"].items():
        print(f"  part {k:23s} {v:7.2f} ms  {100 * v / tot:5.1f} %")
    res["reference_int8_conv_gops"] = gemm_ceiling(a.threads)
    if conv_ops:
        print(
            f"  int8 convolutions: {res['conv_gop_per_run']:.1f} G operations per slice at "
            f"{res['conv_gops_achieved']:.0f} G operations/s; one large int8 1x1 convolution (1024 -> 1024 "
            f"channels, 64x64, kernel time) reaches {res['reference_int8_conv_gops']:.0f} G operations/s here"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
