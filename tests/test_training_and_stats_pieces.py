"""Small pieces that had no test of their own: augmentation v2, the LR schedule, the robustness
conditions, calibration (ECE), the bootstrap intervals, orientation labels (without a browser)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import smooth_noise


def _batch(n=6, size=48):
    import torch

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((n, 3, size, size)), dtype=torch.float32)
    y = torch.zeros(n, 1, size, size)
    y[:, :, 18:30, 18:30] = 1
    return x, y


@pytest.mark.train
def test_augment_v2_keeps_ranges_shapes_and_is_reproducible():
    import torch

    from tumorseg.train.augment import augment_for_other_sites

    x, y = _batch()
    depth = torch.full_like(y, 20.0)
    a = augment_for_other_sites(x.clone(), y.clone(), torch.Generator().manual_seed(1), depth)
    b = augment_for_other_sites(x.clone(), y.clone(), torch.Generator().manual_seed(1), depth)
    assert a[0].shape == x.shape and a[1].shape == y.shape
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same generator, same batch
    assert float(a[0].min()) >= 0 and float(a[0].max()) <= 1
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}  # masks stay binary


@pytest.mark.train
def test_augment_v2_sequence_dropout_copies_flair():
    import torch

    from tumorseg.train.augment import augment_for_other_sites

    def corr(a, b):  # the centre only: rotation and zoom pad the borders of every channel alike
        return float(np.corrcoef(a[16:32, 16:32].flatten().numpy(), b[16:32, 16:32].flatten().numpy())[0, 1])

    x, y = _batch(n=32)  # three independent random channels: correlation ~0 unless one is copied
    for p_seq, expect in ((1.0, True), (0.0, False)):
        out, _ = augment_for_other_sites(x.clone(), y, torch.Generator().manual_seed(3), None, p_strip=0.0, p_seq=p_seq)
        pre = [corr(out[i, 0], out[i, 1]) > 0.8 for i in range(32)]
        post = [corr(out[i, 2], out[i, 1]) > 0.8 for i in range(32)]
        assert (any(pre) and any(post)) == expect  # pre-/post-contrast replaced by FLAIR only with dropout


@pytest.mark.train
def test_skull_strip_in_augment_v2_never_removes_tumour():
    import torch

    from tumorseg.train.augment import augment_for_other_sites

    x, y = _batch(n=16)
    x = torch.ones_like(x) * 0.5
    depth = torch.zeros_like(y)  # everything is "skull": stripping would zero all but the tumour
    out, yo = augment_for_other_sites(x, y, torch.Generator().manual_seed(0), depth, p_strip=1.0, p_seq=0.0)
    assert (out * yo).sum(dim=(1, 2, 3)).gt(0).all()  # tumour pixels survive in every image


@pytest.mark.train
def test_cosine_schedule_anneals_to_two_percent():
    from tumorseg.train.config import TrainConfig
    from tumorseg.train.trainer import Trainer

    t = Trainer.__new__(Trainer)
    t.cfg, t.steps = TrainConfig(data="x", out="y", lr=1e-3, epochs=10, schedule="cosine"), 5
    lrs = [t.lr_at(s) for s in range(0, 51)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(2e-5)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises
    assert lrs[25] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi / 2))))
    t.cfg = TrainConfig(data="x", out="y", lr=1e-3, epochs=10, schedule="constant")
    assert {t.lr_at(s) for s in range(50)} == {1e-3}


@pytest.mark.parametrize("condition", ["original", "skull_stripped", "flair_only", "zoom_0.75", "zoom_1.25"])
def test_robustness_conditions_keep_shapes_and_meaning(condition):
    from tumorseg.train.robustness import transform

    img = smooth_noise((64, 64, 3), 1, 120)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    out, m = transform(condition, img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8 and m.shape == mask.shape
    if condition == "original":
        assert out is img and m is mask
    if condition == "flair_only":
        assert np.array_equal(out[..., 0], img[..., 1]) and np.array_equal(out[..., 2], img[..., 1])
    if condition == "zoom_0.75":
        assert m.sum() < mask.sum()
    if condition == "zoom_1.25":
        assert m.sum() > mask.sum()


def test_ece_of_calibrated_and_overconfident_probabilities():
    from tumorseg.train.evaluation import Calibration

    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    truth = rng.random(200_000) < p  # calibrated by construction
    good = Calibration()
    good.update(p, truth)
    assert good.aggregate() < 0.01
    bad = Calibration()
    bad.update(np.where(p > 0.5, 0.99, 0.01), truth)  # overconfident
    assert bad.aggregate() > 0.15
    empty = Calibration()
    assert math.isnan(empty.aggregate())


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_patients():
    from tumorseg.model.metrics import bootstrap_ci, metrics_from_counts

    rng = np.random.default_rng(0)

    def counts(n):
        out = {}
        for k in range(n):
            tp = int(rng.integers(50, 150))
            out[f"p{k}"] = [tp, int(rng.integers(5, 60)), int(rng.integers(5, 60)), 10_000, 3, int(rng.integers(0, 2))]
        return out

    few, many = counts(6), counts(60)
    est = metrics_from_counts(few)["dice"]
    lo, hi = bootstrap_ci(few, n=400)["dice"]
    assert lo <= est <= hi
    lo2, hi2 = bootstrap_ci(many, n=400)["dice"]
    assert (hi2 - lo2) < (hi - lo)
    assert bootstrap_ci(few, n=200, seed=1) == bootstrap_ci(few, n=200, seed=1)  # reproducible


def test_orientation_labels_from_nifti_and_dicom_geometry(tmp_path):
    import nibabel as nib

    from tumorseg.studies import orientation_labels, read_study

    from .conftest import write_dicom_series

    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
    p = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), str(p))  # RAS+: i -> R, j -> A
    assert orientation_labels(read_study(p)) == {"right": "R", "left": "L", "bottom": "P", "top": "A"}
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])  # i -> L
    nib.save(nib.Nifti1Image(vol, flipped), str(tmp_path / "las.nii.gz"))
    assert orientation_labels(read_study(tmp_path / "las.nii.gz"))["right"] == "L"
    write_dicom_series(tmp_path / "dcm", n=4)  # axial LPS: columns -> L, rows -> P
    lab = orientation_labels(read_study(tmp_path / "dcm"))
    assert lab == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    from tumorseg.studies import Study

    assert orientation_labels(Study("x", "slices", np.zeros((1, 8, 8, 3), np.uint8), None, ["a"])) is None


@pytest.mark.parametrize("imagenet", [True, False])
@pytest.mark.parametrize("channels", [3, 5])
@pytest.mark.train
def test_training_input_path_is_the_engines_input_path(imagenet, channels):
    """Training's torch normalisation (prepare_batch) gives the numbers preprocess.model_input gives the
    engines for the same uint8 slices (2D, and 2.5D with neighbour channels) and the same normalisation."""
    import torch

    from tumorseg.model.preprocess import model_input
    from tumorseg.train.data import normalisation
    from tumorseg.train.validation import prepare_batch

    batch = np.stack([smooth_noise((32, 32, channels), k, 255) for k in range(3)])
    ours = prepare_batch(torch.from_numpy(batch), imagenet).numpy()
    engines = model_input(batch, normalisation(imagenet))
    assert np.allclose(ours, engines, atol=1e-6)


def test_no_function_in_src_is_over_80_lines():
    """The project's readability rule (docs/architecture.md): split a function before it passes 80 lines."""
    import ast
    from pathlib import Path

    long = []
    for f in (Path(__file__).resolve().parents[1] / "src" / "tumorseg").rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append(f"{f.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long
