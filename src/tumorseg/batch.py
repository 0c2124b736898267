"""`tumorseg predict`: many inputs, one line per failure, never overwriting an input."""

from __future__ import annotations

import csv
import glob
import io as _io
import os
import sys
from pathlib import Path

from .io import IMAGE_EXTENSIONS, ImageReadError, atomic_write_bytes, write_png


def is_study(p) -> bool:
    from .studies import is_study_source

    return isinstance(p, dict) or is_study_source(p)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (their images, or the folder itself when it is a study) and globs."""
    found: list[Path] = []
    errors: list[tuple[str, str]] = []
    for raw in inputs:
        # An existing file is itself, even when its name holds glob characters (scan[1].tif).
        literal = Path(raw).exists() or not any(c in raw for c in "*?[")
        matches = [Path(raw)] if literal else [Path(m) for m in sorted(glob.glob(raw))]
        if not matches:
            errors.append((raw, "no file matches this pattern"))
            continue
        for p in matches:
            if not p.exists():
                errors.append((str(p), "file not found"))
            elif p.is_dir() and not is_study(p):
                imgs = [
                    q
                    for q in sorted(p.iterdir())
                    if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask")
                ]
                if not imgs:
                    errors.append((str(p), "folder holds no images"))
                found += imgs
            else:
                found.append(p)
    return found, errors


def _out_name(p, used: set[str]) -> str:
    if isinstance(p, dict):  # one study from per-sequence files: named after the case
        import re

        p = p["flair"] if "flair" in p else next(iter(p.values()))
        name = re.sub(
            r"[_\-.](flair|t2f|t2-?flair|0000)$", "", re.sub(r"\.nii(\.gz)?$", "", p.name, flags=re.I), flags=re.I
        )
        p = Path(name + ".nii")
    name = p.name
    for suf in (".nii.gz", *IMAGE_EXTENSIONS, ".nii", ".zip", ".dcm"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    name = "".join(c if c.isalnum() or c in "-_. ()+" else "_" for c in name).strip() or "image"
    base, k = name, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def _compare(pred, ref, spacing, a) -> dict:
    from .metrics import compare_masks

    return {"reference": str(a.reference), **compare_masks(pred, ref, spacing)}


def predict_inputs(a) -> int:
    """Run the CLI's predict command; returns the exit code."""
    from tqdm import tqdm

    from .inference import DISCLAIMER, Predictor

    out = Path(a.out)
    files, errors = expand_inputs(a.inputs)
    seqs = {k: getattr(a, k, None) for k in ("t1", "flair", "t1c")}
    if any(seqs.values()):
        missing = [v for v in seqs.values() if v and not Path(v).is_file()]
        if missing:
            errors += [(m, "file not found") for m in missing]
        else:
            files.append({k: Path(v) for k, v in seqs.items() if v})
    if not files and not errors:
        print("tumorseg predict: error: no inputs (give files, folders or --flair)", file=sys.stderr)
        return 2
    inputs_resolved = {q.resolve() for f in files for q in (f.values() if isinstance(f, dict) else [f])}
    if out.exists() and not out.is_dir():
        print(f"tumorseg predict: error: {out}: exists and is not a folder", file=sys.stderr)
        return 2
    if out.resolve() in {q.parent.resolve() for q in inputs_resolved if q.is_file()}:
        print(
            f"tumorseg predict: error: {out}: is an input folder; choose another --out so inputs are never overwritten",
            file=sys.stderr,
        )
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tumorseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"tumorseg predict: error: {out}: cannot write results there ({exc.strerror or exc})", file=sys.stderr)
        return 2
    if not files:
        for src, msg in errors:
            print(f"error: {msg if msg.startswith(src) else f'{src}: {msg}'}", file=sys.stderr)
        print("tumorseg predict: error: no input could be read; nothing was processed", file=sys.stderr)
        return 2
    pred = Predictor(a.model, engine=a.engine, threads=a.threads, threshold=a.threshold)
    print(f"tumorseg: {pred.engine_line()}", file=sys.stderr)
    rows = []
    used: set[str] = set()
    if getattr(a, "reference", None) and len(files) != 1:
        print("tumorseg predict: error: --reference needs exactly one input", file=sys.stderr)
        return 2
    compared = None

    def label(f) -> str:
        return " + ".join(str(v) for v in f.values()) if isinstance(f, dict) else str(f)

    for f in tqdm(files, desc="segmenting", unit="file", disable=len(files) < 2, file=sys.stderr):
        name = _out_name(f, used)
        try:
            from .studies import read_reference

            if is_study(f):
                from .studies import write_study_outputs

                sp = pred.predict_study(
                    f,
                    series=a.series,
                    tta=a.tta,
                    min_component_mm3=a.min_component_mm3,
                    progress=True,
                    spacing=a.spacing,
                )
                write_study_outputs(sp, out / name, inputs_resolved)
                if getattr(a, "reference", None):
                    compared = _compare(sp.mask, read_reference(Path(a.reference), sp.study), sp.study.spacing, a)
                m = sp.measurements
                rows.append(
                    {
                        "file": label(f),
                        "tumour_pixels": m["tumour_voxels"],
                        "area_mm2": "",
                        "volume_ml": "" if m["volume_ml"] is None else f"{m['volume_ml']:.3f}",
                        "max_probability": f"{float(sp.prob.max()):.4f}",
                        "outputs": f"{name}/",
                        "warnings": " | ".join(n for n in sp.study.notes),
                    }
                )
                continue
            r = pred.predict(f, tta=a.tta)
            if getattr(a, "reference", None):
                compared = _compare(r.mask, read_reference(Path(a.reference), r.mask.shape), None, a)
            targets = {
                out / f"{name}_mask.png": r.mask_png_array(),
                out / f"{name}_overlay.png": r.heatmap_overlay,
                out / f"{name}_prob.png": r.prob_png_array(),
            }
            if r.uncertainty is not None:
                targets[out / f"{name}_uncertainty.png"] = (r.uncertainty.clip(0, 0.5) * 510).astype("uint8")
            for t, arr in targets.items():
                if t.resolve() in inputs_resolved:
                    raise ImageReadError(f, f"output {t} would overwrite an input")
                write_png(t, arr)
            rows.append(
                {
                    "file": str(f),
                    "tumour_pixels": r.area_pixels,
                    "area_mm2": "" if r.area_mm2 is None else f"{r.area_mm2:.2f}",
                    "volume_ml": "",
                    "max_probability": f"{r.max_prob:.4f}",
                    "outputs": f"{name}_*.png",
                    "warnings": " | ".join(r.warnings),
                }
            )
        except (ImageReadError, ValueError, OSError) as exc:
            msg = (
                str(exc)
                if label(f) in str(exc)
                or str(exc).startswith(tuple(map(str, f.values())) if isinstance(f, dict) else str(f))
                else f"{label(f)}: {exc}"
            )
            errors.append((label(f), msg))
        except Exception as exc:  # one line per bad input, never a traceback that stops the batch
            errors.append((label(f), f"{label(f)}: cannot be processed ({type(exc).__name__}: {exc})"))
    buf = _io.StringIO()
    w = csv.DictWriter(
        buf, fieldnames=["file", "tumour_pixels", "area_mm2", "volume_ml", "max_probability", "outputs", "warnings"]
    )
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "summary.csv", buf.getvalue().encode())
    if compared is not None:
        import json

        atomic_write_bytes(out / "comparison.json", (json.dumps(compared, indent=1) + "\n").encode())
        print(
            f"reference {a.reference}: Dice {compared['dice']:.4f} (model {compared['model_voxels']} voxels, "
            f"reference {compared['reference_voxels']})",
            file=sys.stderr,
        )
    for src, msg in errors:
        if not msg.startswith(src):
            msg = f"{src}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
    print(f"{len(rows)} segmented, {len(errors)} failed; results in {out} ({DISCLAIMER})", file=sys.stderr)
    if not rows and errors:
        return 2
    return 0 if not errors else 1
