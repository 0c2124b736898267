"""Inference engines: one loaded model, several ways to run it on the CPU (or a GPU).

Every engine maps a uint8 batch N x S x S x 3 (RGB, at the model's input size) to
probabilities N x S x S (float32). Evaluation and the Predictor both use them, so a
Dice measured for an engine is the Dice the app delivers.
"""

from __future__ import annotations

import io as _io
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import model_input
from .io import ModelFileError, file_sha256

if TYPE_CHECKING:  # torch is imported only by the torch engines and the ONNX export: int8 runs without it
    import torch

ENGINES = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
# The default for a model file without a packaged int8 twin: bf16 keeps fp32's Dice at 2.4x its speed.
# The bundled model ships an int8 ONNX file built and checked at packaging (scripts/package_model.py
# --int8); default.json records whether it passed, and the bundled default engine follows that record.
DEFAULT_ENGINE = "torch-bf16"


def cpu_has_vnni() -> bool:
    """int8 convolutions are fast only with VNNI (AVX-512 VNNI or AVX-VNNI); unknown CPUs count as yes."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def bundled_default_engine() -> tuple[str, Path | None, str]:
    """(engine, int8 file or None, why) for the bundled model, from the record written at packaging."""
    import json

    info_path = bundled_model_path().with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("default_engine") != "onnx-int8":
        return DEFAULT_ENGINE, None, "no int8 file passed the validation check at packaging"
    q = bundled_model_path().with_name(info["int8"]["file"])
    if not q.is_file():
        return DEFAULT_ENGINE, None, f"{q.name} is missing from this installation"
    if not cpu_has_vnni():
        return DEFAULT_ENGINE, None, "this CPU lacks VNNI, where int8 is slower than bf16"
    if file_sha256(q) != info["int8"]["sha256"]:
        raise ModelFileError(f"{q}: sha256 does not match {info_path.name}; the bundled int8 model is corrupted")
    return "onnx-int8", q, "int8 passed the validation check at packaging (default.json)"


def bundled_model_path() -> Path:
    return Path(str(resources.files("tumorseg") / "models" / "default.safetensors"))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A model file path; None means the bundled default, whose sha256 is checked."""
    if model is not None:
        p = Path(model)
        if not p.is_file():
            raise ModelFileError(f"{p}: model file not found")
        return p
    p = bundled_model_path()
    if not p.is_file():
        raise ModelFileError(f"{p}: the bundled default model is missing from this installation; pass --model FILE")
    info = p.with_suffix(".json")
    if info.is_file():
        import json

        want = json.loads(info.read_text()).get("sha256")
        if want and file_sha256(p) != want:
            raise ModelFileError(f"{p}: sha256 does not match {info.name}; the bundled model is corrupted")
    return p


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class Engine:
    """A model ready to run; thread-safe (calls are serialised)."""

    name = "base"
    reason = ""  # why this engine was chosen (shown by /api/model and the CLI)

    def __init__(self, model_path: Path, meta: dict, threads: int):
        self.model_path = model_path
        self.meta = meta
        self.threads = threads
        self.size = int(meta.get("input_size", 256))
        norm = meta.get("normalisation", {})
        self.norm = norm
        self._lock = threading.Lock()

    def preprocess(self, batch_u8: np.ndarray) -> np.ndarray:
        return model_input(batch_u8, self.norm)

    def run(self, batch_u8: np.ndarray) -> np.ndarray:
        if batch_u8.ndim != 4 or batch_u8.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"engine expects N x {self.size} x {self.size} x 3, got {batch_u8.shape}")
        x = self.preprocess(batch_u8)
        with self._lock:
            logits = self._logits(x)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float32))))[:, 0]

    def _logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchEngine(Engine):
    def __init__(
        self, model_path: Path, meta: dict, model: torch.nn.Module, threads: int, bf16: bool, device: torch.device
    ):
        import torch

        super().__init__(model_path, meta, threads)
        self.name = "torch-bf16" if bf16 else "torch-fp32"
        self.device = device
        self.bf16 = bf16
        self.model = model.to(device)
        if device.type == "cpu" and bf16:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        prev = torch.get_num_threads()
        if self.device.type == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        try:
            t = torch.from_numpy(x).to(self.device)
            if self.bf16:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(t)
            return out.float().cpu().numpy()
        finally:
            if self.device.type == "cpu" and self.threads:
                torch.set_num_threads(prev)


class OnnxEngine(Engine):
    def __init__(self, model_path: Path, meta: dict, onnx_bytes: bytes, threads: int, name: str):
        super().__init__(model_path, meta, threads)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = name

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def to_onnx_bytes(model: torch.nn.Module, size: int) -> bytes:
    """Export to ONNX in memory (dynamic batch, fixed size); nothing is written to disk.

    A ``UNetResNet50`` is exported in its export form (``model.UNetExportForm``: the same function,
    in ops that int8 onnxruntime keeps in int8 and channels-last).
    """
    import torch

    from .model import UNetExportForm, UNetResNet50

    model = model.float().eval().to(memory_format=torch.contiguous_format)
    if isinstance(model, UNetResNet50):
        model = UNetExportForm(model, size)
    buf = _io.BytesIO()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        buf,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return buf.getvalue()


def load_engine(
    model: str | os.PathLike | None = None,
    engine: str | None = None,
    threads: int = 0,
    device: str = "auto",
    calibration: np.ndarray | None = None,
) -> Engine:
    """Load a model file and wrap it in the requested engine.

    Args:
        model: a .safetensors or self-describing .onnx file; None for the bundled model.
        engine: one of ENGINES; None for the default (for the bundled model: the engine recorded at
            packaging, int8 where it passed and the CPU has VNNI; else torch-bf16).
        threads: CPU threads (0: up to 8).
        device: 'auto', 'cpu' or 'cuda' for the torch engines.
        calibration: slices for building int8 from a model without a packaged int8 file.
    Returns:
        An ``Engine``; ``engine.reason`` says why this engine was chosen.
    """
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if model is not None and str(model).lower().endswith(".onnx"):
        return load_onnx_file(Path(model), threads, engine)
    reason = "asked for" if engine else f"default for a model without a packaged int8 file ({DEFAULT_ENGINE})"
    if model is None and engine in (None, "onnx-int8"):
        chosen, qfile, why = bundled_default_engine()
        if qfile is not None:
            resolve_model(None)  # the bundled safetensors is checked too
            eng = load_onnx_file(qfile, threads, "onnx-int8")
            eng.reason = why if engine is None else "asked for"
            return eng
        if engine is None:
            engine, reason = chosen, why
    engine = engine or DEFAULT_ENGINE
    if engine == "onnx-int8" and calibration is None:
        raise ValueError(
            "onnx-int8 for this model needs calibration: run `tumorseg export --model M --out F.onnx "
            "--int8-calibration TRAIN_DATA` and pass the -int8.onnx file as the model"
        )
    import torch

    from .model import load_model

    path = resolve_model(model)
    net, meta = load_model(path)
    threads = threads or default_threads()
    if engine.startswith("torch"):
        dev = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        eng = TorchEngine(path, meta, net, threads, engine == "torch-bf16", dev)
        eng.reason = reason
        return eng
    onnx_bytes = to_onnx_bytes(net, int(meta.get("input_size", 256)))
    if engine == "onnx-int8":
        from .quantize import quantize_int8

        onnx_bytes = quantize_int8(onnx_bytes, meta, calibration)
    eng = OnnxEngine(path, meta, onnx_bytes, threads, engine)
    eng.reason = reason
    return eng


def add_onnx_metadata(onnx_bytes: bytes, meta: dict, engine: str) -> bytes:
    """Carry the model's metadata inside the ONNX file so it is self-describing too."""
    import json

    import onnx

    m = onnx.load_from_string(onnx_bytes)
    del m.metadata_props[:]
    entry = m.metadata_props.add()
    entry.key, entry.value = "tumorseg", json.dumps({**meta, "engine": engine})
    return m.SerializeToString()


def load_onnx_file(path: Path, threads: int, engine: str | None) -> Engine:
    import json

    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    data = path.read_bytes()
    try:
        import onnx

        proto = onnx.load_model_from_string(data)
        raw = {p.key: p.value for p in proto.metadata_props}.get("tumorseg")
        del proto
    except Exception as exc:
        raise ModelFileError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    if not raw:
        raise ModelFileError(f"{path}: ONNX file without tumorseg metadata (export it with `tumorseg export`)")
    meta = json.loads(raw)
    kind = meta.get("engine", "onnx-fp32")
    if engine and engine != kind:
        raise ValueError(f"{path} is an {kind} model; it cannot run as {engine}")
    eng = OnnxEngine(path, meta, data, threads or default_threads(), kind)
    eng.reason = "the model file's own engine"
    return eng
