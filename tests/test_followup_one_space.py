"""Issue 47: the change between two time points measured in one space, with the model's repeatability beside it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import SHARED

CASE = SHARED / "data" / "brats-dev" / "BraTS-GLI-00000-000"


def test_the_halfway_transform_applied_twice_is_the_registration():
    import SimpleITK as sitk

    from tumorseg.followup.registration import Registration, half_transform

    t = sitk.Euler3DTransform()
    t.SetCenter([10.0, -20.0, 5.0])
    t.SetRotation(math.radians(4), math.radians(-7), math.radians(12))
    t.SetTranslation([6.0, -4.0, 9.0])
    h = half_transform(Registration(t, 0.0, 1.0, 0.0, [0.0, 0.0, 0.0]))
    for p in ([0.0, 0.0, 0.0], [50.0, -30.0, 12.0], [-80.0, 90.0, -40.0]):
        assert np.allclose(h.TransformPoint(h.TransformPoint(p)), t.TransformPoint(p), atol=1e-6)


def test_a_change_inside_the_band_reads_stable_and_is_said_on_the_line(monkeypatch):
    import tumorseg.followup.comparison as f

    band = {"space": "halfway", "flips": False, "abs_volume_change_ml": 1.5, "abs_volume_change_pct": 4.0,
            "new_ml": 2.0, "resolved_ml": 2.0, "pairs": 11}  # fmt: skip
    monkeypatch.setattr(f, "REPEATABILITY", band)
    assert f.repeatability("own", False, 20.0, 1.0, 1.0, 1.0) is None  # measured for another method: no band
    inside = f.repeatability("halfway", False, 20.0, 0.6, 1.0, 3.0)  # 3 % of 20 mL: inside the 4 % band
    assert inside["volume_change_within"] and inside["new_within"] and not inside["resolved_within"]
    assert not f.repeatability("halfway", False, 20.0, 1.0, 1.0, 1.0)["volume_change_within"]  # 5 % > 4 %
    assert "stable" in f.rano_wording(0.30, 100, 130, inside)  # +30 % product, yet within the band
    outside = f.repeatability("halfway", False, 20.0, 5.0, 1.0, 1.0)
    assert not outside["volume_change_within"]
    assert "progression" in f.rano_wording(0.30, 100, 130, outside)
    s = {
        "baseline": {"volume_ml": 20.0}, "followup": {"volume_ml": 20.6}, "volume_change_ml": 0.6, "new_ml": 1.0,
        "resolved_ml": 3.0, "rano_style": "stable", "repeatability": inside,
        "registration": {"trusted": True, "brain_dice": 0.99, "correlation": 0.98},
    }  # fmt: skip
    from tumorseg.followup.reports import followup_line

    line = followup_line(s, "out/")
    assert "change +0.60 mL (within the model's repeatability of ±4 %)" in line
    assert "new 1.00 mL (within the model's repeatability of ±2.0 mL)" in line
    assert "resolved 3.00 mL;" in line  # outside its band: no claim


@pytest.mark.slow
@pytest.mark.skipif(not CASE.is_dir(), reason="needs ../shared/data/brats-dev")
def test_a_moved_glioma_reads_as_unchanged_within_the_band_in_the_chosen_space(tmp_path):
    """The blind check's move (5 and 2 degrees, 6 / -4 / 2 voxels) of a brats-dev FLAIR: in the chosen space the
    volume change and new/resolved lie within the band the research measured, and the wording says stable."""
    import sys
    from pathlib import Path

    import tumorseg.followup.comparison as f
    from tumorseg.inference import Predictor
    from tumorseg.studies import read_study

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research" / "followup"))
    from one_space import moved_m1

    flair = CASE / f"{CASE.name}_flair.nii.gz"
    moved_m1(flair, tmp_path / "m.nii.gz")
    s = f.compare(Predictor(engine="onnx-int8"), read_study(flair), read_study(tmp_path / "m.nii.gz")).summary
    band = s["repeatability"]
    assert band is not None and s["measured_in"]["space"] == f.SPACE
    assert band["volume_change_within"] and band["new_within"] and band["resolved_within"], s
    assert "stable" in s["rano_style"]


@pytest.mark.slow
@pytest.mark.skipif(not CASE.is_dir(), reason="needs ../shared/data/brats-dev")
def test_a_thick_slice_pair_is_measured_on_one_grid_as_documented(tmp_path):
    """A clinical-like study (5 mm axial slices) against itself moved: both time points are measured on the
    baseline's (thick) grid in the chosen space, as docs/followup.md says; registered and trusted, and the change
    stays within twice the band (resampling through 5 mm slices loses detail, which the band's thick pairs hold)."""
    import sys
    from pathlib import Path

    import tumorseg.followup.comparison as f
    from tumorseg.inference import Predictor
    from tumorseg.studies import read_study

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research" / "followup"))
    from one_space import moved_m1

    flair = CASE / f"{CASE.name}_flair.nii.gz"
    moved_m1(flair, tmp_path / "m.nii.gz", thick_mm=5.0)
    base = read_study(tmp_path / "thick_m.nii.gz")
    assert base.spacing[0] == pytest.approx(5.0)
    s = f.compare(Predictor(engine="onnx-int8"), base, read_study(tmp_path / "m.nii.gz")).summary
    assert s["registration"]["trusted"] and s["measured_in"]["space"] == f.SPACE
    band = s["repeatability"]
    assert band is not None
    assert (
        abs(s["volume_change_ml"]) <= 2 * band["abs_volume_change_ml"]
        or abs(s["volume_change_relative"]) * 100 <= 2 * band["abs_volume_change_pct"]
    )
