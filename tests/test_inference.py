from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tumorseg import Predictor
from tumorseg.errors import ImageReadError
from tumorseg.imaging.render import heatmap_overlay, jet

from .conftest import smooth_noise


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((64, 64), np.uint8),
        ((37, 91), np.uint8),
        ((300, 200, 3), np.uint8),
        ((50, 60, 4), np.uint8),
        ((80, 80), np.uint16),
        ((33, 47, 3), np.uint16),
        ((64, 64), np.float32),
        ((64, 64, 1), np.uint8),
    ],
)
def test_outputs_at_original_resolution(predictor, shape, dtype):
    hi = 255 if dtype == np.uint8 else (4000 if dtype == np.uint16 else 1)
    img = smooth_noise(shape, 0, hi, dtype)
    r = predictor.predict(img)
    h, w = shape[:2]
    assert r.prob.shape == (h, w) and r.prob.dtype == np.float32
    assert r.mask.shape == (h, w) and r.mask.dtype == bool
    assert r.heatmap_overlay.shape == (h, w, 3) and r.heatmap_overlay.dtype == np.uint8
    assert r.contour_overlay.shape == (h, w, 3)
    assert 0 <= r.prob.min() <= r.prob.max() <= 1
    assert np.array_equal(r.mask, r.prob >= r.threshold)
    assert r.area_pixels == int(r.mask.sum())


def test_path_and_bytes_give_the_same_result(predictor, tmp_path):
    img = smooth_noise((70, 70, 3), 1)
    tifffile.imwrite(tmp_path / "a.tif", img)
    a = predictor.predict(tmp_path / "a.tif")
    b = predictor.predict((tmp_path / "a.tif").read_bytes(), name="a.tif")
    c = predictor.predict(img)
    assert np.allclose(a.prob, b.prob) and np.allclose(a.prob, c.prob)


def test_area_in_mm2_uses_spacing(predictor):
    r = predictor.predict(np.zeros((64, 64), np.uint8), threshold=0.0, pixel_spacing=(0.5, 0.25))
    assert r.area_pixels == 64 * 64
    assert r.area_mm2 == pytest.approx(64 * 64 * 0.125)


def test_tta_returns_uncertainty(predictor):
    r = predictor.predict(np.zeros((40, 40, 3), np.uint8), tta=True)
    assert r.uncertainty is not None and r.uncertainty.shape == (40, 40)


def test_bad_input_is_a_clear_error(predictor, tmp_path):
    p = tmp_path / "x.png"
    p.write_text("not an image")
    with pytest.raises(ImageReadError, match="x.png"):
        predictor.predict(p)
    with pytest.raises(ImageReadError, match="shape"):
        predictor.predict(np.zeros((4, 4, 7)))


def test_jet_endpoints_and_overlay_floor():
    assert tuple(jet(np.array(0.0))) == (0, 0, 128)  # dark blue
    assert tuple(jet(np.array(1.0))) == (128, 0, 0)  # dark red
    assert tuple(jet(np.array(0.5))) == (128, 255, 128)
    img = np.full((2, 2, 3), 100, np.uint8)
    prob = np.array([[0.0, 1.0], [0.01, 1.0]], np.float32)
    out = heatmap_overlay(img, prob, alpha=1.0, floor=0.05)
    assert tuple(out[0, 0]) == (100, 100, 100)  # below floor: transparent
    assert tuple(out[0, 1]) == (128, 0, 0)


def test_model_info_has_disclaimer(predictor):
    assert "not a medical device" in predictor.info()["disclaimer"].lower()


def test_predictor_is_exported_from_package():
    import tumorseg

    assert tumorseg.Predictor is Predictor


def test_image_file_png_written_by_predict_cli(tiny_model, tmp_path):
    from tumorseg.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(src / "slice one.png")
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    rc = main(["predict", str(src), str(src / "missing.tif"), "--out", str(out), "--model", str(tiny_model)])
    assert rc == 1  # some failed, the rest done
    for suffix in ("_mask.png", "_overlay.png", "_prob.png"):
        im = np.asarray(Image.open(out / f"slice one{suffix}"))
        assert im.shape[:2] == (50, 40)
    import csv

    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert list(rows[0])[:3] == ["file", "tumour_pixels", "area_mm2"] and list(rows[0])[-1] == "error"
    by_name = {Path(r["file"]).name: r for r in rows}
    assert sorted(by_name) == ["broken.png", "missing.tif", "slice one.png"]  # each input once
    assert not by_name["slice one.png"]["error"] and by_name["slice one.png"]["tumour_pixels"] != ""
    for bad in ("broken.png", "missing.tif"):  # a failure is a row with its reason
        assert by_name[bad]["error"].startswith(by_name[bad]["file"]) and by_name[bad]["tumour_pixels"] == ""


def test_predict_refuses_to_write_into_input_folder(tiny_model, tmp_path):
    from tumorseg.cli.main import main

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path), "--model", str(tiny_model)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_evaluate_keeps_the_masks_it_scored(tiny_model, tmp_path):
    """``keep_masks``: the bit-packed final masks, in order, are exactly what the metrics counted."""
    from tumorseg.train.evaluation import evaluate

    from .conftest import make_kaggle

    data = make_kaggle(tmp_path / "d", patients=2, slices=3, size=64)
    r = evaluate(
        data, model=str(tiny_model), split="all", engine="torch-fp32", threshold=0.5, progress=False, keep_masks=True
    )
    bits = np.unpackbits(r["masks"], axis=1)
    assert bits.shape == (6, 64 * 64)
    counts = r["per_patient_counts"].values()
    assert int(bits.sum()) == sum(c[0] + c[1] for c in counts)  # tp + fp
    assert "masks" not in evaluate(data, model=str(tiny_model), split="all", engine="torch-fp32", progress=False)


@pytest.mark.slow
def test_evaluate_dice_is_the_dice_of_the_masks_the_predictor_delivers(tmp_path):
    """One post-processing rule (postprocess.PostProcess): evaluation scores exactly the masks users get,
    with a component rule that removes something (so the two paths are really compared)."""
    from tumorseg.inference import Predictor
    from tumorseg.model.metrics import SegmentationMetrics
    from tumorseg.train.data import discover, load_cases
    from tumorseg.train.evaluation import evaluate

    from .conftest import make_kaggle, save_tiny_model

    model = save_tiny_model(tmp_path / "m.safetensors", seed=3, min_component_pixels=40)
    data = make_kaggle(tmp_path / "d", patients=2, slices=4, size=64)
    ds = load_cases(discover(data), 64)
    probe = Predictor(model, engine="torch-fp32")
    thr = float(np.quantile(probe.engine.run(ds.images), 0.85))  # a speckled mask: small components exist
    r = evaluate(
        data, model=str(model), split="all", engine="torch-fp32", threshold=thr, progress=False, keep_masks=True
    )
    pred = Predictor(model, engine="torch-fp32", threshold=thr)
    masks = np.stack([pred.predict(img).mask for img in ds.images])
    acc = SegmentationMetrics()
    acc.update(masks, ds.masks, ds.patients, ds.names)
    assert np.array_equal(np.unpackbits(r["masks"], axis=1).reshape(masks.shape).astype(bool), masks)
    assert acc.aggregate()["dice"] == pytest.approx(r["metrics"]["dice"], abs=1e-12)
    raw = pred.engine.run(ds.images) >= thr
    assert (raw != masks).any()  # the component rule did act, on both paths alike
