"""Inference engines: one loaded model, several ways to run it on the CPU (or a GPU).

Every engine maps a uint8 batch N x S x S x 3 (RGB, at the model's input size) to
probabilities N x S x S (float32). Evaluation and the Predictor both use them, so a
Dice measured for an engine is the Dice the app delivers.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelFileError
from ..model.info import TTA_VIEWS, ModelInfo
from ..model.preprocess import model_input, with_context

if TYPE_CHECKING:  # torch is imported only by the torch engines and the ONNX export: int8 runs without it
    import torch


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class Engine:
    """A model ready to run; thread-safe (calls are serialised)."""

    name = "base"
    reason = ""  # why this engine was chosen, in one line (the CLI, /api/model and the page show it)
    choice = None  # the engine choice's record (choice.EngineChoice) when the engine was chosen by measuring

    def __init__(self, model_path: Path, meta: dict, threads: int):
        self.model_path = model_path
        self.meta = meta
        self.threads = threads

        spec = ModelInfo.from_meta(meta).input
        self.size = spec.size
        self.channels, self.context = spec.n_channels, spec.context
        self.norm = spec.normalisation.as_meta()
        self._lock = threading.Lock()

    def preprocess(self, batch_u8: np.ndarray) -> np.ndarray:
        return model_input(batch_u8, self.norm)

    def run(self, batch_u8: np.ndarray) -> np.ndarray:
        """N x S x S x C uint8 model channels -> N x S x S probabilities. Three-channel slices given to a
        2.5D model stand alone (no neighbours); ``run_stack`` gives them their neighbours."""
        if batch_u8.ndim == 4 and batch_u8.shape[-1] == 3 and self.channels != 3:
            batch_u8 = with_context(batch_u8, self.context, groups=[(i, i + 1) for i in range(len(batch_u8))])
        if batch_u8.ndim != 4 or batch_u8.shape[1:] != (self.size, self.size, self.channels):
            raise ValueError(f"engine expects N x {self.size} x {self.size} x {self.channels}, got {batch_u8.shape}")
        x = self.preprocess(batch_u8)
        with self._lock:
            logits = self._logits(x)
        if not np.isfinite(logits).all():  # a NaN map thresholds to an empty mask: a silent "no tumour"
            raise ModelFileError(
                f"{self.model_path}: the model gives non-finite outputs (NaN or infinite weights?); refused rather "
                "than reporting no tumour"
            )
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float32))))[:, 0]

    def run_views(self, x: np.ndarray, tta: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
        """(mean probability, spread or None) over the test-time views ``tta`` names (``model.info.TTA_VIEWS``:
        the identity, left-right and up-down flips of the slices and their context alike)."""

        views = []
        for v in TTA_VIEWS[tta]:
            if v == "id":
                views.append(self.run(x))
            elif v == "hflip":
                views.append(self.run(x[:, :, ::-1].copy())[:, :, ::-1])
            else:
                views.append(self.run(x[:, ::-1].copy())[:, ::-1])
        if len(views) == 1:
            return views[0], None
        stack = np.stack(views)
        return stack.mean(0), stack.std(0)

    def run_stack(
        self,
        slices_u8: np.ndarray,
        groups: list[tuple[int, int]] | None = None,
        step: int = 1,
        batch: int = 16,
        tta: str | None = None,
    ) -> np.ndarray:
        """Probabilities for N x S x S x 3 slices stacked in order; ``groups`` are the (start, stop) runs
        that are one study each (None: one study). A 2D model ignores the order. ``tta``: the views to
        average (default: the model's own, as the Predictor does)."""

        tta = ModelInfo.from_meta(self.meta).tta if tta is None else tta
        out = np.empty((len(slices_u8), self.size, self.size), np.float32)
        for s in range(0, len(slices_u8), batch):
            sel = np.arange(s, min(s + batch, len(slices_u8)))
            out[sel] = self.run_views(with_context(slices_u8, self.context, step, sel, groups), tta)[0]
        return out

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
        self.bf16 = bf16  # half precision: bf16, or fp16 on a CUDA device without bf16 (untested here: no GPU)
        self.half = torch.bfloat16
        if device.type == "cuda" and bf16 and not torch.cuda.is_bf16_supported():
            self.half = torch.float16
        self.model = model.to(device)
        if bf16:
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
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.half, enabled=self.bf16):
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


def load_onnx_file(path: Path, threads: int, engine: str | None) -> Engine:
    """A self-describing ONNX file (metadata read by onnxruntime itself: the onnx package is not needed)."""

    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        eng = OnnxEngine(path, {}, path.read_bytes(), threads or default_threads(), "onnx")
        raw = eng.session.get_modelmeta().custom_metadata_map.get("tumorseg")
    except Exception as exc:
        raise ModelFileError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    if not raw:
        raise ModelFileError(f"{path}: ONNX file without tumorseg metadata (export it with `tumorseg export`)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelFileError(f"{path}: its tumorseg metadata is not valid JSON") from None
    kind = meta.get("engine", "onnx-fp32")
    if engine and engine != kind:
        raise ValueError(f"{path} is an {kind} model; it cannot run as {engine}")
    Engine.__init__(eng, path, meta, eng.threads)
    eng.name = kind
    eng.reason = "the model file's own engine"
    return eng
