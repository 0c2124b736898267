"""Every kind of study opens as a study, in the CLI and the API alike, with its mapping and geometry recorded."""

from __future__ import annotations

import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tumorseg.app.server import create_app
from tumorseg.cli.main import main
from tumorseg.imaging.intensity import LGG_BRAIN_MEDIAN, standardise_brain_intensity
from tumorseg.studies import find_sequences, read_study, sequence_of

from .conftest import smooth_noise, write_dicom_series


@pytest.mark.parametrize(
    "name,seq",
    [
        ("case_t1.nii.gz", "t1"),
        ("case_t1ce.nii.gz", "t1c"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1c"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("case_flair.nii", "flair"),
        ("case_0000.nii.gz", "flair"),
        ("case_0002.nii.gz", "t1c"),
        ("case_seg.nii.gz", "label"),
        ("case_t2.nii.gz", "t2"),
        ("brain.nii.gz", None),
    ],
)
def test_sequence_names(name, seq):
    assert sequence_of(name) == seq


def _head(shape, rng, scale=1.0):
    """A synthetic skull-stripped head: a bright ellipse on zero background with a brighter 'tumour'."""
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2
    inside = ((x - c[0]) / (shape[0] * 0.4)) ** 2 + ((y - c[1]) / (shape[1] * 0.45)) ** 2 < 1
    vol = np.where(inside, 300 + rng.random(shape) * 50, 0) * scale
    vol[(x - c[0]) ** 2 + (y - c[1] - 5) ** 2 < 36] *= 2
    return vol.astype(np.float32)


def _case(folder, seqs=("t1", "flair", "t1c"), shape=(48, 48, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, seq in enumerate(seqs):
        nib.save(
            nib.Nifti1Image(_head(shape, rng, 1 + k), np.diag([0.9, 0.9, 3.0, 1.0])), str(folder / f"case_{seq}.nii.gz")
        )
    return folder


def test_folder_of_sequences_is_one_study_with_mapping(tmp_path):
    st = read_study(_case(tmp_path / "case"))
    assert st.volume.shape == (8, 48, 48, 3) and st.spacing == pytest.approx((3.0, 0.9, 0.9))
    assert set(st.sequences) == {"pre-contrast", "FLAIR", "post-contrast"}
    assert "case_t1c.nii.gz" in st.sequences["post-contrast"] and not st.single_sequence


def test_missing_sequence_filled_by_flair_and_recorded(tmp_path):
    st = read_study(
        {
            "flair": _case(tmp_path / "c", ("flair", "t1c")) / "case_flair.nii.gz",
            "t1c": tmp_path / "c" / "case_t1c.nii.gz",
        }
    )
    assert "FLAIR copied in" in st.sequences["pre-contrast"]
    assert np.array_equal(st.volume[..., 0], st.volume[..., 1])


def test_sequences_on_different_grids_refused(tmp_path):
    f = _case(tmp_path / "c", ("flair",))
    nib.save(nib.Nifti1Image(np.ones((40, 48, 8), np.float32), np.eye(4)), str(f / "case_t1.nii.gz"))
    with pytest.raises(ValueError, match="co-registered"):
        read_study(f)


def test_no_flair_refused(tmp_path):
    with pytest.raises(ValueError, match="FLAIR sequence is needed"):
        read_study({"t1": _case(tmp_path / "c", ("t1",)) / "case_t1.nii.gz"})


def test_standardisation_brings_the_brain_to_the_training_level():
    rng = np.random.default_rng(0)
    vol = np.zeros((10, 64, 64, 3), np.uint8)
    vol[:, 8:56, 8:56] = (150 + rng.random((10, 48, 48, 3)) * 20).astype(np.uint8)  # skull-stripped, bright
    out, gains = standardise_brain_intensity(vol)
    inner = out[5, 30:34, 30:34]
    assert np.allclose(np.median(inner.reshape(-1, 3), 0), LGG_BRAIN_MEDIAN, atol=3)
    assert all(g < 0.5 for g in gains) and out[:, :4].max() == 0


@pytest.mark.slow
def test_cli_sequences_options_and_folder(tiny_model, tmp_path):
    case = _case(tmp_path / "case")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--flair",
                str(case / "case_flair.nii.gz"),
                "--t1",
                str(case / "case_t1.nii.gz"),
                "--t1c",
                str(case / "case_t1c.nii.gz"),
                "--out",
                str(out),
                "--model",
                str(tiny_model),
            ]
        )
        == 0
    )
    js = json.loads((out / "case" / "study.json").read_text())
    assert any("Sequences mapped" in n for n in js["notes"]) and js["voxel_spacing_mm"] == pytest.approx([3, 0.9, 0.9])
    out2 = tmp_path / "out2"
    assert main(["predict", str(case), "--out", str(out2), "--model", str(tiny_model)]) == 0
    assert json.loads((out2 / "case" / "study.json").read_text())["tumour_voxels"] == js["tumour_voxels"]


def _slices(folder, n=5, mask=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for k in range(1, n + 1):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / f"P_{k}.png")
        if mask:
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / f"P_{k}_mask.png")
    return folder


def test_zip_of_slices_is_a_study_in_the_cli(tiny_model, tmp_path):
    folder = _slices(tmp_path / "P")
    z = tmp_path / "slices.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"P/{f.name}")
    out = tmp_path / "out"
    assert main(["predict", str(z), "--out", str(out), "--model", str(tiny_model), "--spacing", "0.9,0.9,3"]) == 0
    js = json.loads((out / "slices" / "study.json").read_text())
    assert js["n_slices"] == 5 and js["voxel_spacing_mm"] == [3.0, 0.9, 0.9]
    assert any("--spacing" in n for n in js["notes"])
    aff = nib.load(str(out / "slices" / "mask.nii.gz")).affine
    assert np.allclose(np.diag(aff)[:3], [0.9, 0.9, 3.0])


def test_folder_of_images_with_a_stray_dcm_processes_the_images(tiny_model, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(smooth_noise((48, 48), int(rng.integers(99)))).save(folder / name)
    write_dicom_series(tmp_path / "dcm", n=1)
    (folder / "stray.dcm").write_bytes(next((tmp_path / "dcm").iterdir()).read_bytes())
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(tiny_model)]) == 0
    assert len(list(out.glob("*_mask.png"))) == 3


def test_api_study_from_several_files(predictor, tmp_path):
    """The page sends a patient folder's slices, or several NIfTIs chosen together, as one study."""
    client = TestClient(create_app(predictor))
    folder = _slices(tmp_path / "P", mask=False)
    files = [("files", (f.name, f.read_bytes())) for f in sorted(folder.iterdir())]
    r = client.post("/api/study", files=files, data={"spacing": "0.9,0.9,3"})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert len(body["slices"]) == 5 and body["spacing"] == [3.0, 0.9, 0.9]
    # the CLI's --spacing rule (studies.parse_spacing), the same answer from the job endpoint
    for bad in ("0.9,0.9", "0.9,0.9,300", "a,b,c"):
        answers = [client.post(u, files=files, data={"spacing": bad}) for u in ("/api/study", "/api/jobs/study")]
        assert [a.status_code for a in answers] == [422, 422], bad
        assert answers[0].json()["error"] == answers[1].json()["error"] and bad in answers[0].json()["error"]
    case = _case(tmp_path / "case")
    files = [("files", (f.name, f.read_bytes())) for f in sorted(case.iterdir())]
    r = client.post("/api/study", files=files)
    assert r.status_code == 200, r.text[:300]
    assert any("Sequences mapped" in n for n in r.json()["measurements"]["notes"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    r = client.post("/api/study", files={"file": ("slices.zip", buf.getvalue())})
    assert r.status_code == 200 and len(r.json()["slices"]) == 5


def test_find_sequences_ignores_plain_volumes(tmp_path):
    (tmp_path / "brain.nii.gz").write_bytes(b"")
    assert find_sequences(list(tmp_path.iterdir())) == {}


@pytest.mark.parametrize(
    "names,kind",
    [
        (["case.nii.gz"], "study-file"),
        (["series.zip"], "study-file"),
        (["c_t1.nii.gz", "c_flair.nii.gz", "c_t1c.nii.gz"], "study-files"),
        (["P_1.tif", "P_1_mask.tif", "P_2.tif", "P_2_mask.tif"], "study-files"),
        (["P_1.png", "P_2.png", "P_3.png"], "study-files"),
        (["IM0001", "IM0002", "IM0003"], "study-files"),
        (["a.png", "b.png", "c.png", "stray.dcm"], "images"),
        (["scan.png"], "images"),
        (["x_1.png", "y_2.png", "z_3.png"], "images"),
        (["patient_a.nii.gz", "patient_b.nii.gz"], "studies"),
        (["a.zip", "b.nii"], "studies"),
    ],
)
def test_one_rule_for_what_is_a_study(predictor, names, kind):
    from tumorseg.studies import classify_names

    assert classify_names(names) == kind
    client = TestClient(create_app(predictor))
    assert client.post("/api/classify", json=names).json()["kind"] == kind


def test_a_folder_of_two_plain_niftis_is_two_studies(tiny_model, tmp_path):
    """The CLI reads it as the page does (classify_names: 'studies'), not as "folder holds no images"."""
    import csv

    import nibabel as nib

    from .conftest import cli_predict, smooth_noise

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("patient_a.nii.gz", "patient_b.nii.gz"):
        vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / name))
    (folder / "README.txt").write_text("two patients")
    assert cli_predict(folder, tmp_path / "o", tiny_model) == 0
    rows = list(csv.DictReader((tmp_path / "o" / "summary.csv").read_text().splitlines()))
    assert [r["outputs"] for r in rows] == ["patient_a/", "patient_b/"]


def test_a_folder_or_a_series_upload_of_one_nifti_is_that_study(tiny_model, predictor, tmp_path):
    """One NIfTI in a folder (CLI) or sent as the one member of 'files' (API) is read as that file;
    it used to be "folder holds no images or studies" / "series: holds no image slices"."""
    import csv

    import nibabel as nib

    from .conftest import api_client, cli_predict, smooth_noise

    folder = tmp_path / "one"
    folder.mkdir()
    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / "patient_a.nii.gz"))
    assert cli_predict(folder, tmp_path / "o", tiny_model) == 0
    rows = list(csv.DictReader((tmp_path / "o" / "summary.csv").read_text().splitlines()))
    assert [r["outputs"] for r in rows] == ["patient_a/"]
    client = api_client(predictor)
    data = (folder / "patient_a.nii.gz").read_bytes()
    as_files = client.post("/api/study", files=[("files", ("patient_a.nii.gz", data))])
    as_file = client.post("/api/study", files={"file": ("patient_a.nii.gz", data)})
    assert as_files.status_code == as_file.status_code == 200, as_files.text
    a, b = as_files.json(), as_file.json()
    assert a["measurements"] == b["measurements"] and len(a["slices"]) == 4
    bad = client.post("/api/study", files=[("files", ("scan.nii.gz", b"\x1f\x8b not gzip"))])
    assert bad.status_code == 400 and "scan.nii.gz" in bad.json()["error"], bad.text
