import numpy as np
import pytest
from PIL import Image

from tumorseg.train.data import DatasetError, check_no_leak, discover, load_cases, make_split, patient_has_tumour

from .conftest import make_kaggle


def test_discover_kaggle_layout_orders_slices(kaggle_dir):
    cases = discover(kaggle_dir)
    assert len(cases) == 6
    assert [s.index for s in cases[0].slices] == [1, 2, 3, 4, 5, 6]
    assert all(s.mask.name.endswith("_mask.png") for c in cases for s in c.slices)


def test_discover_accepts_tif_layout_and_parent_folder(tmp_path):
    make_kaggle(tmp_path / "kaggle_3m", patients=3, slices=3, ext=".tif")
    cases = discover(tmp_path)  # parent of kaggle_3m
    assert len(cases) == 3 and cases[0].slices[0].image.suffix == ".tif"
    ds = load_cases(cases, 64)
    assert ds.images.shape == (9, 64, 64, 3) and ds.masks.any()


def test_generic_layout_with_pattern(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for pid in ("a", "b"):
        for n in (1, 2):
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / f"{pid}-{n}.png")
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks" / f"{pid}-{n}.png")
    assert len(discover(tmp_path)) == 4  # each image its own patient
    cases = discover(tmp_path, r"^(?P<patient>[a-z]+)-(?P<index>\d+)$")
    assert [c.patient for c in cases] == ["a", "b"] and len(cases[0].slices) == 2


def test_image_without_mask(tmp_path):
    make_kaggle(tmp_path, patients=1, slices=2)
    next(tmp_path.rglob("*_2_mask.png")).unlink()
    with pytest.raises(DatasetError, match="image without a mask"):
        discover(tmp_path)


def test_mask_of_other_size(tmp_path):
    make_kaggle(tmp_path, patients=1, slices=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(next(tmp_path.rglob("*_1_mask.png")))
    with pytest.raises(DatasetError, match="mask is 10x10"):
        load_cases(discover(tmp_path), 64)


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no image/mask pairs"):
        discover(tmp_path)


def test_no_tumour_anywhere(tmp_path):
    make_kaggle(tmp_path, patients=3, slices=2)
    for m in tmp_path.rglob("*_mask.png"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(m)
    cases = discover(tmp_path)
    with pytest.raises(DatasetError, match="no tumour"):
        make_split(cases, has_tumour=patient_has_tumour(cases))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_patient_level_no_leak_and_stratified(tmp_path, seed):
    make_kaggle(tmp_path, patients=20, slices=2, size=32)
    cases = discover(tmp_path)
    ht = {c.patient: i % 3 != 0 for i, c in enumerate(cases)}
    split = make_split(cases, seed=seed, has_tumour=ht)
    check_no_leak(split)
    allp = split["train"] + split["val"] + split["test"]
    assert sorted(allp) == sorted(c.patient for c in cases) and len(set(allp)) == len(allp)
    for part in split.values():
        assert any(ht[p] for p in part)
    assert split == make_split(cases, seed=seed, has_tumour=ht)  # seeded


def test_leak_detected():
    with pytest.raises(DatasetError, match="both"):
        check_no_leak({"train": ["a", "b"], "val": ["b"], "test": []})


def test_model_input_lookup_equals_the_formula():
    """The uint8 fast path computes the same float32 numbers as the written rule, bit for bit."""
    from tumorseg.train.data import model_input, normalisation

    x = (np.random.default_rng(0).random((2, 32, 32, 3)) * 256).astype(np.uint8)
    for norm in (normalisation(True), normalisation(False)):
        mean = np.array(norm["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.array(norm["std"], np.float32).reshape(1, 3, 1, 1)
        ref = (x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        out = model_input(x, norm)
        assert out.dtype == np.float32 and out.shape == (2, 3, 32, 32)
        assert np.array_equal(out, ref)
