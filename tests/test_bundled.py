"""The bundled model and its int8 twin: checksums, the recorded default engine, agreement with fp32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tumorseg.engines import bundled, loading
from tumorseg.errors import ModelFileError
from tumorseg.imaging.files import file_sha256

from .conftest import LGG, smooth_noise

INFO = json.loads(bundled.bundled_model_path().with_suffix(".json").read_text())


def test_int8_file_checksum_matches_the_record():
    q = bundled.bundled_model_path().with_name(INFO["int8"]["file"])
    assert q.is_file() and file_sha256(q) == INFO["int8"]["sha256"]
    assert INFO["int8"]["passed"] and INFO["default_engine"] == "onnx-int8"


@pytest.mark.slow
def test_default_engine_is_the_fastest_measured_here_and_says_why():
    eng = loading.load_engine(None, threads=1)
    c = eng.choice
    assert c is not None and eng.name == c.engine and "fastest on this CPU" in eng.reason
    assert set(c.timings_ms) >= {"onnx-int8", "torch-fp32", "onnx-fp32"}
    assert c.timings_ms[eng.name] <= c.timings_ms["torch-fp32"]  # never slower than eager fp32
    assert loading.load_engine(None, "torch-fp32", threads=1).reason == "asked for"


def test_corrupted_int8_file_is_refused(tmp_path, monkeypatch):
    src = bundled.bundled_model_path()
    for f in (src, src.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    q = tmp_path / INFO["int8"]["file"]
    q.write_bytes(src.with_name(INFO["int8"]["file"]).read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(bundled, "bundled_model_path", lambda: tmp_path / src.name)
    with pytest.raises(ModelFileError, match="int8"):
        loading.load_engine(None, threads=1)
    with pytest.raises(ModelFileError, match="int8"):
        loading.load_engine(None, "onnx-int8", threads=1)


def _slices() -> np.ndarray:
    if LGG.is_dir():
        from tumorseg.train.data import discover, load_cases

        return load_cases(discover(LGG)[:2], 256).images[::2][:24]
    return np.stack([smooth_noise((256, 256, 3), k, 120) for k in range(6)])


@pytest.mark.slow
def test_int8_agrees_with_fp32():
    x = _slices()
    q = loading.load_engine(None, "onnx-int8", threads=2)
    f = loading.load_engine(None, "torch-fp32", threads=2)
    thr = float(f.meta["threshold"])
    pq, pf = q.run(x), f.run(x)
    assert ((pq >= thr) == (pf >= thr)).mean() >= 0.995
    assert np.abs(pq - pf).mean() < 0.02


@pytest.mark.train
def test_int8_file_keeps_every_convolution_in_int8():
    """No float island: no ConvTranspose or Concat (int8 onnxruntime runs neither in int8), and every
    convolution reads int8 weights and int8 activations."""
    import onnx

    g = onnx.load(str(bundled.bundled_model_path().with_name(INFO["int8"]["file"]))).graph
    producer = {o: n for n in g.node for o in n.output}
    ops = {n.op_type for n in g.node}
    assert not ops & {"ConvTranspose", "Concat"}, ops
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) >= 70
    for n in convs:
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), n.name


BLOCK_TRAIN_EXTRA = (
    "import importlib.abc, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'safetensors', 'onnx', 'matplotlib'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


@pytest.mark.slow
def test_base_install_runs_without_the_train_extra(tmp_path):
    """What the base install (no PyTorch, safetensors, onnx or matplotlib) must do: the CLI, the app and
    the Predictor on the bundled int8 model; the torch commands say which extra to install."""
    import subprocess
    import sys

    from PIL import Image

    png = tmp_path / "s.png"
    Image.fromarray(smooth_noise((256, 256, 3), 0, 120)).save(png)
    code = BLOCK_TRAIN_EXTRA + (
        "import numpy as np\n"
        "from tumorseg.app.server import create_app\n"
        "from tumorseg.cli.main import main\n"
        "from tumorseg.inference import Predictor\n"
        f"assert main(['predict', {str(png)!r}, '--out', {str(tmp_path / 'out')!r}, '--threads', '1']) == 0\n"
        "p = Predictor(threads=1)\n"
        "assert p.predict(np.zeros((256, 256, 3), np.uint8)).prob.shape == (256, 256)\n"
        "assert p.engine.name == 'onnx-int8' and 'only candidate' in p.engine.reason, p.engine_line()\n"
        "create_app(p)\n"
        f"assert main(['train', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'run')!r}]) == 2\n"
        f"assert main(['predict', {str(png)!r}, '--out', {str(tmp_path / 'o2')!r}, '--engine', 'torch-fp32']) == 2\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert 'pip install "tumorseg[train]"' in out.stderr
    assert "Traceback" not in out.stderr


def test_base_dependencies_leave_out_pytorch():
    import tomllib
    from pathlib import Path

    proj = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    base = " ".join(proj["dependencies"]).lower()
    assert not any(m in base for m in ("torch", "safetensors", "onnx>", "onnx=", "matplotlib"))
    assert any(d.startswith("torch==") for d in proj["optional-dependencies"]["train"])


@pytest.mark.slow
def test_cached_choice_of_int8_never_imports_torch(tmp_path):
    """Once this machine's measurement is cached, starting the CLI, the app or the Predictor on the
    int8 engine imports no torch (a one-slice `tumorseg predict` is about 3x faster to finish and needs
    half the memory: benchmarks/startup.py)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    env = {**os.environ, "TUMORSEG_CACHE_DIR": str(tmp_path / "cache")}
    warm = subprocess.run(
        [sys.executable, "-m", "tumorseg", "engines", "--threads", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert warm.returncode == 0, warm.stderr[-800:]
    if json.loads(warm.stdout)["engine"] != "onnx-int8":
        pytest.skip("int8 is not the fastest engine on this machine")
    png = tmp_path / "s.png"
    Image.fromarray(smooth_noise((256, 256, 3), 0, 120)).save(png)
    code = (
        "import sys, numpy as np\n"
        "import tumorseg.app.server\n"
        "from tumorseg.cli.main import main\n"
        "from tumorseg.inference import Predictor\n"
        f"assert main(['predict', {str(png)!r}, '--out', {str(tmp_path / 'out')!r}, '--threads', '1']) == 0\n"
        "p = Predictor(threads=1)\n"
        "p.predict(np.zeros((256, 256, 3), np.uint8))\n"
        "assert p.engine.name == 'onnx-int8' and p.engine.choice.cached, p.engine_line()\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.strip() == "[]", out.stdout[:300]
