"""Validation during training: batches as the network sees them, pooled and per-patient Dice."""

from __future__ import annotations

import numpy as np
import torch

from ..model.metrics import dice_score
from ..model.preprocess import expand_per_channel
from .data import LoadedSet, normalisation
from .device import DistContext
from .threshold_sweep import ThresholdSweep


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """``preprocess.model_input``'s normalisation on the training device (x already in [0, 1])."""

    norm, c = normalisation(True), x.shape[1]
    mean = torch.from_numpy(expand_per_channel(norm["mean"], c)).to(x.device).view(1, c, 1, 1)
    std = torch.from_numpy(expand_per_channel(norm["std"], c)).to(x.device).view(1, c, 1, 1)
    return (x - mean) / std


def prepare_batch(imgs_u8: torch.Tensor, imagenet: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW [0,1] (-> ImageNet normalised)."""
    x = imgs_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return imagenet_normalise(x) if imagenet else x


@torch.no_grad()
def validate(
    model,
    val: LoadedSet,
    imagenet: bool,
    device,
    amp_dtype,
    batch: int,
    d: DistContext,
    mem=torch.channels_last,
    context: int = 0,
) -> dict:
    """Pooled Dice at 0.5 and a threshold sweep, and per-patient Dice (3D, at 0.5): the mean over
    patients is what the model comparisons rank by, so training can select on it too."""
    model.eval()
    sweep = ThresholdSweep()
    per_slice = torch.zeros(len(val), 3, dtype=torch.float64)  # tp fp fn at 0.5
    idx = np.arange(d.rank, len(val), d.world)
    for s in range(0, len(idx), batch):
        sel = idx[s : s + batch]
        x = prepare_batch(torch.from_numpy(val.model_channels(sel, context)), imagenet).to(device)
        x = x.contiguous(memory_format=mem)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            prob = torch.sigmoid(model(x).float())[:, 0].cpu()
        y = torch.from_numpy(val.masks[sel])
        sweep.update(prob, y)
        pb = prob >= 0.5
        per_slice[sel] = torch.stack([(pb & y), (pb & ~y), (~pb & y)], 1).flatten(2).sum(2).double()
    d.all_sum(per_slice)
    d.all_sum(sweep.counts)
    model.train()
    patients = [dice_score(*map(float, per_slice[a:b].sum(0))) for a, b in val.groups()]
    return {
        "val_dice": dice_score(*map(float, per_slice.sum(0))),
        "val_dice_by_threshold": sweep.aggregate(),
        "val_dice_per_patient": float(np.mean(patients)) if patients else 0.0,
    }


def patients_score(original: dict, flair_only: dict) -> float:
    """``--select patients``: the per-patient mean over the original and the FLAIR-only slices, the two
    conditions the model comparisons decide on."""
    return (original["val_dice_per_patient"] + flair_only["val_dice_per_patient"]) / 2
