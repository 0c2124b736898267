"""Issue 44, model files and training: non-finite weights refused at load, load errors in one line, training that
refuses bad data (NaN images, negative labels, skipped cases said), recipes validated as one schema."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import png_bytes, save_tiny_model

pytestmark = pytest.mark.train


def _rewritten(src: Path, dst: Path, change) -> Path:
    """The model file with its tensors changed by ``change(dict)`` and the checksum recomputed (as an attacker or
    a broken export would)."""
    from safetensors.torch import load, save

    from tumorseg.nn.serialise import read_model_file, tensor_digest

    _, meta = read_model_file(src)
    tensors = load(src.read_bytes())
    change(tensors)
    meta["tensor_sha256"] = tensor_digest(tensors)
    dst.write_bytes(save(tensors, metadata={"tumorseg": json.dumps(meta)}))
    return dst


def _predict_err(tmp_path, model: Path, capsys) -> tuple[int, list[str]]:
    from tumorseg.cli.main import main

    img = tmp_path / "slice.png"
    img.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    capsys.readouterr()
    rc = main(["predict", str(img), "--model", str(model), "--engine", "torch-fp32", "--out", str(tmp_path / "o")])
    return rc, [x for x in capsys.readouterr().err.strip().splitlines() if "error" in x.lower()]


def test_a_model_with_nan_weights_is_refused_not_read_as_no_tumour(tmp_path, tiny_model, capsys):
    """44.13: NaN weights (checksum recomputed) loaded, and predict answered an empty mask."""
    import torch

    def poison(t):
        k = next(k for k in t if k.endswith("weight") and t[k].ndim == 4)
        t[k] = torch.full_like(t[k], float("nan"))

    bad = _rewritten(tiny_model, tmp_path / "nan.safetensors", poison)
    rc, err = _predict_err(tmp_path, bad, capsys)
    assert rc == 2 and len(err) == 1 and "NaN" in err[0] and "nan.safetensors" in err[0]


def test_an_infinite_running_variance_is_a_switched_off_channel_not_a_broken_model(tmp_path, tiny_model):
    """The bundled v2 holds +inf in one BatchNorm running variance (its output there is exactly 0): it loads; -inf
    there, or inf in a weight, does not."""
    import torch

    from tumorseg.engines.bundled import resolve_model
    from tumorseg.errors import ModelFileError
    from tumorseg.nn.serialise import load_model

    load_model(resolve_model(None))

    def inf_var(t):
        k = next(k for k in t if k.endswith("running_var"))
        t[k] = t[k].clone()
        t[k][0] = float("inf")

    load_model(_rewritten(tiny_model, tmp_path / "var.safetensors", inf_var))

    def inf_weight(t):
        k = next(k for k in t if k.endswith("weight") and t[k].ndim == 4)
        t[k] = t[k].clone()
        t[k].view(-1)[0] = float("inf")

    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(_rewritten(tiny_model, tmp_path / "w.safetensors", inf_weight))
    del torch


def test_non_finite_outputs_are_refused_by_every_engine(tiny_model):
    from tumorseg.engines.loading import load_engine
    from tumorseg.errors import ModelFileError

    eng = load_engine(tiny_model, "torch-fp32")
    eng._logits = lambda x: np.full((len(x), 1, 64, 64), np.nan, np.float32)
    with pytest.raises(ModelFileError, match="non-finite"):
        eng.run(np.zeros((1, 64, 64, 3), np.uint8))


def test_a_model_of_the_wrong_shapes_is_refused_in_one_line(tmp_path, tiny_model, capsys):
    """44.14: the state-dict error came out as four lines (one per engine tried)."""
    import torch

    def reshape(t):
        k = next(k for k in t if k.startswith("decoder") and k.endswith("weight") and t[k].ndim == 4)
        t[k] = torch.zeros(tuple(t[k].shape[:-1]) + (t[k].shape[-1] + 2,), dtype=t[k].dtype)

    bad = _rewritten(tiny_model, tmp_path / "shapes.safetensors", reshape)
    rc, err = _predict_err(tmp_path, bad, capsys)
    assert rc == 2 and len(err) == 1 and "do not fit" in err[0] and "other shapes" in err[0]


def _case(root: Path, name: str, flair: np.ndarray, seg: np.ndarray) -> Path:
    d = root / name
    d.mkdir(parents=True)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(flair, aff), str(d / f"{name}_flair.nii.gz"))
    nib.save(nib.Nifti1Image(seg, aff), str(d / f"{name}_seg.nii.gz"))
    return d


def _good(root: Path, name: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[:32, :32, :8]
    brain = ((x - 16) ** 2 + (y - 16) ** 2) < 196
    seg = (((x - 12) ** 2 + (y - 18) ** 2) < 16) & (z > 1) & (z < 6)
    flair = (brain * (90 + rng.normal(0, 5, brain.shape)) + seg * 100).clip(0, 255).astype(np.uint8)
    return _case(root, name, flair, seg.astype(np.uint8))


def test_training_refuses_all_nan_images_and_negative_labels_naming_the_file(tmp_path):
    """44.9: an all-NaN volume with a labelled tumour was trained on as black images carrying tumour; a label of
    -1 became "no tumour"."""
    from tumorseg.train.data import DatasetError, discover, load_cases

    _good(tmp_path / "a", "Case_good")
    nan = np.full((32, 32, 8), np.nan, np.float32)
    seg = np.zeros((32, 32, 8), np.int16)
    seg[10:14, 10:14, 3] = 1
    _case(tmp_path / "b", "Case_nan", nan, seg.astype(np.uint8))
    with pytest.raises(DatasetError, match="Case_nan_flair.nii.gz.*(NaN|finite)"):
        load_cases(discover(tmp_path / "b"), 32)
    neg = seg.copy()
    neg[neg == 1] = -1
    d = _good(tmp_path / "c", "Case_neg")
    nib.save(nib.Nifti1Image(neg, np.eye(4)), str(d / "Case_neg_seg.nii.gz"))
    with pytest.raises(DatasetError, match="Case_neg_seg.nii.gz.*negative"):
        load_cases(discover(tmp_path / "c"), 32)


def test_skipped_case_folders_are_said_and_nothing_left_is_refused(tmp_path, capsys):
    """44.10: a labelled folder without FLAIR, or holding one stray file, was skipped without a line."""
    from tumorseg.train.data import DatasetError, discover

    _good(tmp_path, "Case_ok")
    nof = tmp_path / "Case_noflair"
    nof.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(nof / "Case_noflair_seg.nii.gz"))
    (tmp_path / "Case_stray").mkdir()
    (tmp_path / "Case_stray" / "notes.txt").write_text("hello")
    cases = discover(tmp_path)
    assert [c.patient for c in cases] == ["Case_ok"]
    err = capsys.readouterr().err
    assert "Case_noflair" in err and "FLAIR" in err and "Case_stray" in err
    only = tmp_path / "only"
    only.mkdir()
    (only / "Case_x").mkdir()
    (only / "Case_x" / "scan.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError):
        discover(only)


BAD_RECIPES = [
    ('{"epochs": Infinity}', "epochs"),
    ('{"decoder_channels": [256, 128.5, 64, 32, 16]}', "decoder_channels"),
    ('{"image_size": 100000}', "image_size"),
    ('{"patch_size": 100000}', "patch_size"),
    ('{"lr": 0}', "lr"),
    ('{"fg_fraction": 7}', "fg_fraction"),
    ('{"max_minutes": -1}', "max_minutes"),
    ('{"split_fractions": [0.9, -0.1, 0.2]}', "split_fractions"),
    ('{"batch_size": -4}', "batch_size"),
    ('{"patch_size": 0}', "patch_size"),
    ('{"context": -3}', "context"),
    ("[" * 100000 + "]" * 100000, "JSON"),
]


@pytest.mark.parametrize("text,setting", BAD_RECIPES)
def test_a_bad_recipe_is_one_line_naming_the_file_and_the_setting(tmp_path, text, setting, capsys):
    """44.11: each of these ended in a numpy/torch message, a traceback or an attempt to allocate 894 GiB."""
    from tumorseg.cli.main import main

    r = tmp_path / "bad.json"
    r.write_text(text)
    rc = main(["train", "--recipe", str(r), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.json" in err[0] and setting in err[0], err
    assert not (tmp_path / "run").exists()


def test_paths_in_a_recipe_are_relative_to_the_working_directory_and_said_when_missing(tmp_path, monkeypatch):
    from tumorseg.train.config import RecipeError, read_recipe

    (tmp_path / "r").mkdir()
    (tmp_path / "m.safetensors").write_bytes(b"x")
    (tmp_path / "r" / "v.json").write_text('{"init_model": "m.safetensors"}')
    monkeypatch.chdir(tmp_path)
    assert read_recipe(tmp_path / "r" / "v.json")["init_model"] == "m.safetensors"
    monkeypatch.chdir(tmp_path / "r")
    with pytest.raises(RecipeError, match="init_model.*relative to the working directory"):
        read_recipe(tmp_path / "r" / "v.json")


def test_save_tiny_model_is_still_valid(tmp_path):
    from tumorseg.nn.serialise import load_model

    load_model(save_tiny_model(tmp_path / "m.safetensors"))


def _retagged(ckpt: Path, change) -> None:
    """The checkpoint's JSON metadata changed by ``change(dict)`` (tensors untouched), as an editor would."""
    import safetensors
    from safetensors.torch import load, save

    with safetensors.safe_open(str(ckpt), framework="pt") as f:
        meta = json.loads(f.metadata()["tumorseg"])
    tensors = load(ckpt.read_bytes())
    change(meta)
    ckpt.write_bytes(save(tensors, metadata={"tumorseg": json.dumps(meta)}))


@pytest.mark.slow
def test_resume_refuses_edited_or_malformed_metadata_and_flags_it_cannot_honour(tmp_path, capsys):
    """44.12: metadata without param_groups or with epoch "one" ended in a traceback, epoch 10^9 "resumed" and
    trained nothing, and --resume --lr 0.5 --loss tversky+bce ignored both flags without a word."""
    import shutil

    from tumorseg.cli.main import main

    from .conftest import make_kaggle

    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=4)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--image-size", "64", "--patch-size", "64"]
    args += ["--batch-size", "4", "--samples-per-epoch", "8", "--threads", "1"]
    assert main([*args, "--epochs", "1"]) == 0
    ckpt = run / "last.ckpt.safetensors"
    keep = tmp_path / "keep.safetensors"
    shutil.copy(ckpt, keep)

    def one_line(rc_args, *words):
        capsys.readouterr()
        assert main(rc_args) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if "error" in x or "Traceback" in x]
        assert len(err) == 1 and all(w in err[0] for w in words), err

    _retagged(ckpt, lambda m: m.pop("param_groups"))
    one_line([*args, "--epochs", "2", "--resume"], "changed")
    for edit, word in (
        (lambda m: (m.pop("meta_sha256"), m.pop("param_groups")), "param_groups"),
        (lambda m: (m.pop("meta_sha256"), m.update(epoch="one")), "epoch"),
        (lambda m: (m.pop("meta_sha256"), m.update(epoch=10**9)), "beyond"),
    ):
        shutil.copy(keep, ckpt)
        _retagged(ckpt, edit)
        one_line([*args, "--epochs", "2", "--resume"], word)
    shutil.copy(keep, ckpt)
    one_line([*args, "--epochs", "2", "--resume", "--lr", "0.5"], "--lr", "resumed run keeps")
    one_line([*args, "--epochs", "2", "--resume", "--loss", "tversky+bce"], "--loss")
    assert main([*args, "--epochs", "2", "--resume"]) == 0
