"""The model file format: a single safetensors file, tensors plus one JSON metadata entry that
says how to rebuild and use the model. Loading never unpickles anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ModelFileError
from ..imaging.files import atomic_write_bytes
from ..model.info import ModelInfo
from .unet import LogitMean, UNetResNet50, widen_input

FORMAT_VERSION = 1


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict, dtype: torch.dtype | None = None) -> None:
    """Write one self-describing, pickle-free model file (atomically)."""
    from safetensors.torch import save

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and "running_" not in k:
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {**meta, "format": "tumorseg-model", "format_version": FORMAT_VERSION}
    meta["tensor_sha256"] = tensor_digest(tensors)
    atomic_write_bytes(path, save(tensors, metadata={"tumorseg": json.dumps(meta)}))


def _finite_enough(name: str, v: torch.Tensor) -> bool:
    """No NaN anywhere and no infinity, except +inf in a BatchNorm's running variance: that channel's normalised
    output is exactly 0 (x / sqrt(inf)), a finite function; the bundled v2 has one (encoder.bn1, from the
    ImageNet weights' fp16 trip), and every engine computes it alike."""
    if bool(torch.isfinite(v).all()):
        return True
    if bool(torch.isnan(v).any()):
        return False
    return name.endswith("running_var") and bool((v[torch.isinf(v)] > 0).all())


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata, verifying the file is complete and unmodified."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: model file not found")
    data = p.read_bytes()
    try:
        tensors = load(data)
        import safetensors

        with safetensors.safe_open(str(p), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("tumorseg")
    except (SafetensorError, Exception) as exc:
        raise ModelFileError(
            f"{p}: not a valid tumorseg model file (truncated, corrupted or another format: {exc})"
        ) from None
    if raw_meta is None:
        raise ModelFileError(f"{p}: safetensors file without tumorseg metadata")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError:
        raise ModelFileError(f"{p}: model metadata is not valid JSON") from None
    want = meta.get("tensor_sha256")
    if want and tensor_digest(tensors) != want:
        raise ModelFileError(f"{p}: checksum mismatch, the weights are corrupted")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not _finite_enough(k, v)]
    if bad:
        raise ModelFileError(f"{p}: {len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}); refused")
    return tensors, meta


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a saved model (fp32, eval mode) and return it with its metadata."""
    tensors, meta = read_model_file(path)
    return model_from_tensors(tensors, meta, path), meta


def start_model(init_model: str | os.PathLike, in_channels: int, share: float = 0.0) -> tuple[UNetResNet50, dict]:
    """A fine-tune's start point: ``init_model`` widened to ``in_channels`` as training widens it (a 2D model
    as the start of a 2.5D one). Training and the soup script (a run's start as an ingredient) share it, so
    "where a run started" has one answer."""
    init, meta = load_model(init_model)
    if not isinstance(init, UNetResNet50):
        raise ModelFileError(f"{init_model}: an ensemble of networks cannot be the start of a fine-tune")
    if init.encoder.conv1.in_channels < in_channels:
        widen_input(init, in_channels, share=share)
        meta = copy.deepcopy(meta)
        if isinstance(meta.get("architecture"), dict):
            meta["architecture"]["in_channels"] = in_channels
    return init, meta


MAX_MEMBERS = 8  # an ensemble file is read whole into memory: a hostile header must not ask for 1000 networks


def _network(arch, tensors: dict[str, torch.Tensor], path: str | os.PathLike, prefix: str = "") -> nn.Module:
    """An untrained network of ``arch`` whose first convolution takes as many channels as the file's.
    The header is checked before anything is built: one level of ensemble, at most ``MAX_MEMBERS`` U-Nets,
    decoder widths a U-Net can have."""
    if arch.name == "logit-mean" and not prefix:
        if not 2 <= len(arch.members) <= MAX_MEMBERS:
            raise ModelFileError(
                f"{path}: an ensemble needs 2 to {MAX_MEMBERS} members, the file lists {len(arch.members)}"
            )
        return LogitMean([_network(m, tensors, path, f"members.{i}.") for i, m in enumerate(arch.members)])
    if arch.name != "unet-resnet50":
        what = f"an ensemble's member is {arch.name!r}; members are U-Nets" if prefix else f"{arch.name!r}"
        raise ModelFileError(f"{path}: unknown architecture ({what})")
    if not all(1 <= c <= 4096 for c in arch.decoder_channels):
        raise ModelFileError(f"{path}: decoder channels {list(arch.decoder_channels)} are not a U-Net's")
    model = UNetResNet50(3, arch.decoder_channels)
    conv1 = tensors.get(f"{prefix}encoder.conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != 3:
        widen_input(model, int(conv1.shape[1]))
    return model


def model_from_tensors(tensors: dict[str, torch.Tensor], meta: dict, path: str | os.PathLike) -> nn.Module:
    """The network a model file's metadata describes, holding ``tensors`` (fp32, eval mode)."""

    try:
        model = _network(ModelInfo.from_meta(meta).arch, tensors, path)
    except (ValueError, TypeError) as exc:  # a header no network can be built from
        raise ModelFileError(f"{path}: the architecture in its header cannot be built ({exc})") from None
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or extra or shapes:  # one line, whichever engine loads it
        parts = [f"{len(x)} {what} (first: {x[0]})" for x, what in ((shapes, "of other shapes"),
                 (missing, "missing"), (extra, "unexpected")) if x]  # fmt: skip
        raise ModelFileError(f"{path}: weights do not fit the architecture: tensors {'; '.join(parts)}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit the architecture ({str(exc).splitlines()[0]})") from None
    return model.eval()
