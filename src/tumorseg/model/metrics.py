"""Segmentation metrics that accumulate over batches and reduce at the end (MONAI's idea).

Conventions, stated once:
- pooled: confusion counts summed over every pixel of the set, then the ratio;
- per slice: mean Dice over slices whose ground truth has tumour;
- per patient: 3D Dice of each patient's stacked slices; a patient with no tumour in
  both truth and prediction scores 1, with tumour in only one of them 0;
- empty-slice FP rate: share of tumour-free slices where any tumour pixel is predicted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

import numpy as np

from ..imaging.geometry import voxel_ml


def dice_score(tp: float, fp: float, fn: float) -> float:
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2 * tp / den


def iou_score(tp: float, fp: float, fn: float) -> float:
    den = tp + fp + fn
    return 1.0 if den == 0 else tp / den


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    return empty if den == 0 else num / den


def _pooled(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """The pooled pixel metrics from one set of confusion counts (one home for their formulas)."""
    return {
        "dice": dice_score(tp, fp, fn),
        "iou": iou_score(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


class Accumulator(Protocol):
    """The one shape of every metric that is accumulated (after MONAI's ``Cumulative``): ``update`` with a
    batch, ``aggregate`` for the result so far, ``reset`` to start again. ``SegmentationMetrics`` (pooled,
    per slice, per patient), ``train.evaluation.Calibration`` (ECE) and ``train.threshold_sweep.ThresholdSweep``
    (Dice at several thresholds) have it."""

    def update(self, *args, **kwargs) -> None: ...

    def aggregate(self): ...

    def reset(self) -> None: ...


class SegmentationMetrics:
    """Accumulates binary predictions slice by slice, grouped by patient (an ``Accumulator``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0
        self.slice_dice: list[float] = []  # slices with tumour in truth
        self.slice_records: list[dict] = []
        self.empty_slices = 0
        self.empty_slices_fp = 0
        self.patient_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        # per patient: tp fp fn tn, tumour-free slices, tumour-free slices with a false alarm
        self.patient_full: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])

    def update(
        self,
        pred: np.ndarray,
        truth: np.ndarray,
        patients: list[str] | None = None,
        names: list[str] | None = None,
    ) -> None:
        """pred/truth: boolean arrays (or tensors) N x H x W, or H x W for one slice."""
        pred = _np_bool(pred)
        truth = _np_bool(truth)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
        if pred.ndim == 2:
            pred, truth = pred[None], truth[None]
        n = pred.shape[0]
        patients = patients or ["_all"] * n
        p = pred.reshape(n, -1)
        t = truth.reshape(n, -1)
        tp = (p & t).sum(1)
        fp = (p & ~t).sum(1)
        fn = (~p & t).sum(1)
        tn = p.shape[1] - tp - fp - fn
        self.tp += int(tp.sum())
        self.fp += int(fp.sum())
        self.fn += int(fn.sum())
        self.tn += int(tn.sum())
        for i in range(n):
            has = bool(t[i].any())
            d = dice_score(tp[i], fp[i], fn[i])
            if has:
                self.slice_dice.append(d)
            else:
                self.empty_slices += 1
                self.empty_slices_fp += int(fp[i] > 0)
            c = self.patient_counts[patients[i]]
            c[0] += int(tp[i])
            c[1] += int(fp[i])
            c[2] += int(fn[i])
            f = self.patient_full[patients[i]]
            f[0] += int(tp[i])
            f[1] += int(fp[i])
            f[2] += int(fn[i])
            f[3] += int(tn[i])
            if not has:
                f[4] += 1
                f[5] += int(fp[i] > 0)
            self.slice_records.append(
                {
                    "patient": patients[i],
                    "name": names[i] if names else None,
                    "dice": float(d),
                    "truth_pixels": int(tp[i] + fn[i]),
                    "pred_pixels": int(tp[i] + fp[i]),
                }
            )

    def patient_dice(self) -> dict[str, float]:
        return {k: dice_score(*v) for k, v in sorted(self.patient_counts.items())}

    def aggregate(self) -> dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        pd = np.array(list(self.patient_dice().values()), dtype=float)
        return {
            **_pooled(tp, fp, fn, tn),
            "dice_per_slice_mean": float(np.mean(self.slice_dice)) if self.slice_dice else float("nan"),
            "dice_per_patient_mean": float(pd.mean()) if pd.size else float("nan"),
            "dice_per_patient_median": float(np.median(pd)) if pd.size else float("nan"),
            "dice_per_patient_std": float(pd.std()) if pd.size else float("nan"),
            "empty_slice_fp_rate": _ratio(self.empty_slices_fp, self.empty_slices, empty=0.0),
            "n_patients": len(self.patient_counts),
            "n_slices": len(self.slice_records),
        }


HEADLINE = ("dice", "iou", "recall", "precision", "accuracy", "dice_per_patient_mean", "empty_slice_fp_rate")


def metrics_from_counts(counts: dict[str, list[int]]) -> dict[str, float]:
    """Headline metrics from per-patient [tp, fp, fn, tn, empty, empty_fp] counts (see SegmentationMetrics)."""
    a = np.array(list(counts.values()), dtype=np.float64).reshape(-1, 6)
    tp, fp, fn, tn, empty, empty_fp = a.sum(0)
    pd = [dice_score(*r[:3]) for r in a]
    return {
        **_pooled(tp, fp, fn, tn),
        "dice_per_patient_mean": float(np.mean(pd)) if pd else float("nan"),
        "empty_slice_fp_rate": _ratio(empty_fp, empty, empty=0.0),
    }


def bootstrap_ci(
    counts: dict[str, list[int]], n: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over patients (resampled with replacement) for each headline metric."""
    rng = np.random.default_rng(seed)
    keys = list(counts)
    samples: dict[str, list[float]] = {k: [] for k in HEADLINE}
    for _ in range(n):
        pick = rng.integers(0, len(keys), len(keys))
        m = metrics_from_counts({str(i): counts[keys[j]] for i, j in enumerate(pick)})
        for k in HEADLINE:
            samples[k].append(m[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in samples.items()}


def paired_difference(a: dict[str, dict], b: dict[str, dict], n: int = 2000, seed: int = 0) -> dict[str, dict]:
    """``b`` minus ``a``, per patient 3D Dice: per condition and averaged over the conditions both
    have, with a 95 % percentile bootstrap over patients. ``a``/``b``: {condition: {"patient_dice":
    {patient: Dice}}}, as the robustness suite and the cross-validation report them."""
    conds = [c for c in a if c in b]
    pats = sorted(a[conds[0]]["patient_dice"])
    out = {}
    for c in conds + ["suite_average"]:
        if c == "suite_average":
            d = np.array([np.mean([b[k]["patient_dice"][p] - a[k]["patient_dice"][p] for k in conds]) for p in pats])
        else:
            d = np.array([b[c]["patient_dice"][p] - a[c]["patient_dice"][p] for p in pats])
        rng = np.random.default_rng(seed)
        boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
        out[c] = {
            "mean_difference": float(d.mean()),
            "ci95": (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
            "better": int((d > 0.001).sum()),
            "worse": int((d < -0.001).sum()),
            "n_patients": len(d),
        }
    return out


def _np_bool(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is imported only where training needs it)
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool)


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing=None, worst: int = 5) -> dict:
    """Dice, volumes and the slices where model and reference disagree most (for the page and the CLI)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    tp, fp, fn = int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())
    out = {"dice": dice_score(tp, fp, fn), "model_voxels": tp + fp, "reference_voxels": tp + fn}
    if pred.ndim == 3:
        vox = voxel_ml(spacing) if spacing else None
        out["model_ml"] = None if vox is None else (tp + fp) * vox
        out["reference_ml"] = None if vox is None else (tp + fn) * vox
        out["volume_difference_ml"] = None if vox is None else (fp - fn) * vox
        dis = (pred ^ ref).reshape(pred.shape[0], -1).sum(1)
        order = [int(k) for k in np.argsort(-dis, kind="stable")[:worst] if dis[k] > 0]
        # slice: numbered from 1, as the page and the overlays' file names number them; slice_index: from 0
        out["disagreement"] = [{"slice": k + 1, "slice_index": k, "pixels": int(dis[k])} for k in order]
    return out
