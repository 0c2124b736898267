"""Evaluation of a model file on a dataset split, with an optional Markdown report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..engines.loading import load_engine
from ..imaging.files import atomic_write_bytes
from ..imaging.geometry import voxel_ml
from ..imaging.images import write_png
from ..model.info import ModelInfo
from ..model.metrics import SegmentationMetrics, dice_score
from ..model.postprocess import PostProcess, drop_small, grow_into, planar_components, volume_components
from ..model.preprocess import groups_of
from ..studies import mask_to_nifti_array
from .data import DatasetError, check_no_leak, discover, load_cases, load_split

METRIC_KEYS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "accuracy",
    "dice_per_slice_mean",
    "dice_per_patient_mean",
    "dice_per_patient_median",
    "dice_per_patient_std",
    "empty_slice_fp_rate",
    "n_patients",
    "n_slices",
    "threshold",
    "model",
)

CONVENTIONS = {
    "dice": "pixel-pooled over all slices: 2TP / (2TP + FP + FN)",
    "iou": "pixel-pooled: TP / (TP + FP + FN)",
    "precision": "pixel-pooled: TP / (TP + FP)",
    "recall": "pixel-pooled: TP / (TP + FN)",
    "accuracy": "pixel-pooled: (TP + TN) / all pixels",
    "dice_per_slice_mean": "mean Dice over slices whose ground truth has tumour",
    "dice_per_patient_mean": "mean over patients of the 3D Dice of their stacked slices",
    "dice_per_patient_median": "median of the per-patient 3D Dice",
    "dice_per_patient_std": "standard deviation of the per-patient 3D Dice",
    "empty_slice_fp_rate": "share of tumour-free slices with any predicted tumour pixel",
}


def select_patients(data: str | os.PathLike, split: str, split_file: str | None, meta: dict):
    cases = discover(data)
    if split == "all":
        return cases
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be test, val, train or all, not {split!r}")
    if split_file:
        parts = load_split(split_file)
    else:
        parts = meta.get("training", {}).get("split")
        if not parts:
            raise DatasetError(
                "the model carries no patient split; pass --split-file RUN/split.json or use --split all"
            )
    check_no_leak(parts)
    wanted = set(parts[split])
    chosen = [c for c in cases if c.patient in wanted]
    if not chosen:
        raise DatasetError(f"{data}: none of the {len(wanted)} {split} patients of the split are in this folder")
    return chosen


# the post-processing grid swept on validation probabilities (packaging, cross-validation)
GRID_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
GRID_MIN_PIXELS = (0, 10, 20, 40, 80)
GRID_HYSTERESIS = (0.0, 0.1, 0.2, 0.3)  # low thresholds tried for stacks (0: off)


def stack_metrics(probs: np.ndarray, masks: np.ndarray, patients: list[str], post: PostProcess) -> dict:
    """Metrics of the masks ``post`` makes from ``probs``, each patient's run of slices one stack (as
    ``tumorseg predict`` reads a slice folder), with the per-patient 3D Dice under "patient_dice"."""

    pred = np.concatenate([post.apply_stack(probs[a:b]) for a, b in groups_of(patients)]) if len(probs) else probs > 1
    acc = SegmentationMetrics()
    acc.update(pred, masks, patients)
    return {**acc.aggregate(), "patient_dice": acc.patient_dice()}


class _Sweep:
    """``PostProcess.apply_stack`` over a whole grid for one set of probabilities, from the same pieces
    (``postprocess``'s components and hysteresis), with the expensive ones done once: the in-plane
    components per threshold, the 3D components per low threshold. Tested equal to ``PostProcess``
    row for row; a cross-validation's ~2,700 slices take minutes instead of an hour."""

    def __init__(self, probs: np.ndarray, masks: np.ndarray, patients: list[str]):

        self.probs, self.masks, self.patients, self.groups = probs, masks, patients, groups_of(patients)
        self._planar: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._volumes: dict[float, list[np.ndarray]] = {}

    def _planar_labels(self, thr: float) -> tuple[np.ndarray, np.ndarray]:
        if thr not in self._planar:
            self._planar.clear()  # the grid sweeps thresholds in order: one at a time in memory
            self._planar[thr] = planar_components(self.probs >= thr)
        return self._planar[thr]

    def _volume_labels(self, low: float) -> list[np.ndarray]:
        if low not in self._volumes:
            self._volumes[low] = [volume_components(self.probs[a:b], low) for a, b in self.groups]
        return self._volumes[low]

    def metrics(self, thr: float, min_px: int, low: float) -> dict:
        pred = drop_small(*self._planar_labels(thr), min_px) if min_px else self.probs >= thr
        if 0 < low < thr:
            for (a, b), lab3 in zip(self.groups, self._volume_labels(low)):
                if b - a >= 2 and pred[a:b].any():  # apply_stack's rule: stacks of two or more slices
                    pred[a:b] = grow_into(pred[a:b], lab3)
        acc = SegmentationMetrics()
        acc.update(pred, self.masks, self.patients)
        return acc.aggregate()


_GRID_INPUT: tuple = ()  # (views, patients, select_on) for forked grid workers: inherited, never pickled


def _grid_rows(tta: str, thr: float) -> list[dict]:
    """The grid rows of one test-time view and threshold (a unit of work of ``choose_postprocess``)."""
    views, patients, select_on = _GRID_INPUT
    conds = views[tta]
    sweeps = {c: _Sweep(*conds[c], patients) for c in dict.fromkeys(["original", *select_on])}
    rows = []
    for min_px in GRID_MIN_PIXELS:
        for low in (lo for lo in GRID_HYSTERESIS if lo < thr):
            r = sweeps["original"].metrics(thr, min_px, low)
            row = {
                "tta": tta,
                "threshold": thr,
                "min_component_pixels": min_px,
                "hysteresis_low": low,
                "dice": r["dice"],
                "dice_per_patient_mean": r["dice_per_patient_mean"],
                "empty_slice_fp_rate": r["empty_slice_fp_rate"],
            }
            objs = [r["dice"] + r["dice_per_patient_mean"]] if "original" in select_on else []
            for cond in select_on:
                if cond == "original":
                    continue
                rc = sweeps[cond].metrics(thr, min_px, low)
                row[f"{cond}_dice"] = rc["dice"]
                row[f"{cond}_dice_per_patient_mean"] = rc["dice_per_patient_mean"]
                objs.append(rc["dice"] + rc["dice_per_patient_mean"])
            row["objective"] = float(np.mean(objs))
            rows.append(row)
    return rows


def choose_postprocess(
    views: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    patients: list[str],
    select_on: list[str],
    workers: int = 1,
) -> tuple[dict, list[dict]]:
    """The test-time views, threshold, component size and 3D hysteresis that maximise the objective on
    validation probabilities: pooled plus per-patient Dice, averaged over the ``select_on`` conditions.

    ``views``: {tta: {condition: (probabilities at the model's input size, masks)}}, "original" always
    among the conditions. Returns (the chosen row, the whole grid, in a fixed order so that ties go the
    same way however many ``workers`` share it: forked processes, each one view and threshold).
    Packaging chooses on the validation patients, a cross-validation on every patient out of fold: one
    rule, so both choose alike.
    """
    global _GRID_INPUT
    units = [(tta, thr) for tta in views for thr in GRID_THRESHOLDS]
    _GRID_INPUT = (views, patients, list(select_on))
    try:
        if workers > 1 and len(units) > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(min(workers, len(units))) as pool:
                parts = pool.starmap(_grid_rows, units)
        else:
            parts = [_grid_rows(*u) for u in units]
    finally:
        _GRID_INPUT = ()
    grid = [row for part in parts for row in part]
    choice = dict(max(grid, key=lambda g: g["objective"]))
    choice["selected_on"] = list(select_on)
    return choice, grid


class Calibration:
    """Reliability bins for the expected calibration error (pixel level; a ``metrics.Accumulator`` whose
    ``aggregate`` is the ECE and ``curve`` the reliability diagram)."""

    def __init__(self, bins: int = 10) -> None:
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.count = np.zeros(self.bins)
        self.conf = np.zeros(self.bins)
        self.pos = np.zeros(self.bins)

    def update(self, prob: np.ndarray, truth: np.ndarray) -> None:
        idx = np.minimum((prob * self.bins).astype(int), self.bins - 1).ravel()
        self.count += np.bincount(idx, minlength=self.bins)
        self.conf += np.bincount(idx, weights=prob.ravel(), minlength=self.bins)
        self.pos += np.bincount(idx, weights=truth.ravel().astype(float), minlength=self.bins)

    def aggregate(self) -> float:
        n = self.count.sum()
        nz = self.count > 0
        return float(np.sum(np.abs(self.conf[nz] - self.pos[nz])) / n) if n else float("nan")

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nz = self.count > 0
        return self.conf[nz] / self.count[nz], self.pos[nz] / self.count[nz], self.count[nz]


def evaluate(
    data: str | os.PathLike,
    model: str | None = None,
    split: str = "test",
    split_file: str | None = None,
    threshold: float | None = None,
    report_dir: str | None = None,
    engine: str | None = None,
    threads: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    engine_obj=None,
    keep_masks: bool = False,
) -> dict:
    """Run a model over a split and return {'metrics', 'per_patient', 'ece'}.

    ``keep_masks`` adds 'masks': the final masks of every slice, bit-packed in order, so two engines'
    answers can be compared pixel by pixel.
    """
    eng = engine_obj or load_engine(model, engine, threads)
    meta = eng.meta
    post = PostProcess.of(ModelInfo.from_meta(meta), threshold)  # the Predictor's rule, the same object
    thr = post.threshold
    cases = select_patients(data, split, split_file, meta)
    acc = SegmentationMetrics()
    cal = Calibration()
    examples: list[tuple[float, str, np.ndarray, np.ndarray, np.ndarray]] = []
    kept: list[np.ndarray] = []
    from tqdm import tqdm

    for case in tqdm(cases, desc=f"evaluating {split}", unit="patient", disable=not progress, leave=False):
        ds = load_cases([case], eng.size)
        probs = eng.run_stack(ds.images, batch=batch_size)  # one patient = one stack (2.5D context)
        preds = post.apply_stack(probs)
        for s in range(0, len(ds), batch_size):
            imgs = ds.images[s : s + batch_size]
            truth = ds.masks[s : s + batch_size]
            prob, pred = probs[s : s + batch_size], preds[s : s + batch_size]
            acc.update(pred, truth, ds.patients[s : s + batch_size], ds.names[s : s + batch_size])
            cal.update(prob, truth)
            if keep_masks:
                kept.append(np.packbits(pred.reshape(len(pred), -1), axis=1))
            if report_dir:
                for i in range(len(imgs)):
                    if truth[i].any():
                        rec = acc.slice_records[-len(imgs) + i]
                        examples.append((rec["dice"], rec["name"], imgs[i], truth[i], pred[i]))
                examples.sort(key=lambda e: e[0])
                if len(examples) > 8:
                    examples = examples[:4] + examples[-4:]
    m = acc.aggregate()
    metrics = {k: m[k] for k in METRIC_KEYS if k in m}
    metrics["threshold"] = thr
    metrics["model"] = str(eng.model_path)
    metrics = {k: metrics[k] for k in METRIC_KEYS}
    per_patient = acc.patient_dice()
    result = {
        "metrics": metrics,
        "per_patient": per_patient,
        "ece": cal.aggregate(),
        "engine": eng.name,
        "split": split,
        "per_patient_counts": {k: v for k, v in sorted(acc.patient_full.items())},
        "counts_order": ["tp", "fp", "fn", "tn", "tumour_free_slices", "tumour_free_slices_with_fp"],
    }
    if keep_masks:
        result["masks"] = np.concatenate(kept) if kept else np.zeros((0, 0), np.uint8)
    if report_dir:
        write_report(Path(report_dir), result, acc, cal, examples, meta)
    return result


def format_table(m: dict) -> str:
    rows = [("metric", "value", "convention")]
    for k in METRIC_KEYS:
        v = m[k]
        rows.append((k, f"{v:.4f}" if isinstance(v, float) else str(v), CONVENTIONS.get(k, "")))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def _overlay_example(img: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Green: truth outline; red: prediction outline."""
    from scipy import ndimage

    out = img.copy()
    for m, col in ((truth, (0, 255, 0)), (pred, (255, 40, 40))):
        edge = m & ~ndimage.binary_erosion(m)
        out[edge] = col
    return out


def write_report(out: Path, result: dict, acc: SegmentationMetrics, cal: Calibration, examples, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    m = result["metrics"]
    pp = result["per_patient"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(list(pp.values()), bins=np.linspace(0, 1, 21), color="#3b6ea5", edgecolor="white")
    ax.set(xlabel="per-patient 3D Dice", ylabel="patients", title=f"Dice per patient (n={len(pp)})")
    fig.tight_layout()
    fig.savefig(out / "dice_histogram.png", dpi=100)
    plt.close(fig)
    conf, freq, cnt = cal.curve()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(conf, freq, marker="o")
    ax.set(
        xlabel="predicted probability",
        ylabel="observed tumour frequency",
        title=f"Reliability (ECE {result['ece']:.4f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    ex_lines = []
    for j, (d, name, img, tr, pr) in enumerate(examples):
        fn = f"example_{'worst' if j < len(examples) // 2 else 'best'}_{j}.png"
        write_png(out / fn, _overlay_example(img, tr, pr))
        ex_lines.append(f"| ![]({fn}) | {Path(name).name} | {d:.3f} |")
    lines = [
        "# Evaluation report",
        "",
        f"Model: `{Path(m['model']).name}`; engine `{result['engine']}`; split `{result['split']}`; "
        f"threshold {m['threshold']}; {m['n_patients']} patients, {m['n_slices']} slices.",
        "",
        "| metric | value | convention |",
        "|---|---|---|",
    ]
    for k in METRIC_KEYS[:10]:
        lines.append(f"| {k} | {m[k]:.4f} | {CONVENTIONS[k]} |")
    lines += [
        "",
        f"Expected calibration error (pixel level, 10 bins): {result['ece']:.4f}",
        "",
        "![per-patient Dice](dice_histogram.png) ![reliability](reliability.png)",
        "",
        "## Per patient",
        "",
        "| patient | 3D Dice | slices |",
        "|---|---|---|",
    ]
    n_sl: dict[str, int] = {}
    for r in acc.slice_records:
        n_sl[r["patient"]] = n_sl.get(r["patient"], 0) + 1
    for p, d in sorted(pp.items(), key=lambda kv: kv[1]):
        lines.append(f"| {p} | {d:.4f} | {n_sl.get(p, 0)} |")
    lines += [
        "",
        "## Worst and best tumour slices",
        "",
        "Green outline: ground truth; red outline: prediction.",
        "",
        "| overlay | slice | Dice |",
        "|---|---|---|",
        *ex_lines,
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    atomic_write_bytes(
        out / "metrics.json", (json.dumps({**m, "ece": result["ece"], "per_patient": pp}, indent=1) + "\n").encode()
    )


# --------------------------------------------------------------------------- external (BraTS-layout) cases

EXTERNAL_CONDITIONS = ("three_sequences", "flair_only")


def external_case(pred, case: Path, tmp: Path, keep_masks: bool = False) -> dict | None:
    """Whole-tumour 3D Dice of one BraTS-layout case (``<case>/<case>_{t1,flair,t1c,seg}.nii.gz``), run as a
    user would (``Predictor.predict_study``): as a 4D NIfTI in the LGG channel order (FLAIR copied in for a
    missing sequence, as the LGG set does) and as FLAIR alone; truth = seg > 0. None when the case lacks
    FLAIR or its seg. ``keep_masks``: the predicted masks are written to ``tmp`` as NIfTI (for the BraTS
    evaluation package) and their paths returned under ``mask_file``."""
    import nibabel as nib

    def load(seq: str):
        f = case / f"{case.name}_{seq}.nii.gz"
        return nib.load(str(f)) if f.is_file() else None

    flair, seg = load("flair"), load("seg")
    if flair is None or seg is None:
        return None
    t1, t1c = load("t1"), load("t1c")
    f = np.asanyarray(flair.dataobj)
    chans = [np.asanyarray(v.dataobj) if v is not None else f for v in (t1, flair, t1c)]
    truth = np.asanyarray(seg.dataobj) > 0
    p3 = tmp / f"{case.name}_3ch.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(chans, -1), flair.affine), str(p3))
    row = {
        "case": case.name,
        "sequences": [s for s, v in (("t1", t1), ("flair", flair), ("t1c", t1c)) if v is not None],
        "truth_ml": float(truth.sum() * voxel_ml(flair.header.get_zooms()[:3])),
    }
    for label, path in zip(EXTERNAL_CONDITIONS, (p3, case / f"{case.name}_flair.nii.gz")):
        sp = pred.predict_study(path)
        m = mask_to_nifti_array(sp).astype(bool)
        tp, fp, fn = int((m & truth).sum()), int((m & ~truth).sum()), int((~m & truth).sum())
        row[label] = {
            "dice": dice_score(tp, fp, fn),
            "recall": tp / max(tp + fn, 1),
            "precision": tp / max(tp + fp, 1),
            "pred_ml": sp.measurements["volume_ml"],
        }
        if keep_masks:
            out = tmp / f"{case.name}_{label}_pred.nii.gz"
            nib.save(nib.Nifti1Image(m.astype(np.uint8), flair.affine), str(out))
            row[label]["mask_file"] = str(out)
    p3.unlink()
    return row
