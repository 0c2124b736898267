"""Combinations of model files: weight averages (soups) and logit-mean ensembles."""

from __future__ import annotations

import copy
import os

import torch.nn as nn

from ..errors import ModelFileError
from ..model.info import ArchSpec, ModelInfo
from .serialise import MAX_MEMBERS, load_model, model_from_tensors, read_model_file
from .unet import LogitMean, UNetResNet50


def _ingredient(path: str | os.PathLike, meta: dict) -> dict:
    training = meta.get("training", {})
    config = training.get("config", {})
    return {
        "file": str(path),
        "tensor_sha256": meta.get("tensor_sha256"),
        "epoch": training.get("epoch"),
        "loss": config.get("loss"),
        "seed": config.get("seed"),
    }


def average_model_files(paths: list[str | os.PathLike]) -> tuple[nn.Module, dict]:
    """Uniform weight average of models fine-tuned from one start point (a "model soup"): one model at the
    cost of one, often better than each. Refuses files whose architecture or tensors differ, since averaging
    unrelated networks gives a broken one silently. BatchNorm statistics are averaged like the weights;
    integer buffers (batch counters) come from the first file. The metadata is the first file's, with the
    ingredients recorded under training.soup."""

    if len(paths) < 2:
        raise ValueError("a soup needs at least two model files")
    first, meta = read_model_file(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    shapes, arch = {k: tuple(v.shape) for k, v in first.items()}, ModelInfo.from_meta(meta).arch
    ingredients = [meta]
    for p in paths[1:]:
        tensors, m = read_model_file(p)
        if ModelInfo.from_meta(m).arch != arch:
            raise ModelFileError(f"{p}: architecture {m.get('architecture')} differs from {paths[0]}'s")
        if {k: tuple(v.shape) for k, v in tensors.items()} != shapes:
            raise ModelFileError(f"{p}: tensor names or shapes differ from {paths[0]}'s")
        for k, v in tensors.items():
            if v.is_floating_point():
                total[k] += v.double()
        ingredients.append(m)
    n = len(paths)
    state = {k: (v / n).float() if v.is_floating_point() else v for k, v in total.items()}
    meta = copy.deepcopy(meta)
    meta.pop("tensor_sha256", None)
    meta.setdefault("training", {})["soup"] = [_ingredient(p, m) for p, m in zip(paths, ingredients)]
    return model_from_tensors(state, meta, paths[0]), meta


def logit_mean_of_files(paths: list[str | os.PathLike]) -> tuple[LogitMean, dict]:
    """An ensemble of trained models in one network (the mean of their logits): each member keeps its own
    weights, so unlike a soup it needs no common start point, and costs one forward pass per member.
    Refuses members that read their input differently (size, channels, normalisation, context). The
    metadata is the first file's, with the architecture replaced and the members recorded under
    training.ensemble; the post-processing is left to packaging, which chooses it for the ensemble."""

    if not 2 <= len(paths) <= MAX_MEMBERS:
        raise ValueError(f"an ensemble needs 2 to {MAX_MEMBERS} model files, got {len(paths)}")
    loaded = [load_model(p) for p in paths]
    spec = ModelInfo.from_meta(loaded[0][1]).input
    for p, (net, m) in zip(paths, loaded):
        if not isinstance(net, UNetResNet50):
            raise ModelFileError(f"{p}: is an ensemble itself; give its members instead")
        if (other := ModelInfo.from_meta(m).input) != spec:
            raise ModelFileError(f"{p}: reads its input differently from {paths[0]} ({other})")
    net = LogitMean([n for n, _ in loaded]).eval()
    meta = copy.deepcopy(loaded[0][1])
    meta.pop("tensor_sha256", None)
    meta["architecture"] = ArchSpec(
        "logit-mean", members=tuple(ModelInfo.from_meta(m).arch for _, m in loaded)
    ).as_meta()
    meta.setdefault("training", {})["ensemble"] = [_ingredient(p, m) for p, (_, m) in zip(paths, loaded)]
    return net, meta
