"""The model contract: what a model file says about its input, architecture and post-processing.

One typed reader for every storage form (safetensors header, ONNX metadata, the bundled default.json
sidecar all carry the same dict) and the one place where defaults live: a module that needs the
input size, the normalisation, the threshold or the decoder's channels asks ``ModelInfo``, never the
raw dict with a default of its own. ``model_file_meta`` reads that dict from a .safetensors header without
PyTorch (the format itself, reading and writing the weights, is ``nn.serialise``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


@dataclass(frozen=True)
class Normalisation:
    """uint8/255, then (x - mean) / std per channel (ImageNet numbers for an ImageNet-initialised encoder)."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def as_meta(self) -> dict:
        return {"scale": "uint8/255", "mean": list(self.mean), "std": list(self.std)}

    @property
    def imagenet(self) -> bool:
        return any(self.mean)


@dataclass(frozen=True)
class InputSpec:
    size: int = 256  # the model's square input, px
    channels: tuple[str, ...] = ("t1", "flair", "t1c")  # pre-contrast, FLAIR, post-contrast
    normalisation: Normalisation = field(default_factory=Normalisation)
    context: int = 0  # neighbouring slices each side as extra FLAIR channels (0: a 2D model)
    context_mm: float = 0.0  # how far apart neighbours should be where the slice spacing is known

    @property
    def n_channels(self) -> int:
        return 3 + 2 * self.context

    def context_meta(self) -> dict:
        return {"slices_each_side": self.context, "spacing_mm": self.context_mm, "sequence": "FLAIR"}


@dataclass(frozen=True)
class ArchSpec:
    """A U-Net (``unet-resnet50``) or the mean of several networks' logits (``logit-mean``, an ensemble in
    one file: ``members`` are their architectures; every member sees the same input)."""

    name: str = "unet-resnet50"
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    members: tuple[ArchSpec, ...] = ()

    def as_meta(self) -> dict:
        if self.members:
            return {"name": self.name, "members": [m.as_meta() for m in self.members]}
        return {"name": self.name, "decoder_channels": list(self.decoder_channels)}

    @classmethod
    def from_meta(cls, arch: dict | None) -> ArchSpec:
        arch = arch if isinstance(arch, dict) else {}
        members = arch.get("members")
        return cls(
            name=str(arch.get("name", cls.name)),
            decoder_channels=tuple(int(c) for c in arch.get("decoder_channels", DEFAULT_DECODER_CHANNELS)),
            members=tuple(cls.from_meta(m) for m in members) if isinstance(members, list) else (),
        )


@dataclass(frozen=True)
class PostProcessSpec:
    """Threshold, then 2D components smaller than ``min_component_pixels`` (at the model's input size)
    removed; for stacks, 3D hysteresis down to ``hysteresis_low``. ``postprocess.PostProcess`` applies it."""

    threshold: float = 0.5
    min_component_pixels: int = 0
    hysteresis_low: float = 0.0  # stacks: voxels >= this connected in 3D to the mask are kept (0: off)


TTA_VIEWS = {"none": ("id",), "hflip": ("id", "hflip"), "flips": ("id", "hflip", "vflip")}


@dataclass(frozen=True)
class ModelInfo:
    arch: ArchSpec = field(default_factory=ArchSpec)
    input: InputSpec = field(default_factory=InputSpec)
    post: PostProcessSpec = field(default_factory=PostProcessSpec)
    tta: str = "none"  # test-time views averaged by default (chosen on validation): none | hflip | flips
    meta: dict = field(default_factory=dict, compare=False)  # the rest (training record, metrics, ...)

    @classmethod
    def from_meta(cls, meta: dict | None) -> ModelInfo:
        """The one reader of a model's metadata dict, whatever file it came from."""
        meta = dict(meta or {})
        norm = meta.get("normalisation") or {}
        channels = meta.get("channels")
        ctx = meta.get("context") or {}
        return cls(
            arch=ArchSpec.from_meta(meta.get("architecture")),
            input=InputSpec(
                size=int(meta.get("input_size", InputSpec.size)),
                channels=tuple(channels) if isinstance(channels, list | tuple) and channels else InputSpec.channels,
                normalisation=Normalisation(
                    mean=tuple(float(x) for x in norm.get("mean", Normalisation.mean)),
                    std=tuple(float(x) for x in norm.get("std", Normalisation.std)),
                ),
                context=int(ctx.get("slices_each_side", 0)),
                context_mm=float(ctx.get("spacing_mm", 0.0)),
            ),
            post=PostProcessSpec(
                threshold=float(meta.get("threshold", PostProcessSpec.threshold)),
                min_component_pixels=int(meta.get("min_component_pixels", PostProcessSpec.min_component_pixels)),
                hysteresis_low=float(meta.get("hysteresis_low", PostProcessSpec.hysteresis_low)),
            ),
            tta=str(meta.get("tta", "none")) if str(meta.get("tta", "none")) in TTA_VIEWS else "none",
            meta=meta,
        )


def model_file_meta(path: str | os.PathLike) -> dict:
    """A .safetensors model's tumorseg metadata from its header alone (no PyTorch, no weights read)."""
    import json
    import struct

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(n))
        return json.loads(header["__metadata__"]["tumorseg"])
    except FileNotFoundError:
        raise ModelFileError(f"{p}: model file not found") from None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        raise ModelFileError(f"{p}: not a tumorseg model file (no readable safetensors header with metadata)") from None
