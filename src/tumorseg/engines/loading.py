"""Loading a model as an engine: the engines this machine may run (``candidates``), the one asked for or the
fastest measured here (``choice``), built from the engine table's row (``table``). The one door from the runtime
to the network (``nn``), walked only when a torch engine or an ONNX export is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..model.info import ModelInfo, model_file_meta
from ..version import __version__
from . import choice as engine_choice
from . import hardware
from .bundled import bundled_info, bundled_int8, model_checksum, resolve_model
from .runners import Engine, OnnxEngine, TorchEngine, default_threads, load_onnx_file
from .table import ACCURACY_CHECK, ENGINE_NAMES, ENGINE_TABLE, ROWS, EngineRow


def torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def candidates(model: str | os.PathLike | None, device: str = "auto") -> tuple[list[str], dict[str, str]]:
    """The engines that may be this model's default here, and why each other one may not.

    A candidate must have passed the model's accuracy check (the bundled model records each engine's
    validation Dice; the fp32 engines are the function itself) and run natively (its row's ``native`` rule):
    bf16 only where the CPU has bf16 arithmetic (emulated it is ~7x slower than fp32) or on a CUDA device.
    Packaged files first, then the exact engines, then the others (the order the choice measures them in).
    """
    has_torch = torch_available()
    checked = bundled_info().get("engines_val_dice", {}) if model is None else {}
    cands: list[str] = []
    excluded: dict[str, str] = {}
    for row in sorted(ENGINE_TABLE, key=lambda r: (r.builder != "onnx-file", not r.exact)):
        why = _why_not(row, model, device, has_torch, checked)
        if why is None:
            cands.append(row.name)
        else:
            excluded[row.name] = why
    return cands, excluded


def _why_not(row: EngineRow, model, device: str, has_torch: bool, checked: dict) -> str | None:
    """Why ``row``'s engine may not be the default here (None: it may)."""
    if row.builder == "onnx-file":
        if model is not None:
            return "no packaged int8 file for this model (tumorseg export --int8-calibration builds one)"
        q, why = bundled_int8()
        return why if q is None else None
    if not has_torch:  # the network is needed to build it (torch engines, the in-memory ONNX export)
        return 'needs PyTorch (pip install "tumorseg[train]")'
    if row.native == "bf16":
        if not ((device in ("auto", "cuda") and _cuda_available()) or hardware.cpu_info().native_bf16):
            return "this CPU has no native bf16 (emulated bf16 is several times slower than fp32)"
        if checked and abs(checked.get(row.name, -1) - checked.get("torch-fp32", 0)) > ACCURACY_CHECK:
            return "did not pass the packaging accuracy check"
    return None


def _cuda_available() -> bool:
    """Asks torch only where an NVIDIA driver is present: importing torch costs ~1.5 s of startup."""
    import shutil

    if not (Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi")):
        return False
    import torch

    return torch.cuda.is_available()


def load_engine(
    model: str | os.PathLike | None = None,
    engine: str | None = None,
    threads: int = 0,
    device: str = "auto",
    calibration: np.ndarray | None = None,
    remeasure: bool = False,
) -> Engine:
    """Load a model file and wrap it in the requested engine.

    Args:
        model: a .safetensors or self-describing .onnx file; None for the bundled model.
        engine: one of ``table.ENGINE_NAMES``; None for the fastest candidate measured on this machine (``engine_choice``).
        threads: CPU threads (0: up to 8).
        device: 'auto', 'cpu' or 'cuda' for the torch engines.
        calibration: slices for building int8 from a model without a packaged int8 file.
        remeasure: measure again even where a cached measurement exists.
    Returns:
        An ``Engine``; ``engine.reason`` says in one line why this engine was chosen, and
        ``engine.choice`` holds the engine choice's record (None when the engine was asked for).
    """
    if engine is not None and engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if model is not None and str(model).lower().endswith(".onnx"):
        return load_onnx_file(Path(model), threads, engine)
    threads = threads or default_threads()
    loader = _Loader(model, threads, device, calibration)
    if engine is not None:
        eng = loader(engine)
        eng.reason = "asked for"
        return eng
    cands, excluded = candidates(model, device)
    versions = {"tumorseg": __version__, "onnxruntime": _dist_version("onnxruntime")}
    if torch_available():
        versions["torch"] = _dist_version("torch")
    dev = "cuda" if "torch-fp32" in cands and device in ("auto", "cuda") and _cuda_available() else "cpu"
    key = {"model_sha256": model_checksum(model), "device": dev, "versions": versions}
    if model is None and "onnx-int8" in cands:
        key["model_sha256"] += "+" + bundled_info()["int8"]["sha256"]
    choice, eng = engine_choice.choose(
        cands, excluded, loader, loader.size(), threads, key, remeasure=remeasure, cpu=hardware.cpu_info()
    )
    eng = eng or loader(choice.engine)
    eng.reason = choice.line()
    eng.choice = choice
    return eng


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
        return ModelInfo.from_meta(model_file_meta(resolve_model(self.model))).input.size

    def _torch_net(self):
        if self._net is None:
            if not torch_available():
                raise ModelFileError(
                    f"{resolve_model(self.model)}: this engine needs PyTorch, which the base install leaves out; "
                    'install it with pip install "tumorseg[train]", or use the bundled model\'s onnx-int8 engine'
                )
            from ..nn.serialise import load_model

            self._net = load_model(resolve_model(self.model))
        return self._net

    def __call__(self, engine: str) -> Engine:
        builder = ROWS[engine].builder
        if builder == "onnx-file" and self.model is None:
            q, why = bundled_int8()
            if q is None:
                raise ModelFileError(f"onnx-int8 is not available for the bundled model: {why}")
            resolve_model(None)  # the bundled safetensors is checked too
            return load_onnx_file(q, self.threads, "onnx-int8")
        if builder == "onnx-file" and self.calibration is None:
            raise ValueError(
                "onnx-int8 for this model needs an int8 file: run `tumorseg export --model M --out F.onnx "
                "--int8-calibration TRAIN_DATA` once and pass the -int8.onnx file as --model"
            )
        net, meta = self._torch_net()
        path = resolve_model(self.model)
        if builder == "torch":
            import torch

            cuda = self.device in ("auto", "cuda") and torch.cuda.is_available()
            dev = torch.device("cuda" if cuda else "cpu")
            return TorchEngine(path, meta, net, self.threads, ROWS[engine].native == "bf16", dev)

        from ..nn.onnx_export import onnx_model

        onnx_bytes = onnx_model(net, meta, engine, self.calibration, with_metadata=False)
        return OnnxEngine(path, meta, onnx_bytes, self.threads, engine)
