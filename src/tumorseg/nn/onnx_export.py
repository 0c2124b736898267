"""The network as ONNX: the one export every caller uses (the engines building one in memory, `tumorseg export`,
packaging, the benchmarks), fp32 or int8, with the model's metadata inside so the file describes itself."""

from __future__ import annotations

import io as _io

import torch

from .export_form import export_form
from .quantize import quantize_int8


def to_onnx_bytes(model: torch.nn.Module, size: int, channels: int = 3) -> bytes:
    """Export to ONNX in memory (dynamic batch, fixed size); nothing is written to disk.

    A network is exported in its export form (``model.export_form``: the same function, in ops that
    int8 onnxruntime keeps in int8 and channels-last; an ensemble's members each so).
    """
    model = export_form(model.float().eval().to(memory_format=torch.contiguous_format), size)
    buf = _io.BytesIO()
    dummy = torch.zeros(1, channels, size, size)
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


def add_onnx_metadata(onnx_bytes: bytes, meta: dict, engine: str) -> bytes:
    """Carry the model's metadata inside the ONNX file so it is self-describing too."""
    import json

    import onnx

    m = onnx.load_from_string(onnx_bytes)
    del m.metadata_props[:]
    entry = m.metadata_props.add()
    entry.key, entry.value = "tumorseg", json.dumps({**meta, "engine": engine})
    return m.SerializeToString()


def onnx_model(net, meta: dict, engine: str = "onnx-fp32", calibration=None, with_metadata: bool = True) -> bytes:
    """``net`` as an ONNX model for ``engine`` (onnx-fp32, or onnx-int8 calibrated on ``calibration`` slices of
    training patients), its metadata inside unless ``with_metadata`` is False."""
    from ..model.info import ModelInfo

    if engine not in ("onnx-fp32", "onnx-int8"):
        raise ValueError(f"{engine!r} is not an ONNX engine")
    spec = ModelInfo.from_meta(meta).input
    data = to_onnx_bytes(net, spec.size, spec.n_channels)
    if engine == "onnx-int8":
        data = quantize_int8(data, meta, calibration)
    return add_onnx_metadata(data, meta, engine) if with_metadata else data
