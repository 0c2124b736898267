"""One display orientation for everything a user looks at or downloads (Viewer 3, item 2): the CLI's
overlays, the mask PNG the page downloads and the screen are turned alike (radiological: anterior up, the
patient's right on the left), and study.json records the turn."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from .conftest import api_client, cli_predict
from .test_study_exports_and_progress import _head, _nifti


def _stored(tmp_path, storage: str):
    vol = _head()
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    if storage == "LPS":  # the same anatomy stored right-to-left and posterior-first
        vol = vol[::-1, ::-1]
        aff = aff @ np.array([[-1, 0, 0, vol.shape[0] - 1], [0, -1, 0, vol.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    return _nifti(tmp_path / f"{storage}.nii.gz", np.ascontiguousarray(vol), aff)


def _marker_quadrant(img: np.ndarray) -> tuple[bool, bool]:
    """(top, left) of the bright marker (anterior and the patient's right in radiological display)."""
    g = img[..., :3].max(-1) if img.ndim == 3 else img
    ys, xs = np.nonzero(g >= np.percentile(g, 99.5))
    return ys.mean() < g.shape[0] / 2, xs.mean() < g.shape[1] / 2


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_cli_overlays_are_turned_as_the_screen_and_study_json_says_so(tmp_path, tiny_model, storage):
    nii = _stored(tmp_path, storage)
    out = tmp_path / "out"
    assert cli_predict(nii, out, tiny_model) == 0
    study = json.loads((out / storage / "study.json").read_text())
    d = study["display"]
    assert d["convention"] == "radiological" and d["labels"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    # the marker (anterior, patient's right) lies top-left in the written overlay of a middle slice, whatever
    # the storage order: the picture is the screen's, not the storage order's
    ov = np.asarray(Image.open(out / storage / "overlays" / "slice0007_overlay.png"))
    from tumorseg.imaging.geometry import display_transform, turned
    from tumorseg.studies import read_study

    st = read_study(nii)
    base = turned(st.volume[6], display_transform(st))  # what the page draws, turned as the page turns it
    assert _marker_quadrant(base) == (True, True)
    assert ov.shape[:2] == base.shape[:2]

    def corr(a, b):
        return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])

    grey = ov[..., :3].mean(-1)
    # the overlay is the turned slice under the heatmap: it matches the screen, not the storage order
    assert corr(grey, base[..., 1]) > 0.5 and corr(grey, base[..., 1]) > corr(grey, st.volume[6, ..., 1]) + 0.2


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_the_mask_png_download_is_turned_as_the_screen(tmp_path, predictor, storage):
    from tumorseg.imaging.geometry import display_turn, turned

    client = api_client(predictor)
    nii = _stored(tmp_path, storage)
    r = client.post("/api/study", files={"file": (nii.name, nii.read_bytes())})
    assert r.status_code == 200, r.text
    rid = r.json()["result_id"]
    thr = float(np.median(predictor.predict_study(nii).prob[6]))  # half the slice: an asymmetric mask
    sp = predictor.predict_study(nii, threshold=thr)
    assert sp.mask[6].any() and not sp.mask[6].all()
    for conv in ("radiological", "neurological"):
        png = client.get(f"/api/result/{rid}/mask.png?slice=6&threshold={thr}&convention={conv}")
        assert png.status_code == 200, png.text
        got = np.asarray(Image.open(io.BytesIO(png.content))) > 0
        want = turned(sp.mask[6], display_turn(sp.study, conv))
        assert np.array_equal(got, want)
        assert not np.array_equal(got, sp.mask[6]) or np.array_equal(want, sp.mask[6])
    assert client.get(f"/api/result/{rid}/mask.png?convention=sideways").status_code == 422


def test_the_network_sees_the_same_anatomy_the_same_way_however_it_is_stored(tmp_path, predictor):
    """research/orientation: the model sees each slice upright (display.model_turn) whatever the storage
    order, so the same anatomy stored RAS or LPS gets the same probabilities, voxel for voxel in patient
    space; slice folders (no geometry) are not turned."""
    from tumorseg.imaging.geometry import model_turn
    from tumorseg.studies import read_study

    ras, lps = (read_study(_stored(tmp_path, s)) for s in ("RAS", "LPS"))
    assert model_turn(ras) != model_turn(lps)
    a, b = predictor.predict_study(ras), predictor.predict_study(lps)
    # the LPS file holds the RAS one's rows and columns reversed: its maps, reversed back, are the RAS maps
    np.testing.assert_allclose(a.prob, b.prob[:, ::-1, ::-1], atol=1e-5)
    slices = tmp_path / "TCGA_XX_0001_20000101"
    slices.mkdir()
    for k in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(slices / f"TCGA_XX_0001_20000101_{k + 1}.png")
    assert not any(model_turn(read_study(slices)).values())
