"""Training recipes as data files: each shipped recipe reads; a bad one is refused naming the file and the problem."""

from pathlib import Path

import pytest

from tumorseg.cli.main import main
from tumorseg.train.config import RecipeError, TrainConfig, read_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.json"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_in_the_repository_is_a_whole_training_config(path):
    r = read_recipe(path)
    assert "data" not in r and "out" not in r and r  # how, never where
    cfg = TrainConfig(data="DATA", out="OUT", **r)
    assert cfg.loss and cfg.lr > 0


def test_the_shipped_models_record_is_a_recipe():
    r = read_recipe(Path(__file__).resolve().parents[1] / "docs/results/train_config.json")
    assert r["loss"] == "dice+bce" and r["aug"] == "v2" and r["epochs"] == 60


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "not a JSON recipe"),
        ("[1, 2]", "a JSON object"),
        ('{"lr": 0.001, "learning_rate": 1}', "unknown settings learning_rate"),
        ('{"epochs": "ten"}', "epochs must be a finite number"),
        ('{"epochs": 2.5}', "epochs must be a whole number"),
        ('{"amp": 1}', "amp must be true or false"),
        ('{"decoder_channels": "256,128"}', "decoder_channels must be a list of numbers"),
    ],
)
def test_a_bad_recipe_is_refused_by_name(tmp_path, capsys, content, says):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(RecipeError, match=says):
        read_recipe(p)
    assert (
        main(["train", "--recipe", str(p), "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    )  # EXIT_ERROR
    err = capsys.readouterr().err
    assert str(p) in err and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_recipe_is_refused_by_name(tmp_path, capsys):
    assert main(["train", "--recipe", str(tmp_path / "nope.json"), "--data", ".", "--out", str(tmp_path / "r")]) == 2
    assert "nope.json: recipe not found" in capsys.readouterr().err


def test_a_training_run_never_writes_over_its_inputs(tmp_path, capsys, tiny_model):
    """Outputs never replace inputs, in every command: a run folder inside its --data folder, or one whose
    best.safetensors would be the --init-model it starts from, is refused in one line before anything is written."""
    import shutil

    from .conftest import make_kaggle

    data = make_kaggle(tmp_path / "d", patients=4, slices=3, size=64)  # enough for a split: only the rule refuses
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    common = ["--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "2", "--image-size", "64", "--no-amp"]
    assert main(["train", "--data", str(data), "--out", str(data / "run"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the input" in err[0], err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_model, run / "best.safetensors")
    kept = (run / "best.safetensors").read_bytes()
    args = ["train", "--data", str(data), "--out", str(run), "--init-model", str(run / "best.safetensors")]
    assert main([*args, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-model" in err[0] and "best.safetensors" in err[0], err
    assert (run / "best.safetensors").read_bytes() == kept and sorted(p.name for p in run.iterdir()) == [
        "best.safetensors"
    ]
