"""Volumes that must never be silently wrong (hardening round 4, items 6, 7 and 15): a DICOM series whose
slices declare different pixel spacings, a block of slices in another orientation, slices missing from a
series, and a NIfTI whose sform and pixdim disagree."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tumorseg.studies import StudyError, read_study

from .conftest import cli_predict, write_dicom_series


def _series(tmp_path, n=6):
    folder = tmp_path / "s"
    write_dicom_series(folder, n=n)
    return folder, sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def _edit(f, **attrs):
    ds = pydicom.dcmread(f)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(f, enforce_file_format=True)


def test_slices_with_different_pixel_spacing_are_refused(tmp_path, tiny_model):
    folder, files = _series(tmp_path)
    for f in files[3:]:
        _edit(f, PixelSpacing=[1.6, 1.4])
    with pytest.raises(StudyError, match=r"declares PixelSpacing \[.*\] mm where another declares .*not on one grid"):
        read_study(folder)
    # the CLI: one line, no study folder and so no DICOM-SEG written
    assert cli_predict(folder, tmp_path / "out", tiny_model) == 2
    assert not (tmp_path / "out" / "s").exists()


@pytest.mark.parametrize(
    "iop, plane",
    [([0, 1, 0, 0, 0, -1], "sagittal"), ([1, 0, 0, 0, 0.8660254, -0.5], "oblique"), ([1, 0, 0, 0, 0, -1], "coronal")],
)
def test_a_block_of_slices_in_another_orientation_is_refused_with_the_reason(tmp_path, iop, plane):
    folder, files = _series(tmp_path)
    for k, f in enumerate(files[4:]):
        _edit(f, ImageOrientationPatient=iop, ImagePositionPatient=[0, 50 + 3 * k, 10])
    with pytest.raises(StudyError, match="lies in another orientation") as exc:
        read_study(folder)
    assert (
        f"({plane}" in str(exc.value) and "(axial" in str(exc.value) and "not one stack of parallel" in str(exc.value)
    )


def test_a_series_with_a_missing_slice_is_refused_not_stretched(tmp_path):
    folder, files = _series(tmp_path, n=8)
    files[4].unlink()  # 2.5 mm apart, one gap of 5 mm
    with pytest.raises(
        StudyError, match=r"unevenly spaced.*5.00 mm between slices 4 and 5, a slice seems to be missing"
    ):
        read_study(folder)
    folder2, files2 = _series(tmp_path / "ok", n=8)
    st = read_study(folder2)  # an even series still reads, its mask and study.json agreeing
    assert st.spacing[0] == pytest.approx(2.5)


def test_a_nifti_whose_sform_and_pixdim_disagree_is_measured_by_its_affine(tmp_path, tiny_model):
    vol = np.zeros((40, 40, 10), np.int16)
    vol[10:30, 10:30, 2:8] = 500
    img = nib.Nifti1Image(vol, np.diag([2.0, 2.0, 4.0, 1.0]))
    img.header["pixdim"][1:4] = [1.0, 1.0, 1.0]  # pixdim says 1 mm, the sform 2 x 2 x 4
    p = tmp_path / "odd.nii.gz"
    nib.save(img, p)
    assert nib.load(p).header["pixdim"][1] == 1.0 and nib.load(p).affine[0, 0] == 2.0
    st = read_study(p)
    assert st.spacing == pytest.approx((4.0, 2.0, 2.0))
    assert any("disagree; the affine's was used" in n for n in st.notes)
    assert cli_predict(p, tmp_path / "out", tiny_model) == 0
    summary = json.loads((tmp_path / "out" / "odd" / "study.json").read_text())
    mask = nib.load(tmp_path / "out" / "odd" / "mask.nii.gz")
    vox_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000
    assert summary["volume_ml"] == pytest.approx(float((np.asanyarray(mask.dataobj) > 0).sum()) * vox_ml, rel=1e-6)
