"""Checkpoints: model, optimiser and schedule state, written atomically, read back for --resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from ..files import atomic_write_bytes
from ..nn.serialise import read_model_file


def save_checkpoint(path: Path, model, opt, sched_state: dict, extra: dict) -> None:
    """Resume state as one checksummed safetensors file (no pickle)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, v in st.items():
            tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        **extra,
        "param_groups": osd["param_groups"],
        "sched": sched_state,
        "rng_numpy": json.dumps(np.random.get_state()[1].tolist()),
        "rng_python": json.dumps(random.getstate()[1]),
    }
    from ..nn.serialise import tensor_digest

    meta["tensor_sha256"] = tensor_digest(tensors)
    atomic_write_bytes(path, save(tensors, metadata={"tumorseg": json.dumps(meta)}))


def load_checkpoint(path: Path, model, opt) -> dict:
    try:
        tensors, meta = read_model_file(path)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot resume: {exc}") from None
    msd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(msd, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(json.loads(meta["rng_numpy"]), dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(json.loads(meta["rng_python"])), py[2]))
    return meta
