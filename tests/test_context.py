"""2.5D: neighbouring slices as input channels, on the one model contract; 3D hysteresis for stacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tumorseg.model.postprocess import PostProcess
from tumorseg.model.preprocess import context_step, groups_of, model_input, single_with_context, with_context

from .conftest import make_kaggle, save_tiny_model


def _stack(n=5, s=8):
    x = np.zeros((n, s, s, 3), np.uint8)
    for k in range(n):
        x[k, ..., 0], x[k, ..., 1], x[k, ..., 2] = 10 * k, 10 * k + 1, 10 * k + 2
    return x


def test_neighbours_are_the_flair_of_the_slices_beside_clamped_at_each_studys_ends():
    x = _stack(6)
    c = with_context(x, 1, groups=[(0, 3), (3, 6)])
    assert c.shape == (6, 8, 8, 5)
    assert [int(v) for v in c[:, 0, 0, 3]] == [1, 1, 11, 31, 31, 41]  # FLAIR of k-1 (study 2 starts at 3)
    assert [int(v) for v in c[:, 0, 0, 4]] == [11, 21, 21, 41, 51, 51]  # FLAIR of k+1
    assert np.array_equal(c[..., :3], x)
    # a single image: its own FLAIR as both neighbours
    one = single_with_context(x[2], 1)
    assert list(one[0, 0]) == [20, 21, 22, 21, 21]
    # wider steps where the slices are thin
    assert context_step(1.0, 4.0) == 4 and context_step(5.0, 4.0) == 1 and context_step(None, 4.0) == 1
    assert [int(v) for v in with_context(x, 1, step=2)[:, 0, 0, 4]] == [21, 31, 41, 51, 51, 51]
    assert groups_of(["a", "a", "b", "b", "b", "c"]) == [(0, 2), (2, 5), (5, 6)]


def test_normalisation_of_neighbour_channels_is_flairs():
    x = np.full((1, 4, 4, 5), 255, np.uint8)
    norm = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.5]}
    out = model_input(x, norm)
    assert out.shape == (1, 5, 4, 4)
    assert np.allclose(out[0, :, 0, 0], [(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.5, 3.2, 3.2])


def test_a_widened_model_computes_exactly_what_the_2d_model_did(tmp_path):
    from tumorseg.nn.serialise import load_model, save_model
    from tumorseg.nn.unet import widen_input

    m2d, meta = load_model(save_tiny_model(tmp_path / "m.safetensors"))
    x = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        a = m2d(torch.from_numpy(model_input(x, meta["normalisation"])))
        widen_input(m2d, 5)
        b = m2d(torch.from_numpy(model_input(with_context(x, 1), meta["normalisation"])))
    assert torch.equal(a, b)
    # saved and loaded back as a 2.5D model: five channels, the context recorded in its contract
    meta25 = {**meta, "context": {"slices_each_side": 1, "spacing_mm": 4.0, "sequence": "FLAIR"}}
    save_model(m2d, tmp_path / "m25.safetensors", meta25)
    m25, meta_back = load_model(tmp_path / "m25.safetensors")
    assert m25.encoder.conv1.in_channels == 5
    from tumorseg.model.info import ModelInfo

    spec = ModelInfo.from_meta(meta_back).input
    assert (spec.context, spec.n_channels, spec.context_mm) == (1, 5, 4.0)


def test_widening_with_a_share_of_flair_keeps_a_lone_images_answer_but_uses_neighbours(tmp_path):
    from tumorseg.nn.serialise import load_model
    from tumorseg.nn.unet import widen_input

    m2d, meta = load_model(save_tiny_model(tmp_path / "m.safetensors"))
    x = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        a = m2d(torch.from_numpy(model_input(x, meta["normalisation"])))
        w_flair = m2d.encoder.conv1.weight[:, 1].clone()
        widen_input(m2d, 5, share=0.2)
        w = m2d.encoder.conv1.weight
        assert torch.allclose(w[:, 1], 0.6 * w_flair) and torch.allclose(w[:, 3], 0.2 * w_flair)
        alone = m2d(torch.from_numpy(model_input(with_context(x[:1], 1), meta["normalisation"])))
        stack = m2d(torch.from_numpy(model_input(with_context(x, 1), meta["normalisation"])))
    assert torch.allclose(alone[0], a[0], atol=1e-4)  # neighbours = copies: the 2D answer
    assert (stack[1] - a[1]).abs().max() > 10 * (alone[0] - a[0]).abs().max() + 1e-5  # real neighbours change it
    with pytest.raises(ValueError, match="leaves the centre"):
        widen_input(load_model(save_tiny_model(tmp_path / "n.safetensors"))[0], 5, share=0.5)


def _context_model(tmp_path, seed=0):
    """A tiny 2.5D model whose neighbour weights are not zero, so context changes its answer."""
    from tumorseg.nn.serialise import load_model, save_model
    from tumorseg.nn.unet import widen_input

    net, meta = load_model(save_tiny_model(tmp_path / f"base{seed}.safetensors", seed=seed))
    widen_input(net, 5)
    with torch.no_grad():
        net.encoder.conv1.weight[:, 3:] = torch.randn_like(net.encoder.conv1.weight[:, 3:]) * 0.5
    meta = {**meta, "context": {"slices_each_side": 1, "spacing_mm": 0.0, "sequence": "FLAIR"}}
    path = tmp_path / f"ctx{seed}.safetensors"
    save_model(net, path, meta)
    return path


@pytest.mark.slow
def test_every_front_end_gives_a_25d_model_the_same_context(tmp_path):
    """Predictor on a slice folder = evaluation's stack = Engine.run_stack; a lone image = its own context."""
    from tumorseg.engines.loading import load_engine
    from tumorseg.inference import Predictor

    model = _context_model(tmp_path)
    data = make_kaggle(tmp_path / "k", patients=1, slices=5, size=64)
    folder = next(p for p in data.iterdir() if p.is_dir())
    pred = Predictor(model, engine="torch-fp32")
    sp = pred.predict_study(folder)
    from tumorseg.train.data import discover, load_cases

    ds = load_cases(discover(data), 64)
    eng = load_engine(model, "torch-fp32")
    stack = eng.run_stack(ds.images)
    assert np.allclose(sp.prob, stack, atol=1e-5)
    alone = eng.run(ds.images)  # three channels: each slice without neighbours
    assert not np.allclose(alone[1:-1], stack[1:-1], atol=1e-4), "context must matter for this model"
    single = pred.predict(ds.images[2])
    assert np.allclose(single.prob, alone[2], atol=1e-5)


@pytest.mark.slow
def test_a_25d_model_exports_to_onnx_with_its_context(tmp_path):
    from tumorseg.engines.loading import load_engine
    from tumorseg.train.export import export_onnx

    model = _context_model(tmp_path)
    lines = export_onnx(str(model), str(tmp_path / "m.onnx"))
    assert "Nx5x64x64" in lines[0] and "mask agreement 100.000%" in lines[1], lines
    eng = load_engine(tmp_path / "m.onnx")
    x = np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    assert np.allclose(eng.run_stack(x), load_engine(model, "torch-fp32").run_stack(x), atol=1e-4)


def test_hysteresis_keeps_faint_voxels_that_touch_the_lesion_in_3d_only():
    prob = np.zeros((4, 16, 16), np.float32)
    prob[1, 4:10, 4:10] = 0.9  # the obvious slice
    prob[2, 5:9, 5:9] = 0.3  # its faint end, next slice down
    prob[3, 12:15, 12:15] = 0.3  # a faint blob elsewhere
    post = PostProcess(0.5, 0, 16, hysteresis_low=0.2)
    m = post.apply_stack(prob)
    assert m[1].sum() == 36 and m[2].sum() == 16 and m[3].sum() == 0
    assert np.array_equal(PostProcess(0.5, 0, 16).apply_stack(prob), prob >= 0.5)  # off: the 2D rule
    assert np.array_equal(post.apply(prob[2]), prob[2] >= 0.5)  # a 2D image keeps the 2D rule


@pytest.mark.slow
def test_train_25d_from_a_2d_model_then_evaluate(tmp_path):
    from tumorseg.cli.main import main
    from tumorseg.model.info import ModelInfo
    from tumorseg.nn.serialise import read_model_file

    data = make_kaggle(tmp_path / "data", patients=6, slices=6, size=64, seed=3)
    base = save_tiny_model(tmp_path / "base.safetensors")
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--patch-size",
        "64",
    ]
    args += ["--batch-size", "4", "--samples-per-epoch", "16", "--threads", "1", "--init-model", str(base)]
    assert main([*args, "--context", "1", "--aug", "v2"]) == 0
    _, meta = read_model_file(run / "best.safetensors")
    spec = ModelInfo.from_meta(meta).input
    assert spec.context == 1 and spec.context_mm == 4.0 and meta["architecture"]["in_channels"] == 5
    assert meta["channels"][3:] == ["FLAIR -1", "FLAIR +1"]
    # the context recipe of the second attempt: weights from a share of FLAIR, a faster learning rate
    # for them, the best epoch chosen by the per-patient mean on the original and FLAIR-only slices
    run2 = tmp_path / "run2"
    args2 = [*args[:4], str(run2), *args[5:], "--context", "1", "--context-share", "0.2"]
    assert main([*args2, "--context-lr-mult", "30", "--select", "patients", "--epochs", "2"]) == 0
    rows = [json.loads(line) for line in (run2 / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["conv1_mean_abs"]) == 5 for r in rows)
    for r in rows:
        both = (r["val_dice_per_patient"] + r["val_flair_only"]["val_dice_per_patient"]) / 2
        assert r["select"] == pytest.approx(both)
    best = max(rows, key=lambda r: r["select"])
    assert best["best"] and ModelInfo.from_meta(read_model_file(run2 / "best.safetensors")[1]).input.context == 1
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(data), "--model", str(run / "best.safetensors"), "--json", str(out)]) == 0
    assert 0.0 <= json.loads(out.read_text())["dice"] <= 1.0


def test_context_boost_is_a_larger_learning_rate_for_the_neighbour_weights_only():
    """Adam's step is independent of the learning rate's split: boosting k-fold after the step equals
    running those weights alone at k times the rate."""
    from types import SimpleNamespace

    from tumorseg.train.trainer import Trainer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 4, 3, bias=False)
    ref = torch.nn.Conv2d(5, 4, 3, bias=False)
    ref.load_state_dict(conv.state_dict())
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam([ref.weight], lr=1e-2)
    ref_fast = torch.optim.Adam([torch.nn.Parameter(ref.weight.detach()[:, 3:].clone())], lr=1e-1)
    t = SimpleNamespace(
        cfg=SimpleNamespace(context_lr_mult=10.0, context=1), model=SimpleNamespace(encoder=SimpleNamespace(conv1=conv))
    )
    x = torch.randn(2, 5, 8, 8)
    for _ in range(3):
        for m, o in ((conv, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
        ref_fast.param_groups[0]["params"][0].grad = ref.weight.grad[:, 3:].clone()
        with Trainer.context_boost(t):
            opt.step()
        ref_opt.step()
        ref_fast.step()
        with torch.no_grad():
            ref.weight[:, 3:] = ref_fast.param_groups[0]["params"][0]
    assert torch.allclose(conv.weight[:, :3], ref.weight[:, :3], atol=1e-6)
    assert torch.allclose(conv.weight[:, 3:], ref.weight[:, 3:], atol=1e-6)


@pytest.mark.slow
def test_the_models_recorded_tta_is_what_every_path_runs(tmp_path):
    """A model that records TTA (chosen on validation) gets it in the Predictor, evaluation's stacks and
    --tta alike; a model without it runs one view unless --tta asks for the spread."""
    from tumorseg.engines.loading import load_engine
    from tumorseg.inference import Predictor

    plain = save_tiny_model(tmp_path / "plain.safetensors")
    flipped = save_tiny_model(tmp_path / "flip.safetensors", tta="hflip")
    from .conftest import smooth_noise

    x = np.stack([smooth_noise((64, 64, 3), seed=k) for k in range(3)])
    eng = load_engine(flipped, "torch-fp32")
    one = eng.run(x)
    both = (one + eng.run(x[:, :, ::-1].copy())[:, :, ::-1]) / 2
    assert np.allclose(eng.run_stack(x), both, atol=1e-6)
    assert np.allclose(Predictor(flipped, engine="torch-fp32").predict(x[1]).prob, both[1], atol=1e-5)
    r = Predictor(flipped, engine="torch-fp32").predict(x[1], tta=True)
    assert np.allclose(r.prob, both[1], atol=1e-5) and r.uncertainty is not None
    p = Predictor(plain, engine="torch-fp32")
    assert np.allclose(p.predict(x[1]).prob, load_engine(plain, "torch-fp32").run(x[1:2])[0], atol=1e-5)
