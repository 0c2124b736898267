"""Inputs the model cannot judge are refused with a reason, never reported as "0 px"; odd ones warn."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tumorseg.app.server import create_app
from tumorseg.cli.main import main
from tumorseg.model.input_checks import CannotJudge

from .conftest import LGG, png_bytes


def _mri_like(gray=False):
    yy, xx = np.mgrid[:128, :128]
    head = ((yy - 64) ** 2 + (xx - 64) ** 2 < 50**2) * 90.0
    img = np.clip(head + np.random.default_rng(0).normal(0, 4, head.shape), 0, 255).astype(np.uint8)
    return img if gray else np.dstack([img, img // 2 + 10, img // 3 + 5])


@pytest.mark.parametrize(
    "arr,reason",
    [
        (np.full((4, 4, 3), 120, np.uint8), "at least 32x32"),
        ((np.random.default_rng(1).random((200, 200, 3)) * 255).astype(np.uint8), "noise"),
    ],
)
def test_refused_everywhere_with_the_reason(predictor, tiny_model, tmp_path, capsys, arr, reason):
    with pytest.raises(CannotJudge, match=reason):
        predictor.predict(arr)
    r = TestClient(create_app(predictor)).post("/api/segment", files={"file": ("x.png", png_bytes(arr))})
    assert r.status_code == 422 and reason in r.json()["error"]
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(arr))
    assert main(["predict", str(f), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert reason in err and "0 segmented, 1 failed" in err


def test_grey_slice_is_segmented_with_a_warning(predictor, tiny_model, tmp_path):
    r = predictor.predict(_mri_like(gray=True))
    assert any("single-channel" in w for w in r.warnings)
    body = TestClient(create_app(predictor)).post("/api/segment", files={"file": ("g.png", png_bytes(_mri_like(True)))})
    assert body.status_code == 200 and any("single-channel" in w for w in body.json()["warnings"])
    assert predictor.predict(_mri_like()).warnings == []
    f = tmp_path / "g.png"
    f.write_bytes(png_bytes(_mri_like(True)))
    assert main(["predict", str(f), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]) == 0
    assert "single-channel" in (tmp_path / "o" / "summary.csv").read_text()


@pytest.mark.skipif(not LGG.is_dir(), reason="needs ../shared/data/lgg-kaggle_3m")
@pytest.mark.slow
def test_no_shared_slice_is_refused():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from input_checks import run

    r = run(str(LGG))
    assert r["slices"] == 3226 and r["refused"] == 0, r
