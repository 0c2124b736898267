"""The bundled model and its int8 twin: checksums, the recorded default engine, agreement with fp32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tumorseg import engines
from tumorseg.model import ModelFileError, file_sha256

from .conftest import LGG, smooth_noise

INFO = json.loads(engines.bundled_model_path().with_suffix(".json").read_text())


def test_int8_file_checksum_matches_the_record():
    q = engines.bundled_model_path().with_name(INFO["int8"]["file"])
    assert q.is_file() and file_sha256(q) == INFO["int8"]["sha256"]
    assert INFO["int8"]["passed"] and INFO["default_engine"] == "onnx-int8"


def test_default_engine_follows_the_record_and_says_why():
    eng = engines.load_engine(None, threads=1)
    expected = "onnx-int8" if engines.cpu_has_vnni() else "torch-bf16"
    assert eng.name == expected and eng.reason
    assert engines.load_engine(None, "torch-fp32", threads=1).reason == "asked for"


def test_corrupted_int8_file_is_refused(tmp_path, monkeypatch):
    src = engines.bundled_model_path()
    for f in (src, src.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    q = tmp_path / INFO["int8"]["file"]
    q.write_bytes(src.with_name(INFO["int8"]["file"]).read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(engines, "bundled_model_path", lambda: tmp_path / src.name)
    monkeypatch.setattr(engines, "cpu_has_vnni", lambda: True)
    with pytest.raises(ModelFileError, match="int8"):
        engines.load_engine(None, threads=1)
    monkeypatch.setattr(engines, "cpu_has_vnni", lambda: False)
    eng = engines.load_engine(None, threads=1)  # without VNNI the int8 file is not used at all
    assert eng.name == "torch-bf16" and "VNNI" in eng.reason


def _slices() -> np.ndarray:
    if LGG.is_dir():
        from tumorseg.data import discover, load_cases

        return load_cases(discover(LGG)[:2], 256).images[::2][:24]
    return np.stack([smooth_noise((256, 256, 3), k, 120) for k in range(6)])


def test_int8_agrees_with_fp32():
    x = _slices()
    q = engines.load_engine(None, "onnx-int8", threads=2)
    f = engines.load_engine(None, "torch-fp32", threads=2)
    thr = float(f.meta["threshold"])
    pq, pf = q.run(x), f.run(x)
    assert ((pq >= thr) == (pf >= thr)).mean() >= 0.995
    assert np.abs(pq - pf).mean() < 0.02


def test_int8_file_keeps_every_convolution_in_int8():
    """No float island: no ConvTranspose or Concat (int8 onnxruntime runs neither in int8), and every
    convolution reads int8 weights and int8 activations."""
    import onnx

    g = onnx.load(str(engines.bundled_model_path().with_name(INFO["int8"]["file"]))).graph
    producer = {o: n for n in g.node for o in n.output}
    ops = {n.op_type for n in g.node}
    assert not ops & {"ConvTranspose", "Concat"}, ops
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) >= 70
    for n in convs:
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), n.name


def test_int8_path_never_imports_torch(tmp_path):
    """The app, the CLI and the Predictor with the bundled int8 model run without torch (a one-slice
    `tumorseg predict` is about 3x faster to finish and needs half the memory: benchmarks/startup.py);
    torch is imported only for the torch engines, export and training."""
    import subprocess
    import sys

    from PIL import Image

    if not engines.cpu_has_vnni():
        pytest.skip("without VNNI the default engine is torch-bf16")
    png = tmp_path / "s.png"
    Image.fromarray(smooth_noise((256, 256, 3), 0, 120)).save(png)
    code = (
        "import sys, numpy as np\n"
        "import tumorseg.app.server\n"
        "from tumorseg.cli import main\n"
        "from tumorseg.inference import Predictor\n"
        f"assert main(['predict', {str(png)!r}, '--out', {str(tmp_path / 'out')!r}, '--threads', '1']) == 0\n"
        "p = Predictor(threads=1)\n"
        "p.predict(np.zeros((256, 256, 3), np.uint8))\n"
        "assert p.engine.name == 'onnx-int8', p.engine.name\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.strip() == "[]", out.stdout[:300]
