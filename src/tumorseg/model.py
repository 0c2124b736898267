"""ResNet50 encoder (torchvision parameter names), U-Net decoder, and the model file format.

A model file is a single safetensors file: tensors plus one JSON metadata entry that
says how to rebuild and use the model. Loading never unpickles anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .io import ModelFileError, file_sha256  # noqa: F401  (re-exported: the model file's errors and checksum)

TORCHVISION_RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- encoder


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


# --------------------------------------------------------------------------- decoder


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


# --------------------------------------------------------------------------- export form
#
# onnxruntime runs int8 convolutions channels-last, has no int8 ConvTranspose (it fell back to float,
# dequantising 2M weights on every call) and concatenates int8 channels-first (two layout transposes
# per skip). The export form below computes the same function with only ops it keeps in int8.


class SubPixelUp(nn.Module):
    """ConvTranspose2d(kernel 2, stride 2) as a 1x1 conv to 4x channels and a channels-last pixel shuffle.

    Exact: output pixel (2i+a, 2j+b) is W[:, :, a, b]^T x[i, j] + bias either way. The shuffle is written
    as Reshape/Transpose on NHWC so onnxruntime's layout pass folds it into its own transposes.
    """

    def __init__(self, up: nn.ConvTranspose2d, in_hw: tuple[int, int]):
        super().__init__()
        if up.kernel_size != (2, 2) or up.stride != (2, 2) or up.padding != (0, 0):
            raise ValueError("SubPixelUp rewrites kernel-2 stride-2 transposed convolutions only")
        cin, cout = up.in_channels, up.out_channels
        self.cout, self.hw = cout, (int(in_hw[0]), int(in_hw[1]))
        self.conv = nn.Conv2d(cin, 4 * cout, 1)
        w = up.weight.detach()  # cin, cout, a, b  ->  output channel (a*2 + b)*cout + o
        self.conv.weight.data = w.permute(2, 3, 1, 0).reshape(4 * cout, cin, 1, 1).clone()
        bias = up.bias.detach() if up.bias is not None else torch.zeros(cout)
        self.conv.bias.data = bias.repeat(4).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.hw
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"export form built for {h}x{w} features, got {tuple(x.shape[-2:])}")
        y = self.conv(x).permute(0, 2, 3, 1).reshape(-1, h, w, 2, 2, self.cout)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(-1, 2 * h, 2 * w, self.cout)
        return y.permute(0, 3, 1, 2)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * s[:, None, None, None]
    b = bn.bias.detach() - bn.running_mean * s
    if conv.bias is not None:
        b = b + conv.bias.detach() * s
    return w, b


class SkipSumConv(nn.Module):
    """conv3x3(cat(up, skip)) -> BN -> ReLU as ReLU(conv(up) + conv(skip)), BN folded in: exact, no Concat."""

    def __init__(self, conv_bn_relu: nn.Sequential, c_up: int):
        super().__init__()
        w, b = _fold_bn(conv_bn_relu[0], conv_bn_relu[1])
        cout, cskip = w.shape[0], w.shape[1] - c_up
        self.up = nn.Conv2d(c_up, cout, 3, padding=1)
        self.skip = nn.Conv2d(cskip, cout, 3, padding=1, bias=False)
        self.up.weight.data, self.up.bias.data = w[:, :c_up].clone(), b.clone()
        self.skip.weight.data = w[:, c_up:].clone()

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.up(up) + self.skip(skip))


class ExportBlock(nn.Module):
    def __init__(self, blk: UpBlock, in_hw: tuple[int, int], has_skip: bool):
        super().__init__()
        self.up = SubPixelUp(blk.up, in_hw)
        self.first = SkipSumConv(blk.conv[0], blk.up.out_channels) if has_skip else blk.conv[0]
        self.second = blk.conv[1]

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        return self.second(self.first(x, skip) if skip is not None else self.first(x))


class UNetExportForm(nn.Module):
    """The same function as a ``UNetResNet50`` for one input size, in the ops int8 onnxruntime runs fastest."""

    def __init__(self, net: UNetResNet50, size: int):
        super().__init__()
        if size % 32:
            raise ValueError(f"input size {size} must be a multiple of 32")
        net = copy.deepcopy(net).float().eval()
        self.size = size
        self.encoder = net.encoder
        blocks, hw = [], size // 32
        n_skips = len(ResNet50Encoder.out_channels) - 1  # the fifth stage, at full resolution, has none
        for k, blk in enumerate(net.decoder.blocks):
            blocks.append(ExportBlock(blk, (hw, hw), has_skip=k < n_skips))
            hw *= 2
        self.blocks = nn.ModuleList(blocks)
        self.head = net.head
        self.upsample = len(blocks) == n_skips  # four stages: half-resolution logits (fixed here, not traced)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        x, skips = feats[-1], feats[:-1][::-1] + [None]
        for blk, s in zip(self.blocks, skips):
            x = blk(x, s)
        y = self.head(x)
        if self.upsample:
            y = nn.functional.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y


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


def export_form(net: nn.Module, size: int) -> nn.Module:
    """``net`` in the ops int8 onnxruntime runs fastest (each U-Net of an ensemble in its export form)."""
    if isinstance(net, UNetResNet50):
        return UNetExportForm(net, size)
    if isinstance(net, LogitMean):
        return LogitMean([export_form(m, size) for m in net.members])
    return net


# --------------------------------------------------------------------------- encoder weights


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


# --------------------------------------------------------------------------- model files


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
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

    from .io import atomic_write_bytes

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and "running_" not in k:
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {**meta, "format": "tumorseg-model", "format_version": FORMAT_VERSION}
    meta["tensor_sha256"] = _tensor_digest(tensors)
    atomic_write_bytes(path, save(tensors, metadata={"tumorseg": json.dumps(meta)}))


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
    if want and _tensor_digest(tensors) != want:
        raise ModelFileError(f"{p}: checksum mismatch, the weights are corrupted")
    return tensors, meta


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a saved model (fp32, eval mode) and return it with its metadata."""
    tensors, meta = read_model_file(path)
    return _model_from(tensors, meta, path), meta


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


def _model_from(tensors: dict[str, torch.Tensor], meta: dict, path: str | os.PathLike) -> nn.Module:
    """The network a model file's metadata describes, holding ``tensors`` (fp32, eval mode)."""
    from .modelinfo import ModelInfo

    try:
        model = _network(ModelInfo.from_meta(meta).arch, tensors, path)
    except (ValueError, TypeError) as exc:  # a header no network can be built from
        raise ModelFileError(f"{path}: the architecture in its header cannot be built ({exc})") from None
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit the architecture ({exc})") from None
    return model.eval()


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
    from .modelinfo import ModelInfo

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
    return _model_from(state, meta, paths[0]), meta


def logit_mean_of_files(paths: list[str | os.PathLike]) -> tuple[LogitMean, dict]:
    """An ensemble of trained models in one network (the mean of their logits): each member keeps its own
    weights, so unlike a soup it needs no common start point, and costs one forward pass per member.
    Refuses members that read their input differently (size, channels, normalisation, context). The
    metadata is the first file's, with the architecture replaced and the members recorded under
    training.ensemble; the post-processing is left to packaging, which chooses it for the ensemble."""
    from .modelinfo import ArchSpec, ModelInfo

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
