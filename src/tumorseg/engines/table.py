"""The engine table: every way to run a model, one row each (a new engine is one row here and, where its builder
is new, one branch in ``loading._Loader``). The CLI's choices, REST's and the engines' come from this one list."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineRow:
    """One inference engine.

    name: what the user types (``--engine``); needs: the install that provides it ("base": onnxruntime,
    "train": PyTorch); exact: it computes the fp32 function itself (the others are checked against it when a model
    is packaged); native: where it runs at full speed ("any", or "bf16": a CPU with bf16 arithmetic or a CUDA
    device — emulated bf16 is several times slower than fp32); builder: how it is made from a model file ("torch":
    the network, "onnx-export": the network exported to ONNX in memory, "onnx-file": a packaged ONNX file).
    """

    name: str
    needs: str
    exact: bool
    native: str
    builder: str


ENGINE_TABLE = (
    EngineRow("torch-fp32", "train", True, "any", "torch"),
    EngineRow("torch-bf16", "train", False, "bf16", "torch"),
    EngineRow("onnx-fp32", "base", True, "any", "onnx-export"),  # the ONNX export is tested exact to 1e-5
    EngineRow("onnx-int8", "base", False, "any", "onnx-file"),
)
ENGINE_NAMES = tuple(r.name for r in ENGINE_TABLE)
ROWS = {r.name: r for r in ENGINE_TABLE}
EXACT = tuple(r.name for r in ENGINE_TABLE if r.exact)  # the fp32 function itself
ACCURACY_CHECK = 0.005  # |val Dice - fp32| a packaged engine must keep (scripts/package_model.py)
