"""Checkpoints: model, optimiser and schedule state, written atomically, read back for --resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from ..imaging.files import atomic_write_bytes
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
    meta["meta_sha256"] = _meta_digest(meta)  # the metadata (optimiser groups, epoch, streams) checksummed too
    atomic_write_bytes(path, save(tensors, metadata={"tumorseg": json.dumps(meta)}))


def _meta_digest(meta: dict) -> str:
    import hashlib

    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# What resuming reads from a checkpoint's metadata, and the type each must have.
_META_TYPES = {
    "param_groups": list,
    "epoch": int,
    "best": (int, float),
    "bad_epochs": int,
    "sampler_state": str,
    "aug_state": str,
    "rng_numpy": str,
    "rng_python": str,
}


def _checked(meta: dict, path: Path) -> dict:
    """Refuse a checkpoint whose metadata was changed or is malformed, in one line naming the file and the key."""
    want = meta.get("meta_sha256")
    if want is not None and want != _meta_digest(meta):
        raise ModelFileError(
            f"cannot resume: {path}: its metadata was changed after it was written (checksum mismatch)"
        )
    for k, t in _META_TYPES.items():
        v = meta.get(k)
        if not isinstance(v, t) or isinstance(v, bool):
            raise ModelFileError(
                f"cannot resume: {path}: checkpoint metadata {k!r} is missing or malformed ({v!r:.60})"
            )
    groups = meta["param_groups"]
    if not groups or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise ModelFileError(f"cannot resume: {path}: checkpoint metadata 'param_groups' is malformed")
    if meta["epoch"] < 0:
        raise ModelFileError(f"cannot resume: {path}: checkpoint epoch {meta['epoch']} is negative")
    return meta


def load_checkpoint(path: Path, model, opt) -> dict:
    try:
        tensors, meta = read_model_file(path)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot resume: {exc}") from None
    meta = _checked(meta, path)
    msd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict] = {}
    try:
        model.load_state_dict(msd, strict=True)
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        json.loads(meta["rng_numpy"]), json.loads(meta["rng_python"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot resume: {path}: the checkpoint does not fit this run ({why})") from None
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(json.loads(meta["rng_numpy"]), dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(json.loads(meta["rng_python"])), py[2]))
    return meta
