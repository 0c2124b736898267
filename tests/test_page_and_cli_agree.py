"""The page and the CLI in step (Viewer 3, item 6): one orientation rule for slice stacks, one way to name the
voxel size, slices numbered from 1 for people (the 0-based field says it is an index), one warning rule for
a missing sequence, one reference rule (a case's _seg or a slice folder's _mask images, taken by the CLI with
--reference auto or the folder, offered by the page) that says which reference it used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from .conftest import cli_predict, png_bytes, smooth_noise


def _stack(folder: Path, n: int = 4, grey: bool = False, masks: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        img = smooth_noise((64, 64) if grey else (64, 64, 3), seed=k)
        (folder / f"P_{k}.png").write_bytes(png_bytes(img))
        if masks:
            m = np.zeros((64, 64), np.uint8)
            m[20:40, 20 : 20 + 5 * k] = 255
            (folder / f"P_{k}_mask.png").write_bytes(png_bytes(m))
    return folder


def test_a_slice_stack_has_no_orientation_even_with_a_voxel_size(tmp_path, tiny_model):
    src = _stack(tmp_path / "P")
    assert cli_predict(src, tmp_path / "a", tiny_model) == 0
    s = json.loads((tmp_path / "a" / "P" / "study.json").read_text())
    assert s["orientation"] is None  # the page: "orientation unknown"
    assert any("--spacing in the CLI, 'Voxel (mm)' on the page" in n for n in s["notes"])
    assert cli_predict(src, tmp_path / "b", tiny_model, "--spacing", "0.9,0.9,3") == 0
    s = json.loads((tmp_path / "b" / "P" / "study.json").read_text())
    # issue 46.8: a voxel size carries no orientation, so no labels and display.known stays false
    assert s["orientation"] is None and s["display"]["known"] is False
    assert s["voxel_spacing_mm"] == [3.0, 0.9, 0.9] and s["voxel_spacing_order"] == ["slice", "row", "column"]
    assert "before any turn" in s["orientation_of"]


def test_a_grey_slice_folder_is_warned_like_a_grey_slice(tmp_path, tiny_model, predictor):
    src = _stack(tmp_path / "G", grey=True)
    assert cli_predict(src, tmp_path / "o", tiny_model) == 0
    s = json.loads((tmp_path / "o" / "G" / "study.json").read_text())
    assert s["single_sequence"] and any("single sequence" in n for n in s["notes"])
    one = predictor.predict(src / "P_1.png")
    assert any("single-channel" in w for w in one.warnings)
    colour = _stack(tmp_path / "C")
    assert cli_predict(colour, tmp_path / "c", tiny_model) == 0
    assert not json.loads((tmp_path / "c" / "C" / "study.json").read_text())["single_sequence"]


def test_reference_auto_and_a_slice_folder_and_slices_numbered_from_1(tmp_path, tiny_model, capsys):
    src = _stack(tmp_path / "P", masks=True)
    out = tmp_path / "o"
    assert cli_predict(src, out, tiny_model) == 0  # not asked: said, not ignored
    s = json.loads((out / "P" / "study.json").read_text())
    assert any("--reference auto compares with it" in n for n in s["notes"])
    for ref in ("auto", str(src)):
        o = tmp_path / f"r{len(ref)}"
        assert cli_predict(src, o, tiny_model, "--reference", ref) == 0
        c = json.loads((o / "comparison.json").read_text())
        assert c["reference"].endswith("(4 _mask images)")
        assert all(d["slice"] == d["slice_index"] + 1 for d in c["disagreement"])
        assert 1 <= min(d["slice"] for d in c["disagreement"])
    capsys.readouterr()
    assert cli_predict(src, tmp_path / "x", tiny_model, "--reference", str(tmp_path / "missing.nii.gz")) == 2
    err = capsys.readouterr().err
    assert err.count("missing.nii.gz") == 1 and "not found" in err


def test_reference_auto_takes_a_case_folders_seg(tmp_path, tiny_model):
    case = tmp_path / "Case_7"
    case.mkdir()
    vol = np.zeros((40, 40, 6), np.int16)
    vol[10:30, 10:30, 1:5] = 500
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), str(case / "Case_7_flair.nii.gz"))
    nib.save(nib.Nifti1Image((vol > 0).astype(np.uint8), aff), str(case / "Case_7_seg.nii.gz"))
    for src in (case, case / "Case_7_flair.nii.gz"):
        out = tmp_path / f"o_{src.name}"
        assert cli_predict(src, out, tiny_model, "--reference", "auto") == 0
        assert json.loads((out / "comparison.json").read_text())["reference"].endswith("Case_7_seg.nii.gz")


def test_the_page_offers_what_the_cli_takes():
    """The page's REF_NAME is the Python rule's pattern (studies.reference.REFERENCE_NAME)."""
    from tumorseg.studies.reference import REFERENCE_NAME

    js = (Path(__file__).resolve().parents[1] / "src" / "tumorseg" / "app" / "static" / "reference.js").read_text()
    m = re.search(r"export const REF_NAME = /(.+)/i;", js)
    assert m and m.group(1) == REFERENCE_NAME


def test_summary_keeps_pixels_and_voxels_apart(tmp_path, tiny_model):
    """Viewer 3, item 7: a study's voxels go to tumour_voxels, an image's pixels to tumour_pixels."""
    import csv

    src = _stack(tmp_path / "in" / "P")
    (tmp_path / "in" / "one.png").write_bytes(png_bytes(smooth_noise((64, 64, 3), seed=9)))
    assert cli_predict([src, tmp_path / "in" / "one.png"], tmp_path / "o", tiny_model) == 0
    rows = {
        r["file"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "o" / "summary.csv").read_text().splitlines())
    }
    study = json.loads((tmp_path / "o" / "P" / "study.json").read_text())
    assert rows["P"]["tumour_pixels"] == "" and int(rows["P"]["tumour_voxels"]) == study["tumour_voxels"]
    assert rows["one.png"]["tumour_voxels"] == "" and rows["one.png"]["tumour_pixels"] != ""


def test_a_jobs_estimate_counts_down_between_batches():
    """Viewer 3, item 7: while a batch runs, the estimate falls with the time since the last one, never grows."""
    import time

    from tumorseg.app.jobs import Job

    job = Job("j", "Case_1")
    job.started -= 10.0  # 10 s in
    job.progress(10, 40)  # 1 slice/s: 30 s left
    first = job.view()["eta_s"]
    time.sleep(0.3)
    later = job.view()["eta_s"]
    assert 29.0 <= first <= 30.0 and later < first
