"""Whole studies: NIfTI and DICOM input, geometry kept, volume measured, DICOM-SEG written."""

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tumorseg.studies import StudyError, read_study, study_measurements

from .conftest import write_dicom_series  # noqa: F401  (shared; other modules import it from conftest)


def sphere(shape, centre, radius_vox):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius_vox**2


def test_sphere_volume_matches_analytic():
    spacing = (2.0, 0.5, 0.5)  # slice, row, col mm
    r_mm = 10.0
    zz, yy, xx = np.indices((30, 80, 80)).astype(float)
    m = ((zz - 15) * 2.0) ** 2 + ((yy - 40) * 0.5) ** 2 + ((xx - 40) * 0.5) ** 2 <= r_mm**2
    meas, _ = study_measurements(m, spacing)
    analytic_ml = 4 / 3 * np.pi * r_mm**3 / 1000
    assert meas["volume_ml"] == pytest.approx(analytic_ml, rel=0.05)
    assert meas["largest_diameter_mm"] == pytest.approx(2 * r_mm, rel=0.08)
    assert meas["slices_with_tumour"] == 11 - 0 or meas["slices_with_tumour"] in (9, 10, 11)


def test_largest_diameter_is_one_lesions_not_the_span_to_a_distant_false_alarm():
    """Seen on BraTS-GLI-00000-000: a 6 mL lesion reported as 124 mm wide because a speck across the
    brain was in the same slice."""
    m = np.zeros((3, 200, 200), bool)
    zz, yy, xx = np.indices(m.shape)
    m |= (zz == 1) & ((yy - 60) ** 2 + (xx - 60) ** 2 <= 15**2)  # a lesion 31 px across
    m[1, 180:182, 180:182] = True  # a false alarm far away, same slice
    meas, _ = study_measurements(m, (1.0, 0.5, 0.5))
    assert meas["largest_diameter_mm"] == pytest.approx(31 * 0.5, abs=0.6)
    m[2, 20:30, 20:200] = True  # a longer lesion elsewhere: it is the largest
    assert study_measurements(m, (1.0, 0.5, 0.5))[0]["largest_diameter_mm"] == pytest.approx(180 * 0.5, abs=2)


def test_small_components_removed_in_3d():
    m = np.zeros((5, 20, 20), bool)
    m[1:4, 2:10, 2:10] = True
    m[2, 15, 15] = True  # one voxel
    meas, kept = study_measurements(m, (1.0, 1.0, 1.0), min_component_mm3=5)
    assert kept.sum() == 3 * 64 and meas["components_removed"] == 1


def _nifti(tmp_path, data, affine, name="vol.nii.gz"):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), p)
    return p


def test_nifti_prediction_keeps_geometry(tiny_model, tmp_path):
    from tumorseg.inference import Predictor
    from tumorseg.studies import write_study_outputs

    affine = np.array([[0.9, 0, 0, -50], [0, 0.9, 0, -60], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    vol = np.zeros((48, 40, 7), np.int16)  # X Y Z
    vol[10:30, 10:25, 2:5] = 800
    p = _nifti(tmp_path, vol, affine)
    sp = Predictor(tiny_model, engine="torch-fp32").predict_study(p)
    assert sp.prob.shape == (7, 40, 48)  # Z, rows (Y), cols (X)
    assert sp.study.spacing == pytest.approx((3.0, 0.9, 0.9))
    out = tmp_path / "out"
    write_study_outputs(sp, out)
    back = nib.load(out / "mask.nii.gz")
    assert back.shape == vol.shape and np.allclose(back.affine, affine)
    assert int(np.asarray(back.dataobj).sum()) == int(sp.mask.sum())
    import json

    s = json.loads((out / "study.json").read_text())
    assert s["volume_ml"] == pytest.approx(sp.mask.sum() * 3.0 * 0.81 / 1000)
    assert s["single_sequence"] and any("single sequence" in n for n in s["notes"])
    assert len(list((out / "overlays").glob("*.png"))) == 7


def test_nifti_voxel_mapping_round_trip():
    from tumorseg.studies import image_to_nifti_slice, nifti_slice_to_image

    a = np.arange(12).reshape(4, 3)
    assert np.array_equal(image_to_nifti_slice(nifti_slice_to_image(a)), a)


def test_2d_and_broken_nifti_refused(tmp_path):
    p = _nifti(tmp_path, np.zeros((10, 10), np.int16), np.eye(4), "flat.nii")
    with pytest.raises(StudyError, match="2D"):
        read_study(p)
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 100)
    with pytest.raises(StudyError, match="NIfTI"):
        read_study(bad)


def test_dicom_order_from_positions_not_names(tmp_path):
    write_dicom_series(tmp_path / "s")
    st = read_study(tmp_path / "s")
    assert st.kind == "dicom" and st.n_slices == 6
    means = [st.volume[k].mean() for k in range(6)]
    assert means == sorted(means)  # ordered by ImagePositionPatient
    assert st.spacing == pytest.approx((2.5, 0.8, 0.7))


def test_dicom_several_series_listed(tmp_path):
    a = write_dicom_series(tmp_path / "mix", n=3)
    write_dicom_series(tmp_path / "mix", n=3, prefix="B")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "mix")
    assert "2 series" in str(e.value) and a in str(e.value)
    assert read_study(tmp_path / "mix", series=a).n_slices == 3


def test_dicom_without_pixel_data(tmp_path):
    write_dicom_series(tmp_path / "np", n=2, pixel=False)
    with pytest.raises(StudyError, match="no DICOM image with pixel data"):
        read_study(tmp_path / "np")


def test_dicom_zip_and_seg_round_trip(tiny_model, tmp_path):
    import zipfile

    from tumorseg.inference import Predictor
    from tumorseg.studies import write_study_outputs

    uid = write_dicom_series(tmp_path / "s", n=4)
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in (tmp_path / "s").iterdir():
            zf.write(f, f"study/{f.name}")
    sp = Predictor(tiny_model, engine="torch-fp32", threshold=0.0).predict_study(z)
    assert sp.measurements["tumour_voxels"] == 4 * 32 * 32  # threshold 0: everything
    assert sp.measurements["volume_ml"] == pytest.approx(4 * 32 * 32 * 2.5 * 0.8 * 0.7 / 1000)
    out = tmp_path / "out"
    write_study_outputs(sp, out)
    seg = pydicom.dcmread(out / "mask_seg.dcm")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    nii = nib.load(out / "mask.nii.gz")
    assert nii.shape == (32, 32, 4)
    assert np.allclose(np.abs(np.diag(nii.affine)[:3]), [0.7, 0.8, 2.5])


def test_zip_with_traversal_or_bomb_refused(tmp_path):
    import zipfile

    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x")
    with pytest.raises(StudyError, match="unsafe path"):
        read_study(z)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(StudyError, match="bomb"):
        read_study(bomb)


def test_a_new_study_format_is_one_entry_in_the_registry(tmp_path, monkeypatch):
    """The worked extension of docs/architecture.md: one FileFormat entry (and its reader) makes a new
    suffix a study for classification (the page), the CLI's input expansion, reading and output naming."""
    import tumorseg.studies as studies
    from tumorseg.batch.plan import output_name

    def read_npy(p, series):
        vol = np.load(p)
        st = studies.Study(str(p), "nifti", vol, (1.0, 1.0, 1.0), [f"slice {k + 1}" for k in range(len(vol))])
        st.affine = np.eye(4)
        return st

    registry = studies.formats  # the registry's one home: every front end and output naming asks it
    monkeypatch.setattr(
        registry, "FILE_FORMATS", (*registry.FILE_FORMATS, studies.FileFormat("npy", (".npyvol",), read_npy))
    )
    f = tmp_path / "case7.npyvol"
    with open(f, "wb") as fh:
        np.save(fh, np.full((3, 16, 16, 3), 90, np.uint8))
    assert studies.classify_names([f.name]) == "study-file"
    assert studies.is_study_source(f)
    assert studies.read_study(f).n_slices == 3
    assert output_name(f, set()) == "case7"
