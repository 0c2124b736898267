"""Training on studies: NIfTI case folders read as inference reads them, several sources mixed by weight,
per-source splits, FLAIR-only sequence dropout, and a fine-tune of a model on a user's own labelled cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorseg.cli.main import main
from tumorseg.train.data import DatasetError, Source, discover, discover_sources, load_cases, resize_rgb

from .conftest import make_kaggle, save_tiny_model


def make_nifti_cases(root: Path, n: int = 4, seed: int = 0, shape=(40, 48, 12), three: int = 1) -> Path:
    """``n`` synthetic cases in the BraTS layout: a bright ellipsoid 'brain' with a brighter blob 'tumour',
    ``<case>_seg.nii.gz`` with BraTS labels (1, 2, 4); the first ``three`` cases also have t1 and t1c."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    brain = ((x - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 < 1
    for i in range(n):
        case = f"Case_{i:03d}"
        d = root / case
        d.mkdir(parents=True, exist_ok=True)
        cx, cy = rng.integers(14, shape[0] - 14), rng.integers(14, shape[1] - 14)
        core = ((x - cx) ** 2 + (y - cy) ** 2 < 16) & (z >= 3) & (z < 9)
        rim = ((x - cx) ** 2 + (y - cy) ** 2 < 36) & (z >= 2) & (z < 10) & ~core
        seg = np.zeros(shape, np.uint8)
        seg[rim], seg[core] = 2, 4
        seg[core & (x == cx)] = 1
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        for seq, gain in (("flair", 1.0), ("t1", 0.6), ("t1c", 0.8)):
            if seq != "flair" and i >= three:
                continue
            vol = (brain * (90 + rng.normal(0, 6, shape)) + (seg > 0) * 110 * gain).clip(0, 255).astype(np.uint8)
            nib.save(nib.Nifti1Image(vol, affine), str(d / f"{case}_{seq}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(d / f"{case}_seg.nii.gz"))
    return root


def test_nifti_cases_are_read_as_predict_reads_them(tmp_path):
    from tumorseg.imaging.geometry import model_turn, turned
    from tumorseg.studies import read_reference, read_study

    root = make_nifti_cases(tmp_path / "cases", n=3)
    cases = discover(root)
    assert [c.patient for c in cases] == ["Case_000", "Case_001", "Case_002"]
    assert all(c.study is not None and c.label.name.endswith("_seg.nii.gz") for c in cases)
    assert [c.patient for c in discover(root / "Case_001")] == ["Case_001"]  # one case folder given directly
    ds = load_cases(cases[:2], 64)
    st = read_study(cases[1].study)  # what `tumorseg predict` feeds the model: standardised brain intensity
    assert st.intensity_gains is not None
    z = st.n_slices
    assert len(ds) == 2 * z and ds.patients[z:] == ["Case_001"] * z and ds.indices[z:] == list(range(z))
    # ... turned upright as inference turns it before the network (display.model_turn)
    turn = model_turn(st)
    assert turn["flip_y"]  # this affine stores the slices upside down
    assert np.array_equal(ds.images[z + 5], resize_rgb(turned(st.volume[5], turn), 64))
    ref = read_reference(cases[1].label, st)  # whole tumour = seg > 0, in the study's slice layout
    assert ref.sum() > 0 and ds.masks[z:].sum() > 0
    assert np.array_equal(ds.masks[z:].any((1, 2)), ref.any((1, 2)))
    # a FLAIR-only case: FLAIR fills the other two channels, as inference fills them
    flair_only = load_cases([cases[2]], 64)
    assert np.array_equal(flair_only.images[..., 0], flair_only.images[..., 1])
    assert np.array_equal(flair_only.images[..., 2], flair_only.images[..., 1])
    three = load_cases([cases[0]], 64)
    assert not np.array_equal(three.images[..., 0], three.images[..., 1])


def test_a_case_without_its_label_is_refused_by_name(tmp_path):
    root = make_nifti_cases(tmp_path / "cases", n=2)
    (root / "Case_001" / "Case_001_seg.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"Case_001.*without a label file.*Case_001_seg\.nii\.gz"):
        discover(root)


def test_sources_parse_weights_and_refuse_bad_ones(tmp_path):
    assert Source.parse("a/b=0.25") == Source("a/b", 0.25)
    odd = tmp_path / "x=2"
    odd.mkdir()
    assert Source.parse(str(odd)) == Source(str(odd))  # an existing path is never split
    for bad in ("a=zero", "a=-1", "a=0", "a=nan"):
        with pytest.raises(DatasetError, match="weight"):
            Source.parse(bad)
    k = make_kaggle(tmp_path / "k", patients=3, slices=2, size=32)
    with pytest.raises(DatasetError, match="also in"):
        discover_sources([str(k), str(k) + "=2"])


@pytest.mark.train
def test_sources_get_their_weight_s_share_of_patches(tmp_path):
    from tumorseg.train.augment import PatchSampler

    k = make_kaggle(tmp_path / "k", patients=4, slices=4, size=64)
    n = make_nifti_cases(tmp_path / "n", n=2)
    cases = discover_sources([f"{k}=3", f"{n}=1"])
    ds = load_cases(cases, 64)
    assert ds.source_weights == {str(k): 3.0, str(n): 1.0}
    nifti_slices = sum(p.startswith("Case_") for p in ds.patients)
    assert nifti_slices > len(ds) / 2  # the NIfTI source has more slices, yet gets a quarter of the patches
    s = PatchSampler(ds, 32, fg_fraction=0.5, seed=0)
    draws = [s._pick(None, s.p_any) for _ in range(4000)] + [s._pick(s.fg_slices, s.p_fg) for _ in range(4000)]
    share = np.mean([ds.patients[i].startswith("Case_") for i in draws])
    assert 0.22 < share < 0.28, share


@pytest.mark.train
def test_flair_only_dropout_gives_flair_in_every_channel_at_its_share():
    import torch

    from tumorseg.train.augment import augment_for_other_sites

    g = torch.Generator().manual_seed(0)
    # pre- and post-contrast black, FLAIR grey: an image made FLAIR-only has grey in all three channels (the
    # intensity changes that follow still act per channel), a kept one black ones (brightness and noise only)
    x = torch.stack([torch.full((16, 16), v) for v in (0.0, 0.5, 0.0)])[None].repeat(400, 1, 1, 1)
    y = torch.zeros(400, 1, 16, 16)
    out, _ = augment_for_other_sites(x, y, g, p_seq=0.0, p_flair_only=0.5)
    pre, post = out[:, 0].mean((1, 2)), out[:, 2].mean((1, 2))
    made = (pre > 0.1) & (post > 0.1)
    assert bool(((pre > 0.1) == (post > 0.1)).float().mean() > 0.97)  # both channels together
    assert 0.4 < made.float().mean() < 0.6
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, _ = augment_for_other_sites(x[:8], y[:8], g0)
    b, _ = augment_for_other_sites(x[:8], y[:8], g1, p_flair_only=0.0)
    assert torch.equal(a, b)  # 0: the v2 recipe exactly, the same random draws


@pytest.mark.train
def test_tied_copies_keep_a_flair_only_image_three_identical_channels():
    """Issue 43 (a): a channel that is a copy of FLAIR (dropout, or as stored) takes FLAIR's gamma, contrast and
    noise, as a FLAIR-only study gives the model three identical channels; other images keep their own draws,
    and with the setting off the draws are v2's, bit for bit."""
    import torch

    from tumorseg.train.augment import augment_for_other_sites

    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 24, 24)
    stored_copy = base.repeat(1, 3, 1, 1)  # a FLAIR-only file / an LGG slice whose sequences are FLAIR copies
    three = torch.cat([torch.rand(64, 1, 24, 24), base, torch.rand(64, 1, 24, 24)], 1)
    x = torch.cat([stored_copy, three])
    y = torch.zeros(128, 1, 24, 24)
    off, _ = augment_for_other_sites(x.clone(), y, torch.Generator().manual_seed(5), p_seq=0.0, p_flair_only=0.25)
    on, _ = augment_for_other_sites(
        x.clone(), y, torch.Generator().manual_seed(5), p_seq=0.0, p_flair_only=0.25, tie_copies=True
    )
    same = lambda t: (t[:, 0] == t[:, 1]).flatten(1).all(1) & (t[:, 2] == t[:, 1]).flatten(1).all(1)  # noqa: E731
    assert bool(same(on[:64]).all())  # stored copies stay identical
    assert not bool(same(off[:64]).any())  # untied (v2/v4): each copy got its own gamma/contrast/noise
    tied_dropout = same(on[64:])  # three-sequence images made FLAIR-only by dropout (about 25 %)
    assert 0.05 < float(tied_dropout.float().mean()) < 0.5
    assert not bool(same(off[64:]).any())
    # the images that stay three-sequence are transformed exactly as without tying (the same random draws)
    keep = ~tied_dropout
    assert torch.equal(on[64:][keep], off[64:][keep])
    a, _ = augment_for_other_sites(x[:8], y[:8], torch.Generator().manual_seed(3), p_flair_only=0.25)
    b, _ = augment_for_other_sites(x[:8], y[:8], torch.Generator().manual_seed(3), p_flair_only=0.25, tie_copies=False)
    assert torch.equal(a, b)
    del g


def test_brain_cropped_cases_are_padded_to_a_full_field_of_view_never_stretched(tmp_path):
    """Issue 43 (b): with pad_studies a brain-cropped case (here 40 x 48) sits centred on a zero square of that size
    before resizing, so its tumour keeps its aspect and is as small as in a full study; 0 keeps the old stretch."""
    from tumorseg.train.data import pad_centred

    a = np.arange(6 * 4).reshape(6, 4)
    p = pad_centred(a, 10)
    assert p.shape == (10, 10) and np.array_equal(p[2:8, 3:7], a) and p.sum() == a.sum()
    assert pad_centred(a, 3).shape == (6, 6)  # never cut: at least the larger side
    root = make_nifti_cases(tmp_path / "cases", n=1)
    stretched = load_cases(discover(root), 64)
    padded = load_cases(discover(root), 64, pad_studies=96)
    assert len(padded) == len(stretched) and padded.images.shape == stretched.images.shape
    k = int(np.argmax(stretched.masks.reshape(len(stretched), -1).sum(1)))
    assert padded.masks[k].sum() < stretched.masks[k].sum() * 0.5  # the field of view is larger: tumour smaller
    for m in (padded.masks[k],):  # a round tumour stays round (equal extent along both axes)
        ys, xs = np.nonzero(m)
        assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 1
    border = np.concatenate([padded.images[:, :8].ravel(), padded.images[:, -8:].ravel()])
    assert border.max() == 0  # zeros around the case


def test_recipe_settings_for_tied_copies_and_padding_default_off():
    from tumorseg.train.config import defaults, read_recipe

    d = defaults()
    assert d["tie_copies"] is False and d["pad_studies"] == 0  # the v2 and v4 recipes train as before
    for name in ("v2", "v4"):
        r = read_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.json")
        assert "tie_copies" not in r and "pad_studies" not in r


@pytest.mark.slow
def test_fine_tune_a_model_on_mixed_slice_and_nifti_sources(tmp_path, capsys):
    """The README's recipe for a user's own labelled NIfTI cases, here mixed with a slice folder: each source
    is split by patient on its own, the run trains, resumes and writes a model that loads."""
    from tumorseg.nn.serialise import load_model

    k = make_kaggle(tmp_path / "k", patients=5, slices=4, size=64, seed=2)
    n = make_nifti_cases(tmp_path / "n", n=5, seed=1)
    start = save_tiny_model(tmp_path / "start.safetensors")
    run = tmp_path / "run"
    args = ["train", "--data", f"{k}=1", "--data", f"{n}=2", "--out", str(run), "--init-model", str(start)]
    args += ["--image-size", "64", "--patch-size", "64", "--batch-size", "4", "--samples-per-epoch", "8"]
    args += ["--threads", "1", "--aug", "v2", "--flair-only", "0.3", "--loss", "dice+bce"]
    assert main([*args, "--epochs", "1"]) == 0
    split = json.loads((run / "split.json").read_text())
    for part in ("train", "val", "test"):  # both sources in every part
        assert any(p.startswith("Case_") for p in split[part]) and any(p.startswith("TCGA_") for p in split[part])
    assert len(split["data"]) == 2 and split["data"][1].endswith("=2")
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    net, meta = load_model(run / "best.safetensors")
    assert meta["training"]["config"]["flair_only"] == 0.3
    assert meta["training"]["config"]["data"] == [f"{k}=1", f"{n}=2"]


@pytest.mark.train
def test_flair_only_needs_aug_v2(tmp_path, capsys):
    n = make_nifti_cases(tmp_path / "n", n=4)
    args = ["train", "--data", str(n), "--out", str(tmp_path / "run"), "--image-size", "64", "--patch-size", "64"]
    assert main([*args, "--flair-only", "0.3", "--epochs", "1"]) == 2
    assert "--flair-only 0.3: needs --aug v2" in capsys.readouterr().err
