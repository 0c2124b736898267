"""Turn a finished training run into the bundled default model.

    python scripts/package_model.py --run runs/main --data ../shared/data/lgg-kaggle_3m [--int8]
    python scripts/package_model.py --int8-only --data ../shared/data/lgg-kaggle_3m   # rebuild the int8 twin

Chooses the threshold and the 2D small-component filter on the VALIDATION patients only
(the model is run once on them, the grid is swept on cached probabilities), stores the
weights as fp16 after checking that validation Dice moves by less than 0.002, and writes
src/tumorseg/models/default.safetensors with a sha256 sidecar. Test patients are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tumorseg.engines.loading import load_engine
from tumorseg.imaging.files import file_sha256
from tumorseg.model.postprocess import PostProcess
from tumorseg.nn.serialise import load_model, read_model_file, save_model
from tumorseg.train.data import discover, load_cases, load_split
from tumorseg.train.evaluation import choose_postprocess, stack_metrics

THREADS = 0


def val_probs(model_path: Path, data: str, split: dict, engine: str, tta: str | None = None):
    eng = load_engine(model_path, engine, THREADS)
    cases = [c for c in discover(data) if c.patient in set(split["val"])]
    ds = load_cases(cases, eng.size)
    return ds, eng.run_stack(ds.images, ds.groups(), tta=tta)  # each patient one stack (2.5D context)


def score(ds, probs, thr: float, min_px: int, masks=None, low: float = 0.0) -> dict:
    """Metrics of the masks the Predictor would deliver at this threshold, component size and hysteresis."""
    post = PostProcess(thr, min_px, probs.shape[-1], low)
    return stack_metrics(probs, ds.masks if masks is None else masks, ds.patients, post)


def condition_probs(model_path: Path, ds, conditions: list[str], engine: str, tta: str = "none") -> dict:
    """Validation probabilities under each robustness condition (original included), with their masks."""
    from tumorseg.train.robustness import transformed

    eng = load_engine(model_path, engine, THREADS)
    out = {}
    for cond in conditions:
        imgs, masks = transformed(ds, cond)
        out[cond] = (eng.run_stack(imgs, ds.groups(), tta=tta), masks)
    return out


def int8_step(
    out: Path, data: str, split: dict, thr: float, mpx: int, threads: int, info: dict, low: float = 0.0
) -> None:
    """Build the int8 ONNX file beside the model (calibrated on training patients only), check it against
    torch-fp32 on the validation patients, and record which engine is the default."""
    from tumorseg.engines.runners import OnnxEngine
    from tumorseg.imaging.files import atomic_write_bytes
    from tumorseg.model.info import ModelInfo
    from tumorseg.nn.onnx_export import onnx_model
    from tumorseg.train.export import calibration_slices

    _, meta16 = read_model_file(out)
    net16, _ = load_model(out)
    spec = ModelInfo.from_meta(meta16).input
    calib = calibration_slices(data, spec.size, split=meta16, context=spec.context)  # training patients only
    q = onnx_model(net16, meta16, "onnx-int8", calib)
    qpath = out.with_name(out.stem + "-int8.onnx")
    atomic_write_bytes(qpath, q)
    qeng = OnnxEngine(out, meta16, q, threads, "onnx-int8")
    ds, pe = val_probs(out, data, split, "torch-fp32")
    pq = qeng.run_stack(ds.images, ds.groups())
    d32, dq = score(ds, pe, thr, mpx, low=low)["dice"], score(ds, pq, thr, mpx, low=low)["dice"]
    agree = float(((pq >= thr) == (pe >= thr)).mean())
    passed = abs(dq - d32) <= 0.005 and agree >= 0.995
    info.setdefault("engines_val_dice", {})["torch-fp32"] = d32
    info["engines_val_dice"]["onnx-int8"] = dq
    info["int8"] = {
        "file": qpath.name,
        "sha256": file_sha256(qpath),
        "bytes": qpath.stat().st_size,
        "calibration": f"{len(calib)} slices of training patients",
        "val_dice": dq,
        "val_dice_fp32": d32,
        "val_pixel_agreement_with_fp32": agree,
        "passed": passed,
        "check": "|Dice - fp32| <= 0.005 and pixel agreement >= 99.5 % on validation",
    }
    info["default_engine"] = "onnx-int8" if passed else "torch-bf16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="the training run folder (not needed with --int8-only)")
    ap.add_argument("--data", required=True)
    ap.add_argument(
        "--engine",
        default="torch-bf16",
        choices=["torch-bf16", "torch-fp32", "onnx-fp32"],
        help="engine of the validation runs (default: %(default)s, which a CPU without native bf16 emulates "
        "several times slower than fp32: use onnx-fp32 there)",
    )
    ap.add_argument("--out", default="src/tumorseg/models/default.safetensors")
    ap.add_argument("--int8", action="store_true", help="also build and check the int8 ONNX model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--split-file",
        default="",
        help="choose the post-processing on this split file's validation patients instead of the run's own "
        "(a run trained without a validation part, e.g. with --select last); recorded as the model's val part",
    )
    ap.add_argument(
        "--int8-only",
        action="store_true",
        help="only (re)build and check the int8 file for the already packaged --out model",
    )
    ap.add_argument(
        "--tta",
        default="none,hflip",
        help="test-time views tried on validation (model.info.TTA_VIEWS), the best goes into the model (default: %(default)s)",
    )
    ap.add_argument(
        "--select-on",
        default="original",
        help="validation conditions (robustness suite) whose mean objective picks the threshold and "
        "component size, e.g. original,skull_stripped,flair_only (default: original)",
    )
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    torch.set_num_threads(a.threads or torch.get_num_threads())
    if a.int8_only:
        out = Path(a.out)
        _, m = read_model_file(out)
        info = json.loads(out.with_suffix(".json").read_text())
        int8_step(
            out,
            a.data,
            m["training"]["split"],
            float(m["threshold"]),
            int(m["min_component_pixels"]),
            a.threads,
            info,
            float(m.get("hysteresis_low", 0.0)),
        )
        out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        print(json.dumps(info, indent=1))
        return
    if not a.run:
        ap.error("--run is required (unless --int8-only)")
    run = Path(a.run)
    best = run / "best.safetensors"
    _, meta = read_model_file(best)
    split = load_split(run / "split.json")
    if a.split_file:
        chosen_on = load_split(a.split_file)["val"]
        overlap = sorted(set(chosen_on) & set(split["train"]))
        if overlap:
            ap.error(f"--split-file: validation patients the run trained on: {overlap[:5]}")
        split = {**split, "val": sorted(chosen_on)}
    if not split["val"]:
        ap.error(f"{run}: its split has no validation patients to choose on; give --split-file")
    conds = [c for c in a.select_on.split(",") if c]
    by_tta = {}
    for tta in a.tta.split(","):
        ds, p_orig = val_probs(best, a.data, split, a.engine, tta)
        by_tta[tta] = (p_orig, condition_probs(best, ds, [c for c in conds if c != "original"], a.engine, tta))
    views = {tta: {"original": (p, ds.masks), **extra} for tta, (p, extra) in by_tta.items()}
    choice, grid = choose_postprocess(views, ds.patients, conds)
    print(json.dumps(choice), file=sys.stderr)

    net, _ = load_model(best)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    meta["threshold"] = choice["threshold"]
    meta["min_component_pixels"] = choice["min_component_pixels"]
    meta["hysteresis_low"] = choice["hysteresis_low"]
    meta["tta"] = choice["tta"]
    probs = by_tta[choice["tta"]][0]
    meta["training"]["split"] = split
    meta["training"]["epochs_run"] = len(log)
    meta["training"]["wall_clock_hours"] = round(sum(r["epoch_seconds"] for r in log) / 3600, 2)
    meta["metrics"]["val_selection"] = choice
    meta["metrics"]["val_grid"] = grid
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net, out, meta, dtype=torch.float16)
    # fp16 storage must not move validation Dice by 0.002 or more
    ds2, probs16 = val_probs(out, a.data, split, a.engine)
    thr, mpx, low = choice["threshold"], choice["min_component_pixels"], choice["hysteresis_low"]
    d32 = score(ds, probs, thr, mpx, low=low)["dice"]
    d16 = score(ds2, probs16, thr, mpx, low=low)["dice"]
    print(f"val Dice fp32 weights {d32:.5f}, fp16 weights {d16:.5f}", file=sys.stderr)
    if abs(d32 - d16) >= 0.002:
        save_model(net, out, meta)
        print("fp16 moved Dice too much: stored fp32", file=sys.stderr)
    info = {
        "file": out.name,
        "sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "val_dice_fp32_weights": d32,
        "val_dice_stored": d16,
        "selection": choice,
        "engines_val_dice": {},
    }
    # Engines on the validation patients: which may serve as default (within 0.005 of torch-fp32)?
    info["engines_val_dice"][a.engine] = d16  # the stored model's check above used --engine
    dse, pe = val_probs(out, a.data, split, "torch-fp32")
    info["engines_val_dice"]["torch-fp32"] = score(dse, pe, thr, mpx, low=low)["dice"]
    if a.int8:
        int8_step(out, a.data, split, thr, mpx, a.threads, info, low)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
