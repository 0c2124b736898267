import math

import numpy as np
import pytest
import torch

from tumorseg.model.metrics import SegmentationMetrics
from tumorseg.train.losses import dice_loss


def test_hand_computed_pooled_metrics():
    truth = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :3] = True  # 6 pixels, 4 overlap -> tp 4, fp 2
    pred[1, 3, 3] = True  # fp on an empty slice
    m = SegmentationMetrics()
    m.update(pred, truth, ["p1", "p2"])
    r = m.aggregate()
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
    r = m.aggregate()
    assert r["dice"] == 1.0 and r["iou"] == 1.0 and r["empty_slice_fp_rate"] == 0.0
    assert r["dice_per_patient_mean"] == 1.0
    assert math.isnan(r["dice_per_slice_mean"])  # no tumour slice to average over


def test_tumour_missed_entirely():
    m = SegmentationMetrics()
    t = np.zeros((1, 4, 4), bool)
    t[0, 1, 1] = True
    m.update(np.zeros_like(t), t, ["a"])
    r = m.aggregate()
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


def test_image_dice_loss_weighs_small_lesions_like_large_ones():
    from tumorseg.train.losses import image_dice_loss, make_loss

    y = torch.zeros(2, 1, 32, 32)
    y[0, ..., 2:30, 2:30] = 1  # a large cross-section, found
    y[1, ..., 5:7, 5:7] = 1  # a faint end of 4 pixels, missed
    logits = torch.where(y > 0, 20.0, -20.0)
    logits[1] = -20.0
    # batch Dice barely sees the 4 missed pixels; per-image Dice counts that patch as half the batch
    assert float(dice_loss(logits, y)) < 0.01
    assert float(image_dice_loss(logits, y)) == pytest.approx(0.5 * (1 - 1 / 5), abs=1e-3)
    # patches without tumour are BCE's business: an empty batch gives 0 and still backpropagates
    empty = torch.zeros(2, 1, 8, 8)
    z = torch.zeros(2, 1, 8, 8, requires_grad=True)
    out = image_dice_loss(z, empty)
    out.backward()
    assert float(out) == 0.0 and z.grad is not None
    combined = make_loss("image-dice+bce")
    assert float(combined(logits, y)) > float(image_dice_loss(logits, y))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("image-dice+focal")


def test_every_accumulated_metric_has_one_shape_update_aggregate_reset():
    """SegmentationMetrics, Calibration and ThresholdSweep: update with batches, aggregate, reset to empty."""
    pytest.importorskip("torch")
    import torch

    from tumorseg.train.evaluation import Calibration
    from tumorseg.train.threshold_sweep import ThresholdSweep

    rng = np.random.default_rng(0)
    prob = rng.random((2, 8, 8)).astype(np.float32)
    truth = prob > 0.6
    for acc, batch in (
        (SegmentationMetrics(), (prob > 0.5, truth)),
        (Calibration(), (prob, truth)),
        (ThresholdSweep(), (torch.from_numpy(prob), torch.from_numpy(truth))),
    ):
        acc.update(*batch)
        first = acc.aggregate()
        acc.reset()
        acc.update(*batch)
        assert acc.aggregate() == first  # reset really empties: the same batch gives the same result
