"""Inference engines: one loaded model, several ways to run it on the CPU (or a GPU).

Every engine maps a uint8 batch N x S x S x 3 (RGB, at the model's input size) to
probabilities N x S x S (float32). Evaluation and the Predictor both use them, so a
Dice measured for an engine is the Dice the app delivers.
"""

from __future__ import annotations

import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelFileError
from .files import file_sha256
from .modelfile import model_file_meta
from .modelinfo import ENGINE_NAMES, ENGINE_TABLE
from .preprocess import model_input

if TYPE_CHECKING:  # torch is imported only by the torch engines and the ONNX export: int8 runs without it
    import torch

ENGINES = ENGINE_NAMES
EXACT = tuple(r.name for r in ENGINE_TABLE if r.exact)  # the fp32 function itself
ACCURACY_CHECK = 0.005  # |val Dice - fp32| a packaged engine must keep (scripts/package_model.py)


def torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def bundled_info() -> dict:
    import json

    info_path = bundled_model_path().with_suffix(".json")
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


def bundled_int8() -> tuple[Path | None, str]:
    """The bundled int8 file where it passed the packaging check and is intact, else (None, why)."""
    info = bundled_info()
    q8 = info.get("int8") or {}
    if not q8.get("passed"):
        return None, "no int8 file passed the validation check at packaging"
    q = bundled_model_path().with_name(q8["file"])
    if not q.is_file():
        return None, f"{q.name} is missing from this installation"
    if file_sha256(q) != q8["sha256"]:
        name = bundled_model_path().with_suffix(".json").name
        raise ModelFileError(f"{q}: sha256 does not match {name}; the bundled int8 model is corrupted")
    return q, "passed the packaging check"


def candidates(model: str | os.PathLike | None, device: str = "auto") -> tuple[list[str], dict[str, str]]:
    """The engines that may be this model's default here, and why each other one may not.

    A candidate must have passed the model's accuracy check (the bundled model records each engine's
    validation Dice; the fp32 engines are the function itself) and run natively: bf16 only where the
    CPU has bf16 arithmetic (emulated it is ~7x slower than fp32) or on a CUDA device.
    """
    from .hardware import cpu_info

    cands: list[str] = []
    excluded: dict[str, str] = {}
    if model is None:
        q, why = bundled_int8()
        if q is not None:
            cands.append("onnx-int8")
        else:
            excluded["onnx-int8"] = why
    else:
        excluded["onnx-int8"] = "no packaged int8 file for this model (tumorseg export --int8-calibration builds one)"
    if not torch_available():
        for e in ("torch-fp32", "torch-bf16", "onnx-fp32"):
            excluded[e] = 'needs PyTorch (pip install "tumorseg[train]")'
        return cands, excluded
    cands += list(EXACT)
    cuda = device in ("auto", "cuda") and _cuda_available()
    checked = bundled_info().get("engines_val_dice", {}) if model is None else {}
    if not (cuda or cpu_info().native_bf16):
        excluded["torch-bf16"] = "this CPU has no native bf16 (emulated bf16 is several times slower than fp32)"
    elif checked and abs(checked.get("torch-bf16", -1) - checked.get("torch-fp32", 0)) > ACCURACY_CHECK:
        excluded["torch-bf16"] = "did not pass the packaging accuracy check"
    else:
        cands.append("torch-bf16")
    return cands, excluded


def _cuda_available() -> bool:
    """Asks torch only where an NVIDIA driver is present: importing torch costs ~1.5 s of startup."""
    import shutil

    if not (Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi")):
        return False
    import torch

    return torch.cuda.is_available()


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
    reason = ""  # why this engine was chosen, in one line (the CLI, /api/model and the page show it)
    choice = None  # the probe's record (engine_choice.Choice) when the engine was chosen by measuring

    def __init__(self, model_path: Path, meta: dict, threads: int):
        self.model_path = model_path
        self.meta = meta
        self.threads = threads
        from .modelinfo import ModelInfo

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
            from .preprocess import with_context

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
        """(mean probability, spread or None) over the test-time views ``tta`` names (``modelinfo.TTA_VIEWS``:
        the identity, left-right and up-down flips of the slices and their context alike)."""
        from .modelinfo import TTA_VIEWS

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
        from .modelinfo import ModelInfo
        from .preprocess import with_context

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


def load_engine(
    model: str | os.PathLike | None = None,
    engine: str | None = None,
    threads: int = 0,
    device: str = "auto",
    calibration: np.ndarray | None = None,
    reprobe: bool = False,
) -> Engine:
    """Load a model file and wrap it in the requested engine.

    Args:
        model: a .safetensors or self-describing .onnx file; None for the bundled model.
        engine: one of ENGINES; None for the fastest candidate measured on this machine (``engine_choice``).
        threads: CPU threads (0: up to 8).
        device: 'auto', 'cpu' or 'cuda' for the torch engines.
        calibration: slices for building int8 from a model without a packaged int8 file.
        reprobe: measure again even where a cached measurement exists.
    Returns:
        An ``Engine``; ``engine.reason`` says in one line why this engine was chosen, and
        ``engine.choice`` holds the probe's record (None when the engine was asked for).
    """
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if model is not None and str(model).lower().endswith(".onnx"):
        return load_onnx_file(Path(model), threads, engine)
    threads = threads or default_threads()
    loader = _Loader(model, threads, device, calibration)
    if engine is not None:
        eng = loader(engine)
        eng.reason = "asked for"
        return eng
    from . import engine_choice
    from .hardware import cpu_info

    cands, excluded = candidates(model, device)
    versions = {"tumorseg": _version(), "onnxruntime": _dist_version("onnxruntime")}
    if torch_available():
        versions["torch"] = _dist_version("torch")
    dev = "cuda" if "torch-fp32" in cands and device in ("auto", "cuda") and _cuda_available() else "cpu"
    key = {"model_sha256": model_checksum(model), "device": dev, "versions": versions}
    if model is None and "onnx-int8" in cands:
        key["model_sha256"] += "+" + bundled_info()["int8"]["sha256"]
    choice, eng = engine_choice.choose(
        cands, excluded, loader, loader.size(), threads, key, reprobe=reprobe, cpu=cpu_info()
    )
    eng = eng or loader(choice.engine)
    eng.reason = choice.line()
    eng.choice = choice
    return eng


def model_checksum(model: str | os.PathLike | None) -> str:
    """The sha256 that identifies a model file (the bundled one: checked against default.json's record)."""
    path = resolve_model(model)
    return (bundled_info().get("sha256") if model is None else None) or file_sha256(path)


def _version() -> str:
    from .version import __version__

    return __version__


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


class _Loader:
    """Builds any engine for one model file, loading the torch network at most once."""

    def __init__(self, model, threads: int, device: str, calibration: np.ndarray | None):
        self.model, self.threads, self.device, self.calibration = model, threads, device, calibration
        self._net = None

    def size(self) -> int:
        """The model's input size, from its file's header (the bundled default.json does not record it)."""
        from .modelinfo import ModelInfo

        return ModelInfo.from_meta(model_file_meta(resolve_model(self.model))).input.size

    def _torch_net(self):
        if self._net is None:
            if not torch_available():
                raise ModelFileError(
                    f"{resolve_model(self.model)}: this engine needs PyTorch, which the base install leaves out; "
                    'install it with pip install "tumorseg[train]", or use the bundled model\'s onnx-int8 engine'
                )
            from .nn.serialise import load_model

            self._net = load_model(resolve_model(self.model))
        return self._net

    def __call__(self, engine: str) -> Engine:
        if engine == "onnx-int8" and self.model is None:
            q, why = bundled_int8()
            if q is None:
                raise ModelFileError(f"onnx-int8 is not available for the bundled model: {why}")
            resolve_model(None)  # the bundled safetensors is checked too
            return load_onnx_file(q, self.threads, "onnx-int8")
        if engine == "onnx-int8" and self.calibration is None:
            raise ValueError(
                "onnx-int8 for this model needs an int8 file: run `tumorseg export --model M --out F.onnx "
                "--int8-calibration TRAIN_DATA` once and pass the -int8.onnx file as --model"
            )
        net, meta = self._torch_net()
        path = resolve_model(self.model)
        if engine.startswith("torch"):
            import torch

            cuda = self.device in ("auto", "cuda") and torch.cuda.is_available()
            dev = torch.device("cuda" if cuda else "cpu")
            return TorchEngine(path, meta, net, self.threads, engine == "torch-bf16", dev)

        from .nn.onnx_export import onnx_model

        onnx_bytes = onnx_model(net, meta, engine, self.calibration, with_metadata=False)
        return OnnxEngine(path, meta, onnx_bytes, self.threads, engine)


def load_onnx_file(path: Path, threads: int, engine: str | None) -> Engine:
    """A self-describing ONNX file (metadata read by onnxruntime itself: the onnx package is not needed)."""
    import json

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
