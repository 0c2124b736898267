"""Checks on the real LGG data in ../shared; skipped cleanly where it is absent."""

import json

import numpy as np
import pytest

from .conftest import LGG

pytestmark = pytest.mark.skipif(not LGG.is_dir(), reason="../shared/data/lgg-kaggle_3m not present")


def test_lgg_layout_discovered():
    from tumorseg.train.data import discover

    cases = discover(LGG)
    assert len(cases) == 90
    assert sum(len(c.slices) for c in cases) == 3226
    for c in cases[:5]:
        assert [s.index for s in c.slices] == list(range(1, len(c.slices) + 1))  # contiguous, ordered


def test_lgg_slices_load_as_rgb_with_binary_masks():
    from tumorseg.train.data import discover, load_cases

    ds = load_cases(discover(LGG)[:1], 256)
    assert ds.images.shape[1:] == (256, 256, 3) and ds.images.dtype == np.uint8
    assert ds.masks.any()


@pytest.mark.slow
def test_bundled_model_on_two_lgg_patients(tmp_path):
    from tumorseg.cli.main import main
    from tumorseg.engines.bundled import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("no bundled model in this checkout")
    sub = tmp_path / "kaggle_3m"
    sub.mkdir()
    from tumorseg.train.data import discover

    cases = discover(LGG)
    meta_test = None
    from tumorseg.nn.serialise import read_model_file

    _, meta = read_model_file(bundled_model_path())
    meta_test = meta["training"]["split"]["test"]
    chosen = [c for c in cases if c.patient in meta_test][:2]
    for c in chosen:
        (sub / c.patient).symlink_to(c.slices[0].image.parent)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(sub), "--split", "all", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["n_patients"] == 2 and m["dice"] > 0.5
