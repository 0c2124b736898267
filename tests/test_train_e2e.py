"""End to end on synthetic data: train -> evaluate, resume, and the JSON keys."""

import json

import numpy as np
import pytest

from tumorseg.cli.main import main
from tumorseg.train.evaluation import METRIC_KEYS

from .conftest import make_kaggle

TRAIN = [
    "--image-size",
    "64",
    "--patch-size",
    "64",
    "--batch-size",
    "8",
    "--samples-per-epoch",
    "96",
    "--lr",
    "1e-3",
    "--loss",
    "dice+bce",
    "--threads",
    "1",
    "--seed",
    "1",
]

pytestmark = pytest.mark.slow


def test_train_then_evaluate_beats_chance(tmp_path):
    data = make_kaggle(tmp_path / "data", patients=8, slices=6, size=64, seed=3)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "4", *TRAIN]) == 0
    for f in ("config.json", "split.json", "log.jsonl", "curve.png", "best.safetensors", "last.ckpt.safetensors"):
        assert (run / f).is_file(), f
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    out = tmp_path / "m.json"
    rep = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(data),
                "--model",
                str(run / "best.safetensors"),
                "--split",
                "test",
                "--json",
                str(out),
                "--report",
                str(rep),
            ]
        )
        == 0
    )
    m = json.loads(out.read_text())
    assert list(m) == list(METRIC_KEYS)
    assert m["n_patients"] == len(split["test"])
    # chance: predicting tumour everywhere gives Dice 2p/(1+p) with p the tumour share
    p = np.pi * 8**2 / 64**2 / 2
    assert m["dice"] > 2 * p / (1 + p) + 0.2, m
    assert (rep / "report.md").is_file() and (rep / "dice_histogram.png").is_file()


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_continues_where_it_stopped(tmp_path):
    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=4)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--samples-per-epoch", "16"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "1"]) == 2  # refuses to clobber an existing run
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert _epochs(run) == [1, 2]


def test_resume_may_give_a_run_stopped_by_its_time_budget_more(tmp_path, capsys):
    """A budget spent (here: a budget too small for one epoch) stops the run after the epoch; --resume alone keeps
    the budget, so it stops again after one more epoch, and an explicit --max-minutes continues it; the budget is kept
    in the run's config."""
    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=4)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--samples-per-epoch", "16"]
    assert main([*args, "--epochs", "3", "--max-minutes", "0.0001"]) == 0
    assert "time budget of 0.0001 min spent after epoch 1" in capsys.readouterr().err
    assert _epochs(run) == [1]
    assert main([*args, "--resume"]) == 0
    assert _epochs(run) == [1, 2]  # the spent budget stops it after the next epoch
    assert main([*args, "--resume", "--max-minutes", "60"]) == 0
    assert _epochs(run) == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["max_minutes"] == 60


def test_corrupted_checkpoint_gives_clear_error(tmp_path, capsys):
    data = make_kaggle(tmp_path / "data", patients=4, slices=4, size=64, seed=5)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--samples-per-epoch", "8"]
    assert main([*args, "--epochs", "1"]) == 0
    ck = run / "last.ckpt.safetensors"
    ck.write_bytes(ck.read_bytes()[:5000])
    assert main([*args, "--epochs", "2", "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_a_recipe_sets_the_run_and_flags_still_win(tmp_path):
    """`train --recipe`: the recipe's settings are the run's (its config.json says so), a flag given beside it
    wins, and --data/--out come from the command line even where the recipe (a run's record) names others."""
    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=4)
    recipe = {
        "description": "tiny",
        "data": "/elsewhere",
        "out": "/elsewhere/run",
        "image_size": 64,
        "patch_size": 32,
        "batch_size": 4,
        "samples_per_epoch": 8,
        "lr": 0.002,
        "loss": "dice+bce",
        "threads": 1,
        "decoder_channels": [256, 128, 64, 32],
        "amp": False,
        "val_batch_size": 4,
    }
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    run = tmp_path / "run"
    args = ["train", "--recipe", str(tmp_path / "r.json"), "--data", str(data), "--out", str(run), "--epochs", "1"]
    assert main([*args, "--lr", "0.0005"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == str(data) and cfg["out"] == str(run) and cfg["epochs"] == 1 and cfg["lr"] == 0.0005
    for k in ("image_size", "patch_size", "batch_size", "samples_per_epoch", "loss", "val_batch_size"):
        assert cfg[k] == recipe[k], k
    assert cfg["decoder_channels"] == [256, 128, 64, 32] and cfg["amp"] is False
