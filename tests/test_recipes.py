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
