import pickle
from pathlib import Path

import pytest
import torch

from tumorseg.errors import ModelFileError
from tumorseg.nn.serialise import load_model, save_model
from tumorseg.nn.unet import ResNet50Encoder, UNetResNet50, build_model, load_encoder_state

from .conftest import LGG_WEIGHTS

META = {"architecture": {"name": "unet-resnet50"}, "input_size": 64, "threshold": 0.5}


@pytest.mark.parametrize("size", [32, 64, 96])
def test_output_shape_matches_input(size):
    m = UNetResNet50().eval()
    with torch.no_grad():
        y = m(torch.zeros(2, 3, size, size))
    assert y.shape == (2, 1, size, size)


def test_non_multiple_of_32_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetResNet50()(torch.zeros(1, 3, 50, 50))


def test_decoder_uses_transposed_convs_and_skips():
    m = UNetResNet50()
    ups = [mod for mod in m.modules() if isinstance(mod, torch.nn.ConvTranspose2d)]
    assert len(ups) == 5
    # first decoder block concatenates layer3's 1024 channels with its 256 upsampled ones
    assert m.decoder.blocks[0].conv[0][0].in_channels == 256 + 1024


@pytest.mark.slow
def test_export_form_is_the_same_function_in_int8_friendly_ops():
    """The ONNX export's form: transposed convs as 1x1 conv + pixel shuffle, skip concat as a sum."""
    import onnx

    from tumorseg.nn.export_form import UNetExportForm
    from tumorseg.nn.onnx_export import to_onnx_bytes

    torch.manual_seed(0)
    m = UNetResNet50().eval()
    for mod in m.modules():  # non-trivial BN statistics, so the folding is checked
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    f = UNetExportForm(m, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (f(x) - m(x)).abs().max() < 1e-5
    assert not any(isinstance(mod, torch.nn.ConvTranspose2d) for mod in f.modules())
    ops = {n.op_type for n in onnx.load_from_string(to_onnx_bytes(m, 64)).graph.node}
    assert "Conv" in ops and not ops & {"ConvTranspose", "Concat", "Shape"}, ops
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetExportForm(m, 50)


def _torchvision_state_dict():
    """A state dict with torchvision's full ResNet50 key set (encoder keys + fc)."""
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ResNet50Encoder().state_dict().items()}
    sd["fc.weight"] = torch.randn(1000, 2048)
    sd["fc.bias"] = torch.randn(1000)
    return sd


def test_torchvision_layout_loads_every_encoder_tensor():
    sd = _torchvision_state_dict()
    enc = ResNet50Encoder()
    rep = load_encoder_state(enc, sd, "test")
    assert rep.fresh == [] and set(rep.ignored) == {"fc.weight", "fc.bias"}
    assert torch.equal(enc.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    # 320 tensors in torchvision's resnet50 state dict = 318 encoder + 2 fc
    assert len(rep.loaded) + len(rep.ignored) == 320


def test_partial_state_dict_reports_fresh_layers(tmp_path):
    sd = {k: v for k, v in _torchvision_state_dict().items() if not k.startswith(("layer4", "fc"))}
    torch.save(sd, tmp_path / "partial.pth")
    model, rep = build_model(str(tmp_path / "partial.pth"))
    assert {k.split(".")[0] for k in rep.fresh} == {"layer4"}
    assert "initialised fresh (layer4)" in rep.summary()
    assert torch.equal(model.encoder.conv1.weight, sd["conv1.weight"])


@pytest.mark.skipif(not LGG_WEIGHTS.is_file(), reason="../shared weights not present")
def test_shared_msra_weights_load():
    _, rep = build_model(str(LGG_WEIGHTS))
    assert len(rep.loaded) == 258 and {k.split(".")[0] for k in rep.fresh} == {"layer4"}


def test_save_load_round_trip_fp16(tmp_path):
    m = UNetResNet50().eval()
    save_model(m, tmp_path / "m.safetensors", META, dtype=torch.float16)
    m2, meta = load_model(tmp_path / "m.safetensors")
    assert meta["input_size"] == 64 and meta["format"] == "tumorseg-model"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), m2(x), atol=0.05)


def test_truncated_and_corrupted_model_files_refused(tmp_path):
    save_model(UNetResNet50(), tmp_path / "m.safetensors", META)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated|not a valid"):
        load_model(tmp_path / "trunc.safetensors")
    flipped = bytearray(data)
    flipped[-1000] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "flip.safetensors")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"conv1.weight": _Evil()}, fh)
    with pytest.raises(ModelFileError):
        build_model(str(p))
    with pytest.raises(ModelFileError):
        load_model(p)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_bundled_model_sha256_is_checked(tmp_path, monkeypatch):
    import json

    from tumorseg.engines import bundled

    p = tmp_path / "default.safetensors"
    save_model(UNetResNet50(), p, META, dtype=torch.float16)
    monkeypatch.setattr(bundled, "bundled_model_path", lambda: p)
    p.with_suffix(".json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ModelFileError, match="sha256"):
        bundled.resolve_model(None)
    from tumorseg.imaging.files import file_sha256

    p.with_suffix(".json").write_text(json.dumps({"sha256": file_sha256(p)}))
    assert bundled.resolve_model(None) == p


@pytest.mark.slow
def test_onnx_export_is_self_describing_and_matches_torch(tiny_model, tmp_path):
    import numpy as np

    from tumorseg.engines.loading import load_engine
    from tumorseg.train.export import export_onnx

    lines = export_onnx(str(tiny_model), str(tmp_path / "m.onnx"))
    assert "mask agreement 100.000%" in lines[1]
    eng = load_engine(tmp_path / "m.onnx")
    assert eng.name == "onnx-fp32" and eng.size == 64
    x = (np.random.default_rng(0).random((3, 64, 64, 3)) * 255).astype(np.uint8)
    ref = load_engine(tiny_model, "torch-fp32").run(x)
    assert np.abs(eng.run(x) - ref).max() < 1e-4


@pytest.mark.slow
def test_int8_export_runs_and_carries_metadata(tiny_model, tmp_path):
    import numpy as np

    from tumorseg.engines.loading import load_engine
    from tumorseg.train.export import export_onnx

    from .conftest import make_kaggle

    data = make_kaggle(tmp_path / "d", patients=2, slices=4, size=64)
    lines = export_onnx(str(tiny_model), str(tmp_path / "m.onnx"), calibration=str(data))
    assert "int8" in lines[-1]
    eng = load_engine(tmp_path / "m-int8.onnx")
    assert eng.name == "onnx-int8"
    p = eng.run(np.zeros((2, 64, 64, 3), np.uint8))
    assert p.shape == (2, 64, 64) and np.isfinite(p).all()
    with pytest.raises(ValueError, match="calibration"):
        load_engine(tiny_model, "onnx-int8")


def test_export_never_writes_over_its_input_model(tiny_model, tmp_path, capsys):
    """Outputs never replace inputs, in every command: `tumorseg export --out` naming the model itself (or a link to
    it) is refused in one line and the model file is untouched."""
    import shutil

    from tumorseg.cli.main import main

    m = tmp_path / "m.safetensors"
    shutil.copy(tiny_model, m)
    (tmp_path / "link.onnx").symlink_to(m)
    before = m.read_bytes()
    for out in (m, tmp_path / "link.onnx"):
        assert main(["export", "--model", str(m), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would replace the input" in err[0], err
    assert m.read_bytes() == before


def test_four_stage_decoder_has_no_full_resolution_convolution(tmp_path):
    """Four decoder stages end at half resolution on the stem's skip; the logits are upsampled. Round trip
    through a model file and the export form (ONNX) give the same function."""
    import numpy as np
    import onnxruntime as ort

    from tumorseg.nn.export_form import UNetExportForm
    from tumorseg.nn.onnx_export import to_onnx_bytes

    torch.manual_seed(0)
    m = UNetResNet50(3, (64, 32, 16, 8)).eval()
    seen = []
    m.head.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape[-2:])))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 1, 64, 64) and seen == [(32, 32)]  # the head runs at half resolution
    with torch.no_grad():
        assert torch.allclose(UNetExportForm(m, 64)(x), y, atol=1e-5)
    p = tmp_path / "m.safetensors"
    save_model(m, p, {**META, "architecture": {"name": "unet-resnet50", "decoder_channels": [64, 32, 16, 8]}})
    back, _ = load_model(p)
    with torch.no_grad():
        assert torch.allclose(back(x), y, atol=1e-6)
    sess = ort.InferenceSession(to_onnx_bytes(m, 64), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - y.numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="4 or 5"):
        UNetResNet50(3, (64, 32, 16))


def test_soup_averages_weights_and_refuses_other_architectures(tmp_path):
    """The soup's every float tensor is the mean of its ingredients'; it loads and runs like any model file,
    records its ingredients, and refuses to mix a different decoder."""
    from tumorseg.nn.combine import average_model_files

    torch.manual_seed(0)
    a, b = UNetResNet50().eval(), UNetResNet50().eval()
    meta = {**META, "training": {"epoch": 3, "config": {"loss": "dice+bce", "seed": 0}}}
    save_model(a, tmp_path / "a.safetensors", meta)
    save_model(b, tmp_path / "b.safetensors", {**meta, "training": {"epoch": 4, "config": {"loss": "x", "seed": 1}}})
    soup, smeta = average_model_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.state_dict()
    for k, v in ss.items():
        if v.is_floating_point():
            assert torch.allclose(v, (sa[k] + sb[k]) / 2, atol=1e-6), k
        else:
            assert torch.equal(v, sa[k]), k
    assert [i["epoch"] for i in smeta["training"]["soup"]] == [3, 4]
    assert [i["loss"] for i in smeta["training"]["soup"]] == ["dice+bce", "x"]
    save_model(soup, tmp_path / "s.safetensors", smeta)
    back, _ = load_model(tmp_path / "s.safetensors")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(back(x), soup(x), atol=1e-5)
    other = UNetResNet50(3, (64, 32, 16, 8)).eval()
    save_model(
        other,
        tmp_path / "c.safetensors",
        {**META, "architecture": {"name": "unet-resnet50", "decoder_channels": [64, 32, 16, 8]}},
    )
    with pytest.raises(ModelFileError, match="architecture"):
        average_model_files([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])
    with pytest.raises(ValueError, match="at least two"):
        average_model_files([tmp_path / "a.safetensors"])


def test_soup_script_takes_a_runs_start_point_as_an_ingredient(tmp_path):
    """``--start-of RUN``: the start is RUN's --init-model widened as training widened it (here 2D to 2.5D with
    the neighbours at 0.15 of FLAIR's weights), so start + fine-tune average to the halfway model. A run
    trained from scratch has no start to offer and is refused by name."""
    import json
    import subprocess
    import sys

    from tumorseg.nn.serialise import start_model
    from tumorseg.nn.unet import widen_input

    from .conftest import save_tiny_model

    root = Path(__file__).resolve().parents[1]
    init = save_tiny_model(tmp_path / "v2.safetensors")
    run = tmp_path / "ft"
    run.mkdir()
    ft, meta = load_model(init)
    widen_input(ft, 5, share=0.15)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(ft, run / "best.safetensors", meta)
    split = {"train": ["a"], "val": ["b"], "test": ["c"]}
    (run / "split.json").write_text(json.dumps(split))
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (run / "config.json").write_text(json.dumps({"init_model": str(init), "context": 1, "context_share": 0.15}))
    out = tmp_path / "wise"
    cmd = [sys.executable, str(root / "research/v3/soup.py"), "--run", str(run), "--start-of", str(run), "--out"]
    done = subprocess.run([*cmd, str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    start, _ = start_model(init, 5, 0.15)
    want = (start.encoder.conv1.weight + ft.encoder.conv1.weight) / 2
    soup, smeta = load_model(out / "best.safetensors")
    assert torch.allclose(soup.encoder.conv1.weight, want, atol=1e-6)
    assert [Path(i["file"]).name for i in smeta["training"]["soup"]] == ["best.safetensors", "start_of_ft.safetensors"]
    _, start_meta = load_model(out / "start_of_ft.safetensors")
    assert start_meta["architecture"]["in_channels"] == 5  # the widened start says so (the soup compares it)
    (run / "config.json").write_text(json.dumps({"init_model": None, "context": 1}))
    done = subprocess.run([*cmd, str(tmp_path / "w2")], capture_output=True, text=True)
    assert done.returncode != 0 and "trained from scratch" in done.stderr and str(run) in done.stderr


def test_an_ensemble_is_one_model_file_the_mean_of_its_members_logits(tmp_path):
    """``logit_mean_of_files``: members of different decoders in one file; it loads, exports to ONNX (each
    member in its export form) and runs as the mean of its members; members that read their input
    differently are refused, and an ensemble cannot start a fine-tune."""
    import numpy as np
    import onnxruntime as ort

    from tumorseg.nn.combine import LogitMean, logit_mean_of_files
    from tumorseg.nn.export_form import export_form
    from tumorseg.nn.onnx_export import to_onnx_bytes
    from tumorseg.nn.serialise import start_model

    torch.manual_seed(0)
    a, b = UNetResNet50().eval(), UNetResNet50(3, (64, 32, 16, 8)).eval()
    save_model(a, tmp_path / "a.safetensors", {**META, "training": {"epoch": 3}})
    arch_b = {"name": "unet-resnet50", "decoder_channels": [64, 32, 16, 8]}
    save_model(b, tmp_path / "b.safetensors", {**META, "architecture": arch_b, "training": {"epoch": 9}})
    ens, meta = logit_mean_of_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert [i["epoch"] for i in meta["training"]["ensemble"]] == [3, 9]
    save_model(ens, tmp_path / "e.safetensors", meta)
    back, _ = load_model(tmp_path / "e.safetensors")
    assert isinstance(back, LogitMean) and len(back.members) == 2
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = (a(x) + b(x)) / 2
        assert torch.allclose(back(x), want, atol=1e-5)
        assert torch.allclose(export_form(back, 64)(x), want, atol=1e-4)
    sess = ort.InferenceSession(to_onnx_bytes(back, 64), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    assert np.allclose(got, want.numpy(), atol=1e-3)
    save_model(b, tmp_path / "c.safetensors", {**META, "architecture": arch_b, "input_size": 128})
    with pytest.raises(ModelFileError, match="reads its input differently"):
        logit_mean_of_files([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])
    with pytest.raises(ModelFileError, match="cannot be the start"):
        start_model(tmp_path / "e.safetensors", 3)
    with pytest.raises(ModelFileError, match="is an ensemble itself"):
        logit_mean_of_files([tmp_path / "a.safetensors", tmp_path / "e.safetensors"])


def test_an_ensemble_file_runs_through_the_cli_like_any_model(tmp_path):
    """The front ends need nothing of their own for an ensemble: `tumorseg predict` writes its mask."""
    from tumorseg.nn.combine import logit_mean_of_files

    from .conftest import cli_predict, png_bytes, save_tiny_model, smooth_noise

    files = [save_tiny_model(tmp_path / f"m{s}.safetensors", seed=s) for s in (0, 1)]
    ens, meta = logit_mean_of_files(files)
    save_model(ens, tmp_path / "ens.safetensors", meta)
    src = tmp_path / "slice.png"
    src.write_bytes(png_bytes(smooth_noise((64, 64, 3), 5)))
    assert cli_predict(src, tmp_path / "out", tmp_path / "ens.safetensors") == 0
    assert (tmp_path / "out" / "slice_mask.png").is_file()


@pytest.mark.parametrize(
    "arch, message",
    [
        ({"name": "logit-mean", "members": [{"name": "unet-resnet50"}] * 9}, "2 to 8 members"),
        ({"name": "logit-mean", "members": [{"name": "logit-mean", "members": []}] * 2}, "member is 'logit-mean'"),
        ({"name": "unet-resnet50", "decoder_channels": [10**9, 1, 1, 1, 1]}, "not a U-Net's"),
        ({"name": "unet-resnet50", "decoder_channels": [8, 8]}, "cannot be built"),
        ({"name": "unet-resnet50", "decoder_channels": ["x"]}, "cannot be built"),
    ],
)
def test_a_hostile_architecture_header_is_refused_before_anything_is_built(tmp_path, arch, message):
    """The header decides what is allocated, so it is checked first: no thousand networks, no nested
    ensembles, no absurd widths; every refusal names the file."""
    p = tmp_path / "h.safetensors"
    save_model(torch.nn.Linear(1, 1), p, {**META, "architecture": arch})
    with pytest.raises(ModelFileError, match=message) as err:
        load_model(p)
    assert str(p) in str(err.value)
