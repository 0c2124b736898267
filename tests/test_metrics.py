import math

import numpy as np
import pytest
import torch

from tumorseg.metrics import SegmentationMetrics
from tumorseg.training import dice_loss


def test_hand_computed_pooled_metrics():
    truth = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :3] = True  # 6 pixels, 4 overlap -> tp 4, fp 2
    pred[1, 3, 3] = True  # fp on an empty slice
    m = SegmentationMetrics()
    m.update(pred, truth, ["p1", "p2"])
    r = m.compute()
    tp, fp, fn, tn = 4, 3, 0, 32 - 7
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["precision"] == pytest.approx(4 / 7)
    assert r["recall"] == 1.0
    assert r["accuracy"] == pytest.approx((tp + tn) / 32)
    assert r["dice_per_slice_mean"] == pytest.approx(0.8)  # only slice 0 has tumour
    assert r["empty_slice_fp_rate"] == 1.0
    assert m.patient_dice() == {"p1": pytest.approx(0.8), "p2": 0.0}
    assert r["dice_per_patient_mean"] == pytest.approx(0.4)
    assert r["dice_per_patient_median"] == pytest.approx(0.4)
    assert r["dice_per_patient_std"] == pytest.approx(0.4)
    assert (r["n_patients"], r["n_slices"]) == (2, 2)


def test_empty_on_both_sides_is_perfect():
    m = SegmentationMetrics()
    z = np.zeros((3, 5, 5), bool)
    m.update(z, z, ["a", "a", "a"])
    r = m.compute()
    assert r["dice"] == 1.0 and r["iou"] == 1.0 and r["empty_slice_fp_rate"] == 0.0
    assert r["dice_per_patient_mean"] == 1.0
    assert math.isnan(r["dice_per_slice_mean"])  # no tumour slice to average over


def test_tumour_missed_entirely():
    m = SegmentationMetrics()
    t = np.zeros((1, 4, 4), bool)
    t[0, 1, 1] = True
    m.update(np.zeros_like(t), t, ["a"])
    r = m.compute()
    assert r["dice"] == 0.0 and r["recall"] == 0.0 and r["precision"] == 1.0


def test_per_patient_dice_is_3d():
    m = SegmentationMetrics()
    t = np.zeros((2, 4, 4), bool)
    p = np.zeros((2, 4, 4), bool)
    t[0, 0, :2] = True
    t[1, 0, :2] = True
    p[0, 0, :2] = True  # second slice missed: 3D Dice = 2*2/(2+4) = 0.667
    m.update(p, t, ["a", "a"])
    assert m.patient_dice()["a"] == pytest.approx(2 / 3)


def test_dice_loss_bounds():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:5, 2:5] = 1
    perfect = torch.where(y > 0, 20.0, -20.0)
    assert float(dice_loss(perfect, y)) < 1e-3
    assert float(dice_loss(-perfect, y)) > 0.9
