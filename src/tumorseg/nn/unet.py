"""ResNet50 encoder (torchvision parameter names) and U-Net decoder: encoder -> decoder -> head."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ModelFileError

TORCHVISION_RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet50Encoder(nn.Module):
    """ResNet-50 v1.5 with torchvision's parameter names, returning the five feature maps."""

    out_channels = (64, 256, 512, 1024, 2048)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = 64
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block so fresh blocks start as identities.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """Transposed-conv upsampling, concatenation with the encoder skip, two 3x3 convs."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = nn.Sequential(_conv_bn_relu(cout + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNetDecoder(nn.Module):
    def __init__(self, enc_channels=ResNet50Encoder.out_channels, channels=(256, 128, 64, 32, 16)):
        super().__init__()
        skips = list(enc_channels[:-1][::-1]) + [0]  # 1024, 512, 256, 64, none
        cin = enc_channels[-1]
        blocks = []
        for cs, co in zip(skips, channels):
            blocks.append(UpBlock(cin, cs, co))
            cin = co
        self.blocks = nn.ModuleList(blocks)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        skips = feats[:-1][::-1] + [None]
        for blk, s in zip(self.blocks, skips):
            x = blk(x, s)
        return x


class UNetResNet50(nn.Module):
    """The paper's model: ResNet50 encoder, transposed-conv U-Net decoder, one-channel logits.

    Five decoder stages end at full resolution (the paper's). Four end at half resolution, on the stem's
    skip, and the logits are upsampled bilinearly: no convolution runs at full resolution, where int8
    convolutions of few channels are slowest (README, Speed)."""

    def __init__(self, in_channels: int = 3, decoder_channels=(256, 128, 64, 32, 16)):
        super().__init__()
        if len(decoder_channels) not in (4, 5):
            raise ValueError(f"decoder_channels: 4 or 5 stages, got {len(decoder_channels)}")
        self.encoder = ResNet50Encoder(in_channels)
        self.decoder = UNetDecoder(ResNet50Encoder.out_channels, decoder_channels)
        self.head = nn.Conv2d(decoder_channels[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"input size {h}x{w} must be a multiple of 32")
        return _to_size(self.head(self.decoder(self.encoder(x))), h, w)


def _to_size(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Half-resolution logits (a four-stage decoder) upsampled to the input; full-resolution ones as they are."""
    if tuple(logits.shape[-2:]) == (h, w):
        return logits
    return nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def groups(keys):
            g = sorted({k.split(".")[0] for k in keys})
            return ", ".join(g) if g else "none"

        return (
            f"encoder weights from {self.source}: {len(self.loaded)} tensors loaded ({groups(self.loaded)}); "
            f"{len(self.fresh)} initialised fresh ({groups(self.fresh)}); "
            f"{len(self.ignored)} ignored ({groups(self.ignored)})"
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "fresh": len(self.fresh),
            "fresh_groups": sorted({k.split(".")[0] for k in self.fresh}),
            "ignored": len(self.ignored),
        }


def load_encoder_state(encoder: ResNet50Encoder, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load a (possibly partial) torchvision-layout ResNet50 state dict and say what happened."""
    own = encoder.state_dict()
    rep = LoadReport(source)
    new = {}
    for k, v in state.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        if k2 in own and tuple(own[k2].shape) == tuple(v.shape):
            new[k2] = v.to(own[k2].dtype)
            rep.loaded.append(k2)
        else:
            rep.ignored.append(k2)
    if not rep.loaded:
        raise ModelFileError(f"{source}: no tensor matches a torchvision ResNet50 layout")
    rep.fresh = [k for k in own if k not in new]
    encoder.load_state_dict(new, strict=False)
    return rep


def encoder_state_from(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """Resolve ``imagenet`` (torchvision download with hash check) or a local file path."""
    if spec == "imagenet":
        sd = torch.hub.load_state_dict_from_url(
            TORCHVISION_RESNET50_URL, progress=True, check_hash=True, weights_only=True
        )
        return sd, "torchvision IMAGENET1K_V2"
    p = Path(spec)
    if not p.is_file():
        raise ModelFileError(f"{spec}: encoder weights file not found (use none, imagenet or a path)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p)), str(p)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{p}: not a safe tensor state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelFileError(f"{p}: expected a dict of tensors")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, str(p)


def build_model(
    encoder_weights: str = "none",
    decoder_channels=(256, 128, 64, 32, 16),
    in_channels: int = 3,
    context_share: float = 0.0,
) -> tuple[UNetResNet50, LoadReport | None]:
    """A U-Net with its encoder from ``encoder_weights``; more than 3 input channels widen the first
    convolution after loading (``widen_input``: the neighbours start with ``context_share`` of FLAIR's weights)."""
    model = UNetResNet50(3, decoder_channels)
    rep = None
    if encoder_weights and encoder_weights != "none":
        sd, src = encoder_state_from(encoder_weights)
        rep = load_encoder_state(model.encoder, sd, src)
    if in_channels != 3:
        widen_input(model, in_channels, share=context_share)
    return model, rep


@torch.no_grad()
def widen_input(model: UNetResNet50, in_channels: int, share: float = 0.0, centre: int = 1) -> UNetResNet50:
    """Give the first convolution more input channels for the neighbours of channel ``centre`` (FLAIR).

    ``share`` 0: the new weights are zero, so the widened model computes exactly what it did before.
    ``share`` s > 0: each new channel takes s of the centre channel's weights and the centre keeps the
    rest, so a lone image (neighbours = copies of itself) still gets exactly the old answer while a
    stack starts out using its neighbours; from zero, Adam's small steps barely move these weights
    (they are ~4 in size here, so v3's stayed at ~0.003 and the model ignored its context)."""
    old = model.encoder.conv1
    added = in_channels - old.in_channels
    if added < 0:
        raise ValueError(f"cannot narrow the input from {old.in_channels} to {in_channels} channels")
    if not 0.0 <= share * added < 1.0:
        raise ValueError(f"share {share} for {added} new channels leaves the centre channel nothing")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    if added and share:
        w = old.weight[:, centre]
        new.weight[:, centre] = w * (1.0 - share * added)
        new.weight[:, old.in_channels :] = (w * share)[:, None]
    model.encoder.conv1 = new.to(old.weight.device, old.weight.dtype)
    return model


class LogitMean(nn.Module):
    """An ensemble in one network: the mean of its members' logits for one input. One module, so every
    engine, the ONNX export and the int8 recipe take it as they take a single U-Net."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
