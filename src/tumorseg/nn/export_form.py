"""The network's export form: the same function with batch norm folded and sub-pixel upsampling,
for ONNX and the fast CPU engines."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .unet import LogitMean, ResNet50Encoder, UNetResNet50, UpBlock


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


def export_form(net: nn.Module, size: int) -> nn.Module:
    """``net`` in the ops int8 onnxruntime runs fastest (each U-Net of an ensemble in its export form)."""
    if isinstance(net, UNetResNet50):
        return UNetExportForm(net, size)
    if isinstance(net, LogitMean):
        return LogitMean([export_form(m, size) for m in net.members])
    return net
