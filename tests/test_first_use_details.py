"""Issue 46.12, the small things a new user hit: the RANO-style wording's spacing, a damaged PNG called damaged,
no empty --out folder for inputs that were all refused, and help text for every follow-up option."""

from __future__ import annotations

import pytest


def test_rano_wording_spaces_its_percentages_as_its_thresholds_do():
    from tumorseg.followup.comparison import rano_wording

    assert rano_wording(-0.04, 100, 96).startswith("product -4 % (between -50 % and +25 %)")
    assert rano_wording(0.3, 100, 130).startswith("product up +30 % (>= +25 %)")


def test_a_damaged_png_is_called_damaged_not_unsupported(tmp_path):
    from tumorseg.errors import ImageReadError
    from tumorseg.imaging.images import read_image

    f = tmp_path / "scan.png"
    f.write_bytes(b"\x00garbage that is no png at all" * 10)
    with pytest.raises(ImageReadError, match="damaged or not a PNG"):
        read_image(f)
    g = tmp_path / "scan.xyz"
    g.write_bytes(b"\x00garbage")
    with pytest.raises(ImageReadError):
        read_image(g)


def test_predict_of_a_missing_file_creates_no_out_folder(tmp_path, tiny_model):
    from tumorseg.cli.main import main

    out = tmp_path / "D"
    assert main(["predict", str(tmp_path / "missing.nii.gz"), "--model", str(tiny_model), "--out", str(out)]) != 0
    assert not out.exists()


def test_every_followup_option_has_help(capsys):
    from tumorseg.cli.main import main

    with pytest.raises(SystemExit):
        main(["followup", "--help"])
    text = capsys.readouterr().out
    opts = text.split("options:", 1)[1]
    assert "bundled model" in opts.split("--model MODEL", 1)[1][:120]


def test_the_api_page_is_served_from_the_app_itself_offline(predictor):
    """46.11: /docs loaded Swagger UI from a CDN and a favicon from the framework's site: blank offline."""
    import re

    from .conftest import api_client

    with api_client(predictor) as c:
        r = c.get("/docs")
        assert r.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
        for u in urls:
            assert c.get(u).status_code == 200, u
        assert "swagger-ui-bundle.js" in r.text and c.get("/openapi.json").json()["info"]["title"] == "tumorseg"


def test_every_view_shows_the_files_own_voxel_index_as_nibabel_gives_it(tmp_path):
    """46.2: the 2D views said (120, 120, 99), the planes (162, 120, 36), the file (77, 119, 36) for one point. Now
    the page maps RAS mm through geometry.file_index, which is nibabel's inverse affine for a NIfTI."""
    import nibabel as nib
    import numpy as np
    from nibabel.affines import apply_affine

    from tumorseg.imaging.geometry import display_affine, file_index, geometry
    from tumorseg.studies import read_study

    aff = np.array([[-1.0, 0, 0, 120], [0, -1.0, 0, 110], [0, 0, 1.0, -60], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).integers(0, 255, (60, 64, 40), dtype=np.uint8)
    f = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(f))
    st = read_study(f)
    a, _ = display_affine(st)
    m = np.array(geometry(st)["file_index"])
    for c, r, k in [(0, 0, 0), (17, 40, 36), (59, 63, 39), (30, 5, 12)]:
        mm = a @ [c, r, k, 1.0]
        want = np.rint(apply_affine(np.linalg.inv(aff), mm[:3])).astype(int)
        assert tuple(want) == file_index(st, mm[:3])
        assert tuple(np.rint(m @ mm)[:3].astype(int)) == tuple(want)  # what the page computes in fileIndex()
        assert 0 <= want[0] < 60 and 0 <= want[1] < 64 and 0 <= want[2] < 40  # a voxel of the file
