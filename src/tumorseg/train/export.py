"""`tumorseg export`: ONNX files for other runtimes, with a parity check against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engines.loading import load_engine
from ..errors import ModelFileError
from ..imaging.files import atomic_write_bytes, same_file
from ..model.info import ModelInfo
from ..nn.onnx_export import onnx_model
from ..nn.serialise import load_model


def calibration_slices(
    data_dir: str, size: int, n: int = 64, seed: int = 0, split: dict | None = None, context: int = 0
) -> np.ndarray:
    """Slices for int8 calibration (as model channels, neighbours included for a 2.5D model), half with
    tumour, from the model's training patients when known."""
    from .data import discover, load_cases

    cases = discover(data_dir)
    train = ((split or {}).get("training", {}).get("split") or {}).get("train")
    if train:
        cases = [c for c in cases if c.patient in set(train)][:12]
    rng = np.random.default_rng(seed)
    ds = load_cases(cases, size)
    fg = np.flatnonzero(ds.masks.reshape(len(ds), -1).any(1))
    bg = np.setdiff1d(np.arange(len(ds)), fg)
    pick = np.concatenate(
        [rng.choice(fg, min(n // 2, len(fg)), replace=False), rng.choice(bg, min(n - n // 2, len(bg)), replace=False)]
    )
    return ds.model_channels(np.sort(pick), context)


def export_onnx(model: str | None, out: str, calibration: str | None = None) -> list[str]:
    from ..engines.bundled import resolve_model

    path = resolve_model(model)
    qout = str(Path(out).with_suffix("")) + "-int8.onnx"
    for target in (out, qout) if calibration else (out,):
        if same_file(target, path) or (calibration and same_file(target, calibration)):
            raise ModelFileError(f"--out {out}: would replace the input {target}; choose another output name")
    net, meta = load_model(path)

    spec = ModelInfo.from_meta(meta).input
    size, ch = spec.size, spec.n_channels
    data = onnx_model(net, meta, "onnx-fp32")
    atomic_write_bytes(out, data)
    lines = [f"wrote {out} ({len(data) / 1e6:.1f} MB, opset 17, dynamic batch, input 'image' Nx{ch}x{size}x{size})"]
    # parity: PyTorch fp32 vs onnxruntime on random-but-realistic inputs
    rng = np.random.default_rng(0)
    x = (rng.random((4, size, size, ch)) * 255).astype(np.uint8)
    a = load_engine(path, "torch-fp32").run(x)
    b = load_engine(out).run(x)
    lines.append(
        f"parity vs PyTorch fp32: max |dp| = {np.abs(a - b).max():.2e}, "
        f"mask agreement {((a >= 0.5) == (b >= 0.5)).mean() * 100:.3f}%"
    )
    if calibration:
        calib = calibration_slices(calibration, size, split=meta, context=spec.context)
        q = onnx_model(net, meta, "onnx-int8", calib)
        atomic_write_bytes(qout, q)
        lines.append(f"wrote {qout} ({len(q) / 1e6:.1f} MB, static int8 QDQ, per-channel)")
    return lines
