"""Cross-validation: a recipe measured on every train + val patient once, by the fold model that never saw it.

Fourteen validation patients cannot tell two recipes apart when one small lesion moves the mean by
0.03 (model card, v3b/v3c). A k-fold cross-validation over the 76 train + val patients (``data.cv_folds``,
``tumorseg train --fold i/k --select last``) gives each of them one out-of-fold prediction. This
module collects those predictions for each arm (one recipe's k runs), chooses each arm's
post-processing on them with the packaging rule (``evaluation.choose_postprocess``), scores every
patient under the robustness conditions, and pairs two arms patient by patient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engines.loading import load_engine
from ..model.metrics import paired_difference
from ..model.postprocess import PostProcess
from .data import DatasetError, discover, load_cases
from .evaluation import choose_postprocess, stack_metrics
from .robustness import transformed

SUMMARY_KEYS = ("dice", "recall", "precision", "dice_per_patient_mean", "empty_slice_fp_rate")


@dataclass
class OutOfFold:
    """Every patient's probabilities from the fold model that held it out, fold after fold."""

    patients: list[str] = field(default_factory=list)  # per slice
    views: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # tta -> cond -> (p, m)
    fold_of: dict[str, str] = field(default_factory=dict)  # patient -> run folder
    size: int = 0


def run_validation_patients(run: Path) -> list[str]:
    """The patients a finished fold run held out (its split.json's val)."""
    try:
        split = json.loads((run / "split.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{run}: no readable split.json ({exc})") from None
    return list(split.get("val", []))


def out_of_fold(
    runs: Sequence[str | os.PathLike],
    data: str | os.PathLike,
    conditions: Sequence[str],
    ttas: Sequence[str] = ("none",),
    engine: str = "torch-fp32",
    device: str = "auto",
    threads: int = 0,
    batch: int = 16,
) -> OutOfFold:
    """Run each fold's model (``RUN/best.safetensors``) on the patients it held out, under each condition
    and test-time view. Refuses folds that overlap: a patient predicted twice is a leak or a mix-up."""
    cases = {c.patient: c for c in discover(data)}
    oof = OutOfFold()
    parts: dict[str, dict[str, list]] = {t: {c: [] for c in ("original", *conditions)} for t in ttas}
    for run in map(Path, runs):
        val = run_validation_patients(run)
        if not val:
            raise DatasetError(f"{run}: held out no patients (a --fold all run has no out-of-fold predictions)")
        for p in val:
            if p in oof.fold_of:
                raise DatasetError(f"{run}: patient {p} was already held out by {oof.fold_of[p]}; folds overlap")
            if p not in cases:
                raise DatasetError(f"{data}: lacks {p}, held out by {run}")
            oof.fold_of[p] = str(run)
        eng = load_engine(run / "best.safetensors", engine, threads, device)
        ds = load_cases([cases[p] for p in val], eng.size)
        oof.size = eng.size
        oof.patients += ds.patients
        for cond in ("original", *conditions):
            images, masks = transformed(ds, cond)
            for t in ttas:
                p = eng.run_stack(images, ds.groups(), batch=batch, tta=t).astype(np.float16)
                parts[t][cond].append((p, masks))
    for t, by_cond in parts.items():
        oof.views[t] = {
            c: (np.concatenate([p for p, _ in v]), np.concatenate([m for _, m in v])) for c, v in by_cond.items()
        }
    return oof


def arm_report(oof: OutOfFold, select_on: Sequence[str], workers: int = 1) -> dict:
    """One arm: its post-processing chosen out of fold (``workers`` processes share the grid), and
    every condition scored with it."""
    choice, _ = choose_postprocess(oof.views, oof.patients, list(select_on), workers)
    post = PostProcess(choice["threshold"], choice["min_component_pixels"], oof.size, choice["hysteresis_low"])
    conditions = {}
    for cond, (p, m) in oof.views[choice["tta"]].items():
        r = stack_metrics(p, m, oof.patients, post)
        conditions[cond] = {**{k: r[k] for k in SUMMARY_KEYS}, "patient_dice": r["patient_dice"]}
    return {
        "postprocess": choice,
        "n_patients": len(set(oof.patients)),
        "n_slices": len(oof.patients),
        "folds": sorted(set(oof.fold_of.values())),
        "conditions": conditions,
    }


def decide(paired: dict, original_margin: float = 0.005) -> dict:
    """The reading of "B beats A" the model comparisons use (research/v3/model_v3.sh, written before the
    results): the mean paired per-patient difference on the original slices at least ``original_margin``
    and above zero on both FLAIR-only conditions."""
    checks = {
        "original": paired.get("original", {}).get("mean_difference", float("-inf")) >= original_margin,
        "flair_only": paired.get("flair_only", {}).get("mean_difference", float("-inf")) > 0,
        "flair_only_stripped": paired.get("flair_only_stripped", {}).get("mean_difference", float("-inf")) > 0,
    }
    return {"b_beats_a": all(checks.values()), "checks": checks, "original_margin": original_margin}


def compare_arms(arms: dict[str, dict]) -> dict:
    """Two arms' reports paired patient by patient (second minus first) with the decision."""
    (na, a), (nb, b) = arms.items()
    if set(a["conditions"]["original"]["patient_dice"]) != set(b["conditions"]["original"]["patient_dice"]):
        raise DatasetError(f"arms {na} and {nb} were not measured on the same patients")
    paired = paired_difference(a["conditions"], b["conditions"])
    return {"a": na, "b": nb, "paired": paired, "decision": decide(paired)}


def markdown(arms: dict[str, dict], comparison: dict | None = None) -> str:
    """The report as Markdown: each arm's out-of-fold table, then the pairing and the decision."""
    lines = []
    for name, r in arms.items():
        pp = r["postprocess"]
        lines += [
            f"### {name}: {r['n_patients']} patients out of fold ({len(r['folds'])} folds, {r['n_slices']} slices)",
            "",
            f"Post-processing chosen out of fold: views {pp['tta']}, threshold {pp['threshold']}, components "
            f"< {pp['min_component_pixels']} px, hysteresis {pp['hysteresis_low'] or 'off'}.",
            "",
            "| condition | Dice | recall | precision | per-patient mean | tumour-free slices with a false alarm |",
            "|---|---|---|---|---|---|",
        ]
        for cond, v in r["conditions"].items():
            lines.append(
                f"| {cond} | {v['dice']:.4f} | {v['recall']:.4f} | {v['precision']:.4f} | "
                f"{v['dice_per_patient_mean']:.4f} | {100 * v['empty_slice_fp_rate']:.1f} % |"
            )
        lines.append("")
    if comparison:
        a, b = comparison["a"], comparison["b"]
        lines += [
            f"### {b} − {a}, per patient (3D Dice), 95 % bootstrap intervals",
            "",
            "| condition | mean difference | 95 % CI | better / worse |",
            "|---|---|---|---|",
        ]
        for cond, v in comparison["paired"].items():
            lo, hi = v["ci95"]
            lines.append(
                f"| {cond} | {v['mean_difference']:+.4f} | {lo:+.4f} to {hi:+.4f} | {v['better']} / {v['worse']} |"
            )
        dec = comparison["decision"]
        lines += [
            "",
            f"Decision ({b} beats {a}: original ≥ +{dec['original_margin']}, both FLAIR-only conditions > 0): "
            f"**{'yes' if dec['b_beats_a'] else 'no'}** ({', '.join(f'{k} {v}' for k, v in dec['checks'].items())}).",
            "",
        ]
    return "\n".join(lines)
