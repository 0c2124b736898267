"""Cross-validation: folds that partition the train + val patients, fold runs, the out-of-fold report."""

import json

import pytest

from tumorseg.cli.main import main
from tumorseg.train.data import DatasetError, cv_folds, fold_split

from .conftest import make_kaggle
from .test_train_e2e import TRAIN


def _split(n_pool: int = 23, n_test: int = 4) -> dict:
    pool = [f"P{i:02d}" for i in range(n_pool)]
    return {"train": pool[:-5], "val": pool[-5:], "test": [f"T{i}" for i in range(n_test)]}


def test_folds_partition_the_pool_and_leave_test_alone():
    split = _split()
    has = {p: i % 4 != 0 for i, p in enumerate(split["train"] + split["val"])}  # 6 tumour-free patients
    folds = cv_folds(split, 5, has)
    pool = set(split["train"]) | set(split["val"])
    assert sorted(p for f in folds for p in f["val"]) == sorted(pool)  # each held out exactly once
    for f in folds:
        assert set(f["train"]) | set(f["val"]) == pool and not set(f["train"]) & set(f["val"])
        assert f["test"] == sorted(split["test"])
    assert max(len(f["val"]) for f in folds) - min(len(f["val"]) for f in folds) <= 1
    free = [sum(not has[p] for p in f["val"]) for f in folds]
    assert max(free) - min(free) <= 1  # tumour-free patients spread over the folds
    assert cv_folds(split, 5, has) == folds  # deterministic
    assert cv_folds(split, 5, has, seed=1) != folds


def test_fold_spec():
    split = _split()
    assert fold_split(split, "2/5") == cv_folds(split, 5)[2]
    every = fold_split(split, "all")
    assert every["val"] == [] and len(every["train"]) == 23 and every["test"] == split["test"]
    for bad in ("5/5", "x", "1-5", "-1/5"):
        with pytest.raises(DatasetError, match="--fold"):
            fold_split(split, bad)
    with pytest.raises(DatasetError, match="folds"):
        cv_folds(split, 24)


@pytest.mark.slow
def test_fold_runs_then_out_of_fold_report(tmp_path, capsys):
    from tumorseg.train.crossval import arm_report, compare_arms, out_of_fold

    data = make_kaggle(tmp_path / "data", patients=7, slices=4, size=64, seed=5)
    split = tmp_path / "split.json"
    pats = sorted(p.name for p in data.iterdir() if p.is_dir())
    split.write_text(json.dumps({"train": pats[:4], "val": pats[4:6], "test": pats[6:]}))
    base = ["train", "--data", str(data), "--split", str(split), "--epochs", "2", *TRAIN]
    # a fold needs an explicit split file (every run must fold the same patients)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--fold", "0/2", *TRAIN]) == 2
    assert "--split FILE" in capsys.readouterr().err
    # --fold all has nothing to select an epoch on
    assert main([*base, "--out", str(tmp_path / "y"), "--fold", "all"]) == 2
    assert "--select last" in capsys.readouterr().err
    arms = {}
    for arm, seed in (("a", "1"), ("b", "2")):
        runs = []
        for i in range(2):
            run = tmp_path / f"{arm}{i}"
            assert main([*base, "--out", str(run), "--fold", f"{i}/2", "--select", "last", "--seed", seed]) == 0
            got = json.loads((run / "split.json").read_text())
            assert got["val"] == fold_split(json.loads(split.read_text()), f"{i}/2")["val"]
            log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
            assert [r["best"] for r in log] == [True, True]  # --select last keeps the newest epoch
            runs.append(run)
        arms[arm] = arm_report(
            out_of_fold(runs, data, ["flair_only", "flair_only_stripped"], ("none", "hflip")), ["original"]
        )
        assert arms[arm]["n_patients"] == 6 and len(arms[arm]["conditions"]["original"]["patient_dice"]) == 6
        assert arms[arm]["postprocess"]["tta"] in ("none", "hflip")
    cmp = compare_arms(arms)
    assert cmp["paired"]["original"]["n_patients"] == 6
    assert isinstance(cmp["decision"]["b_beats_a"], bool)
    from tumorseg.train.crossval import markdown

    md = markdown(arms, cmp)
    assert "| original |" in md and "6 patients out of fold" in md and "b − a, per patient" in md
    with pytest.raises(DatasetError, match="overlap"):  # the same fold twice
        out_of_fold([tmp_path / "a0", tmp_path / "a0"], data, [])
    # the model trained on all train + val patients, blind
    every = tmp_path / "all"
    assert main([*base, "--out", str(every), "--fold", "all", "--select", "last"]) == 0
    assert json.loads((every / "split.json").read_text())["val"] == []
    log = [json.loads(x) for x in (every / "log.jsonl").read_text().splitlines()]
    assert [r["val_dice"] for r in log] == [None, None] and (every / "best.safetensors").is_file()


def test_grid_sweep_gives_the_postprocess_masks():
    """The packaging/cross-validation grid caches components; every row must equal PostProcess's own rule."""
    import numpy as np

    from tumorseg.model.postprocess import PostProcess
    from tumorseg.train.evaluation import GRID_HYSTERESIS, GRID_MIN_PIXELS, GRID_THRESHOLDS, _Sweep, stack_metrics

    rng = np.random.default_rng(0)
    n, size = 12, 48
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    probs = rng.random((n, size, size)).astype(np.float32) * 0.45  # faint speckle: components of all sizes
    for i in range(n):
        if i % 3:
            b = (yy - 20 - i) ** 2 + (xx - 24) ** 2 < (3 + i) ** 2
            masks[i] = b
            probs[i][b] += 0.2 + 0.05 * i
    probs = np.clip(probs, 0, 1)
    patients = ["a"] * 5 + ["b"] * 6 + ["c"]  # one single-slice patient: no 3D rule there
    sweep = _Sweep(probs, masks, patients)
    for thr in GRID_THRESHOLDS:
        for min_px in GRID_MIN_PIXELS:
            for low in (lo for lo in GRID_HYSTERESIS if lo < thr):
                want = stack_metrics(probs, masks, patients, PostProcess(thr, min_px, size, low))
                got = sweep.metrics(thr, min_px, low)
                for k in ("dice", "dice_per_patient_mean", "empty_slice_fp_rate", "precision", "recall"):
                    assert got[k] == pytest.approx(want[k], abs=1e-12, nan_ok=True), (thr, min_px, low, k)
    # the grid shared by forked workers is the grid computed in one process, row for row
    from tumorseg.train.evaluation import choose_postprocess

    views = {
        t: {"original": (probs, masks), "flair_only": (probs[:, ::-1].copy(), masks[:, ::-1].copy())}
        for t in ("none", "hflip")
    }
    one = choose_postprocess(views, patients, ["original", "flair_only"])
    assert choose_postprocess(views, patients, ["original", "flair_only"], workers=3) == one
    assert len(one[1]) == 2 * sum(len([lo for lo in GRID_HYSTERESIS if lo < t]) for t in GRID_THRESHOLDS) * len(
        GRID_MIN_PIXELS
    )


@pytest.mark.slow
def test_cosine_over_wall_time_ends_annealed_at_the_limit(tmp_path, capsys):
    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=2)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1000", *TRAIN]
    assert main([*args, "--schedule", "cosine-time"]) == 2  # needs a time budget
    assert "--max-minutes" in capsys.readouterr().err
    assert main([*args, "--schedule", "cosine-time", "--max-minutes", "0.2", "--samples-per-epoch", "16"]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert 1 < len(log) < 1000  # stopped by the clock, not by the epochs
    lrs = [r["lr"] for r in log]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.35 * 1e-3  # annealing with time (lr 1e-3)


@pytest.mark.slow
def test_fine_tune_into_a_four_stage_decoder_keeps_what_fits_and_resumes(tmp_path, capsys):
    from tumorseg.nn.serialise import load_model

    from .conftest import save_tiny_model

    data = make_kaggle(tmp_path / "data", patients=5, slices=4, size=64, seed=4)
    start = save_tiny_model(tmp_path / "start.safetensors")
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--init-model", str(start), *TRAIN]
    args += ["--decoder-channels", "256,128,64,32", "--fresh-lr-mult", "10"]
    assert main([*args, "--epochs", "1"]) == 0
    assert "initialised fresh: head.weight" in capsys.readouterr().err  # the head's bias has the old shape
    assert main([*args, "--epochs", "2", "--resume"]) == 0  # the optimiser's two groups come back
    net, meta = load_model(run / "best.safetensors")
    assert meta["architecture"]["decoder_channels"] == [256, 128, 64, 32] and len(net.decoder.blocks) == 4
    init, _ = load_model(start)
    assert not (net.encoder.conv1.weight - init.encoder.conv1.weight).abs().max() > 0.5  # fine-tuned, not replaced
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
