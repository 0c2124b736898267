"""Inference engines side by side, in one run, on the same slices.

    python benchmarks/inference.py [--model M] [--data DIR] [--threads 2] [--out benchmarks/results]

Per engine (each in a fresh subprocess, so peak RSS is its own): latency per slice at
batch 1, throughput at batch 16, a 40-slice study end to end (read -> segment -> overlays ->
measurements), peak RSS, and Dice on the test patients of the model's split when --data is given.
This machine is noisy in bursts, so the engines take turns: --rounds rounds, each engine once per
round (Dice in the first round only); the reported figures are medians over all rounds' samples,
and the per-round medians are kept in the JSON. Writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"]


def _calibration(data: str | None, size: int, meta: dict) -> np.ndarray:
    """int8 calibration slices: the same ones `tumorseg export` uses (the model's training patients)."""
    if not data:
        return (np.random.default_rng(0).random((16, size, size, 3)) * 255).astype(np.uint8)
    from tumorseg.train.export import calibration_slices

    return calibration_slices(data, size, split=meta)


def default_probe(args) -> dict:
    """The engine `tumorseg` picks by default here, measured from scratch (empty cache), and what that costs."""
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-m", "tumorseg", "engines", "--json", "--threads", str(args.threads)]
        if args.model:
            cmd += ["--model", args.model]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TUMORSEG_CACHE_DIR": cache})
        wall = time.perf_counter() - t
        t = time.perf_counter()
        r2 = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TUMORSEG_CACHE_DIR": cache})
        cached_wall = time.perf_counter() - t
    if r.returncode or r2.returncode:
        return {"error": (r.stderr or r2.stderr)[-800:]}
    return {**json.loads(r.stdout), "first_use_wall_s": wall, "cached_wall_s": cached_wall}


def worker(args) -> dict:
    import resource

    import torch

    from tumorseg.engines.loading import load_engine
    from tumorseg.nn.serialise import load_model

    torch.set_num_threads(args.threads)
    from tumorseg.engines.bundled import resolve_model

    _, meta = load_model(resolve_model(args.model))
    size = int(meta.get("input_size", 256))
    calib = _calibration(args.data, size, meta) if args.engine == "onnx-int8" else None
    t0 = time.perf_counter()
    eng = load_engine(args.model, args.engine, args.threads, "cpu", calibration=calib)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x1 = (rng.random((1, size, size, 3)) * 255).astype(np.uint8)
    x16 = (rng.random((16, size, size, 3)) * 255).astype(np.uint8)
    for _ in range(3):
        eng.run(x1)
    lat = []
    for _ in range(args.runs):
        t = time.perf_counter()
        eng.run(x1)
        lat.append(time.perf_counter() - t)
    eng.run(x16)
    thr = []
    for _ in range(3):
        t = time.perf_counter()
        eng.run(x16)
        thr.append(16 / (time.perf_counter() - t))
    # 40-slice study end to end through the Predictor (read -> segment -> overlays -> measurements)
    from PIL import Image

    from tumorseg.inference import Predictor

    pred = Predictor.from_engine(eng)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "TCGA_BENCH_0001"
        folder.mkdir()
        for k in range(40):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(
                folder / f"TCGA_BENCH_0001_{k + 1}.png"
            )
            Image.fromarray(np.zeros((size, size), np.uint8)).save(folder / f"TCGA_BENCH_0001_{k + 1}_mask.png")
        study_s = []
        from tumorseg.imaging.render import heatmap_overlay

        for _ in range(3):
            t = time.perf_counter()
            sp = pred.predict_study(folder)
            _ = [heatmap_overlay(sp.images[k], sp.prob[k]) for k in range(sp.study.n_slices)]
            study_s.append(time.perf_counter() - t)
    res = {
        "engine": args.engine,
        "threads": args.threads,
        "load_s": load_s,
        "latency_ms": [v * 1000 for v in lat],
        "throughput_b16_img_s": thr,
        "study40_s": study_s,
    }
    if args.data and not args.no_dice:
        from tumorseg.train.evaluation import evaluate

        r = evaluate(
            args.data,
            model=args.model,
            split="test",
            engine=args.engine,
            threads=args.threads,
            progress=False,
            engine_obj=eng,
            keep_masks=bool(args.masks_dir),
        )
        if args.masks_dir:  # for the pixel agreement with torch-fp32, computed by the main process
            np.save(Path(args.masks_dir) / f"{args.engine}.npy", r["masks"])
        res["dice_test"] = r["metrics"]["dice"]
        res["dice_per_patient_mean_test"] = r["metrics"]["dice_per_patient_mean"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def api_worker(args) -> dict:
    """The REST round trip with the default engine: POST /api/segment for one 256x256 slice, and
    POST /api/study for a 36-slice NIfTI, through the app in process (no network), against the engine."""
    import io

    import nibabel as nib
    from fastapi.testclient import TestClient
    from PIL import Image

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    t0 = time.perf_counter()
    pred = Predictor(args.model, threads=args.threads)
    ready_s = time.perf_counter() - t0
    client = TestClient(create_app(pred))
    rng = np.random.default_rng(0)
    small = rng.random((32, 32, 3))
    img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((256, 256), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    png = buf.getvalue()
    x1 = img[None]
    for _ in range(3):
        client.post("/api/segment", files={"file": ("s.png", png)})
        pred.engine.run(x1)
    eng_ms, api_ms = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        pred.engine.run(x1)
        eng_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        r = client.post("/api/segment", files={"file": ("s.png", png)})
        api_ms.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200
    vol = (np.kron(rng.random((32, 32, 36)), np.ones((8, 8, 1))) * 1000).astype(np.int16)
    nb = io.BytesIO(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 4.0, 1.0])).to_bytes())
    study_s = []
    for _ in range(3):
        t = time.perf_counter()
        r = client.post("/api/study", files={"file": ("v.nii", nb.getvalue())})
        study_s.append(time.perf_counter() - t)
        assert r.status_code == 200
    return {
        "engine": pred.engine.name,
        "predictor_ready_s": ready_s,
        "engine_ms_median": statistics.median(eng_ms),
        "api_segment_ms_median": statistics.median(api_ms),
        "api_overhead_ms": statistics.median(api_ms) - statistics.median(eng_ms),
        "api_study36_s_median": statistics.median(study_s),
        "response_kb": len(r.content) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None, help="dataset folder: also measure Dice on the model's test patients")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="batch-1 runs per engine in total, split over the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="turns per engine (the engines alternate)")
    ap.add_argument("--no-dice", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--masks-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--engine", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--api", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.api:  # REST worker mode
        print(json.dumps(api_worker(args)))
        return
    if args.engine:  # worker mode
        print(json.dumps(worker(args)))
        return
    per_round = max(5, args.runs // args.rounds)
    samples: dict[str, list[dict]] = {}
    masks_dir = tempfile.mkdtemp(prefix="tumorseg-bench-")
    for rnd in range(args.rounds):
        for eng in args.engines.split(","):
            cmd = [sys.executable, __file__, "--engine", eng, "--threads", str(args.threads), "--runs", str(per_round)]
            if args.model:
                cmd += ["--model", args.model]
            if args.data:
                cmd += ["--data", args.data] + (["--no-dice"] if rnd else ["--masks-dir", masks_dir])
            r = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            )
            if r.returncode != 0:
                print(f"{eng}: failed\n{r.stderr[-1500:]}", file=sys.stderr)
                continue
            samples.setdefault(eng, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"round {rnd + 1}: {eng} {statistics.median(samples[eng][-1]['latency_ms']):.1f} ms", file=sys.stderr)
    masks = {e: np.load(Path(masks_dir) / f"{e}.npy") for e in samples if (Path(masks_dir) / f"{e}.npy").is_file()}
    shutil.rmtree(masks_dir, ignore_errors=True)
    rows = []
    for runs in samples.values():
        first = runs[0]
        row = {k: v for k, v in first.items() if k not in ("latency_ms", "throughput_b16_img_s", "study40_s")}
        row["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
        row["rounds"] = len(runs)
        row["latency_runs"] = sum(len(x["latency_ms"]) for x in runs)
        row["latency_ms_median"] = statistics.median(v for x in runs for v in x["latency_ms"])
        row["latency_ms_round_medians"] = [statistics.median(x["latency_ms"]) for x in runs]
        row["throughput_b16_img_s"] = statistics.median(v for x in runs for v in x["throughput_b16_img_s"])
        row["study40_s_median"] = statistics.median(v for x in runs for v in x["study40_s"])
        row["study40_s_round_medians"] = [statistics.median(x["study40_s"]) for x in runs]
        if "torch-fp32" in masks and row["engine"] in masks:
            a, b = np.unpackbits(masks["torch-fp32"], axis=1), np.unpackbits(masks[row["engine"]], axis=1)
            row["mask_agreement_test_vs_fp32"] = float((a == b).mean())
        rows.append(row)
    cmd = [sys.executable, __file__, "--api", "--threads", str(args.threads), "--runs", str(args.runs)]
    if args.model:
        cmd += ["--model", args.model]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    api = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-800:]}
    print(json.dumps(api), file=sys.stderr)
    base = next((r for r in rows if r["engine"] == "torch-fp32"), None)
    for r in rows:
        if base:
            r["speedup_latency_vs_fp32"] = base["latency_ms_median"] / r["latency_ms_median"]
            r["speedup_study_vs_fp32"] = base["study40_s_median"] / r["study40_s_median"]
            if "dice_test" in r:
                r["dice_delta_vs_fp32"] = r["dice_test"] - base["dice_test"]
    from tumorseg.engines.hardware import machine_record

    rec = machine_record(args.threads)
    machine = rec["summary"]
    probe = default_probe(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": rec, "rows": rows, "api": api, "default_probe": probe}
    (out / "inference.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Machine: {machine}. Engines take turns in {args.rounds} rounds, each in its own process; latency is the "
        f"median of {rows[0]['latency_runs'] if rows else 0} batch-1 runs after warm-up, the study the median of "
        f"{3 * args.rounds} runs.",
        "",
        "| engine | latency/slice (b=1) | vs fp32 | throughput b=16 | 40-slice study | peak RSS | Dice (test) "
        "| masks = fp32 (test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dice = f"{r['dice_test']:.4f} ({r.get('dice_delta_vs_fp32', 0):+.4f})" if "dice_test" in r else "–"
        agree = f"{100 * r['mask_agreement_test_vs_fp32']:.3f} %" if "mask_agreement_test_vs_fp32" in r else "–"
        default = " (default)" if r["engine"] == probe.get("engine") else ""
        lines.append(
            f"| {r['engine']}{default} | {r['latency_ms_median']:.1f} ms | {r.get('speedup_latency_vs_fp32', 1):.2f}x | "
            f"{r['throughput_b16_img_s']:.1f} img/s | {r['study40_s_median']:.2f} s | {r['peak_rss_mb']:.0f} MB | {dice} "
            f"| {agree} |"
        )
    if "api_segment_ms_median" in api:
        lines += [
            "",
            f"REST with the default engine ({api['engine']}), in process: POST /api/segment of one 256x256 PNG "
            f"{api['api_segment_ms_median']:.1f} ms against {api['engine_ms_median']:.1f} ms in the engine "
            f"(+{api['api_overhead_ms']:.1f} ms); POST /api/study of a 36-slice NIfTI {api['api_study36_s_median']:.2f} s; "
            f"`Predictor()` with the bundled model ready in {api['predictor_ready_s']:.2f} s.",
        ]
    if "engine" in probe:
        times = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(probe["timings_ms"].items(), key=lambda kv: kv[1]))
        lines += [
            "",
            f"Default engine chosen by the probe from an empty cache: **{probe['engine']}** ({times}); "
            f"first use {probe['first_use_wall_s']:.1f} s wall for `tumorseg engines` (timed runs "
            f"{probe['measure_run_s']:.1f} s, loading the candidates {probe['measure_load_s']:.1f} s), "
            f"{probe['cached_wall_s']:.1f} s once cached.",
        ]
    (out / "inference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
