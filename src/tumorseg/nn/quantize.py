"""Static int8 quantisation of the ONNX model (onnxruntime), calibrated on real slices."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import numpy as np

from ..model.info import ModelInfo
from ..model.preprocess import model_input


def quantize_qdq(onnx_bytes: bytes, batches: Iterable[dict[str, np.ndarray]]) -> bytes:
    """The project's one int8 recipe: static QDQ, per-channel symmetric int8 weights, asymmetric uint8
    activations (onnxruntime's fast u8s8 kernels), ranges from ``batches`` (input name -> array)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="tumorseg-q-") as tmp:
        src = os.path.join(tmp, "fp32.onnx")
        pre = os.path.join(tmp, "pre.onnx")
        dst = os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as fh:
            fh.write(onnx_bytes)
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:
            pre = src
        quantize_static(
            pre,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        with open(dst, "rb") as fh:
            return fh.read()


def quantize_int8(onnx_bytes: bytes, meta: dict, calibration: np.ndarray | None) -> bytes:
    """Quantise the model to int8; ``calibration`` is N x S x S x C uint8 model channels.

    Calibration slices should come from training data (never the test patients).
    """
    if calibration is None or len(calibration) == 0:
        raise ValueError("onnx-int8 needs calibration slices (e.g. --int8-calibration DATA_DIR)")

    norm = ModelInfo.from_meta(meta).input.normalisation.as_meta()
    return quantize_qdq(
        onnx_bytes, ({"image": model_input(calibration[i : i + 1], norm)} for i in range(len(calibration)))
    )
