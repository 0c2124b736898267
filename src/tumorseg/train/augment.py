"""Training-time patch sampling and on-device augmentation (torch): the part of the data layer only
training needs, kept apart so that inference never imports torch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model.preprocess import with_context
from .data import DatasetError, LoadedSet


class PatchSampler:
    """Random training patches, a share of them centred on tumour (as nnU-Net oversamples foreground)."""

    def __init__(
        self,
        data: LoadedSet,
        patch: int,
        fg_fraction: float = 0.5,
        seed: int = 0,
        context: int = 0,
        p_wide_step: float = 0.3,
    ):
        self.data = data
        # A 2.5D model's neighbours: the adjacent slice, or (p_wide_step) the one after it, so the
        # model sees the range of slice spacings studies come with.
        self.context, self.p_wide_step = context, p_wide_step
        self.groups = data.groups() if context else None
        self.patch = min(patch, data.images.shape[1])
        self.fg_fraction = fg_fraction
        self.fg_slices = np.flatnonzero(data.masks.reshape(len(data), -1).any(1))
        if len(self.fg_slices) == 0:
            raise DatasetError("no tumour in any training mask: nothing to learn from")
        self.rng = np.random.default_rng(seed)
        self.p_any, self.p_fg = _source_shares(data, self.fg_slices)

    def _pick(self, among: np.ndarray | None, p: np.ndarray | None) -> int:
        """A slice index: uniform (one source, as before) or by each source's share of the patches."""
        if among is None:
            return int(self.rng.integers(len(self.data))) if p is None else int(self.rng.choice(len(self.data), p=p))
        return int(self.rng.choice(among)) if p is None else int(self.rng.choice(among, p=p))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns uint8 NHWC images, bool NHW masks and (when the set has it) uint8 NHW head depth."""
        s = self.data.images.shape[1]
        p = self.patch

        imgs = np.empty((batch, p, p, 3 + 2 * self.context), np.uint8)
        msks = np.empty((batch, p, p), bool)
        depth = self.data.depth
        brs = np.empty((batch, p, p), np.uint8) if depth is not None else None
        for b in range(batch):
            if self.rng.random() < self.fg_fraction:
                i = self._pick(self.fg_slices, self.p_fg)
                ys, xs = np.nonzero(self.data.masks[i])
                k = self.rng.integers(len(ys))
                cy, cx = ys[k], xs[k]
                y0 = int(np.clip(cy - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                x0 = int(np.clip(cx - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
            else:
                i = self._pick(None, self.p_any)
                y0 = int(self.rng.integers(0, s - p + 1))
                x0 = int(self.rng.integers(0, s - p + 1))
            if self.context:
                step = 2 if self.rng.random() < self.p_wide_step else 1
                full = with_context(self.data.images, self.context, step, np.array([i]), self.groups)[0]
                imgs[b] = full[y0 : y0 + p, x0 : x0 + p]
            else:
                imgs[b] = self.data.images[i, y0 : y0 + p, x0 : x0 + p]
            msks[b] = self.data.masks[i, y0 : y0 + p, x0 : x0 + p]
            if brs is not None:
                brs[b] = depth[i, y0 : y0 + p, x0 : x0 + p]
        return torch.from_numpy(imgs), torch.from_numpy(msks), (torch.from_numpy(brs) if brs is not None else None)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, st: dict) -> None:
        self.rng.bit_generator.state = st


def _source_shares(data: LoadedSet, fg_slices: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-slice draw probabilities such that each source gives its weight's share of the patches, among
    all slices and among the tumour slices alike (None, None: one source, uniform draws)."""
    if data.sources is None or data.source_weights is None:
        return None, None
    src = np.array(data.sources)

    def shares(idx: np.ndarray) -> np.ndarray:
        names = src[idx]
        present = sorted(set(names))
        total = sum(data.source_weights[n] for n in present)
        p = np.zeros(len(idx))
        for n in present:
            sel = names == n
            p[sel] = data.source_weights[n] / total / sel.sum()
        return p / p.sum()

    return shares(np.arange(len(data))), shares(fg_slices)


def _u(gen: torch.Generator, shape, lo: float, hi: float, device) -> torch.Tensor:
    """Uniform draws from the CPU generator (reproducible on any device), moved to ``device``."""
    return (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(device)


def augment(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, max_rot_deg: float = 15.0, scale: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, small rotation/scale and intensity jitter on a batch (x float NCHW in [0,1], y N1HW).

    The v1 recipe. Works on the batch's device; random numbers come from the CPU generator ``gen``.
    """
    n, dev = x.shape[0], x.device
    x, y, _ = _flip_rotate_scale(x, y, gen, max_rot_deg, (1 - scale, 1 + scale), log_scale=False)
    # Intensity: per-image contrast, brightness and gamma.
    c = _u(gen, (n, 1, 1, 1), 0.85, 1.15, dev)
    b = _u(gen, (n, 1, 1, 1), -0.08, 0.08, dev)
    g = torch.exp(_u(gen, (n, 1, 1, 1), -0.2, 0.2, dev))
    x = (x.clamp(0, 1).pow(g) * c + b).clamp(0, 1)
    return x, y


def _flip_rotate_scale(
    x, y, gen, max_rot_deg: float, scale_range: tuple[float, float], extra=None, log_scale: bool = True
):
    n, dev = x.shape[0], x.device
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    y = torch.where(flip.view(n, 1, 1, 1), y.flip(3), y)
    if extra is not None:
        extra = torch.where(flip.view(n, 1, 1, 1), extra.flip(3), extra)
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_rot_deg)
    # v2 draws scale log-uniformly: zooming out by 1/s is as likely as zooming in by s.
    lo, hi = scale_range
    if log_scale:
        lo, hi = math.log(lo), math.log(hi)
    sc = torch.rand(n, generator=gen) * (hi - lo) + lo
    sc = torch.exp(sc) if log_scale else sc
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    if extra is not None:
        extra = F.grid_sample(extra, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y, extra


def _per_channel(draws: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """N x 3 x 1 x 1 draws per sequence -> one per channel: ``seq`` is each channel's sequence, the same for
    every image (C,) or per image (N x C)."""
    if seq.dim() == 1:
        return draws[:, seq]
    return draws.gather(1, seq[:, :, None, None])


def _sequence_dropout(x, gen, p_seq: float, p_flair_only: float, p_no_context: float, tie_copies: bool):
    """aug v2's sequence dropout (and a 2.5D batch's neighbours): the new batch and each channel's source sequence
    for the per-channel intensity draws, (C,) or, with ``tie_copies``, per image (N x C)."""
    n, dev = x.shape[0], x.device
    # Sequence dropout: 0 keep, 1 pre->FLAIR, 2 post->FLAIR, 3 FLAIR only.
    mode = torch.randint(0, 4, (n,), generator=gen)
    mode = torch.where(torch.rand(n, generator=gen) < p_seq, mode, torch.zeros_like(mode))
    if p_flair_only > 0:
        mode = torch.where(torch.rand(n, generator=gen) < p_flair_only, torch.full_like(mode, 3), mode)
    mode = mode.to(dev)
    fl = x[:, 1:2]
    pre = torch.where(((mode == 1) | (mode == 3)).view(n, 1, 1, 1), fl, x[:, 0:1])
    post = torch.where(((mode == 2) | (mode == 3)).view(n, 1, 1, 1), fl, x[:, 2:3])
    ctx = x[:, 3:]
    if ctx.shape[1]:
        rev = (torch.rand(n, generator=gen) < 0.5).to(dev).view(n, 1, 1, 1)
        ctx = torch.where(rev, ctx.flip(1), ctx)
        none = (torch.rand(n, generator=gen) < p_no_context).to(dev).view(n, 1, 1, 1)
        ctx = torch.where(none, fl.expand_as(ctx), ctx)
    x = torch.cat([pre, fl, post, ctx], 1)
    seq = torch.tensor([0, 1, 2] + [1] * ctx.shape[1], device=dev)
    if tie_copies:  # per image: each channel's source sequence (a copy of FLAIR draws as FLAIR)
        seq = seq.expand(n, -1).clone()
        for k in (0, 2):
            same = (x[:, k] == x[:, 1]).flatten(1).all(1)
            seq[:, k] = torch.where(same, torch.ones_like(seq[:, k]), seq[:, k])
    return x, seq


def augment_for_other_sites(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    depth: torch.Tensor | None = None,
    p_strip: float = 0.25,
    p_seq: float = 0.3,
    p_no_context: float = 0.2,
    p_flair_only: float = 0.0,
    tie_copies: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The v2 recipe: v1's geometry with a wider scale range, plus what other collections look like.

    - scale 0.7-1.4 (other voxel sizes and fields of view), rotation up to 20 degrees;
    - sequence dropout: pre- and/or post-contrast replaced by FLAIR, as the LGG set itself does for
      missing sequences and as a FLAIR-only study is fed to the model;
    - skull-stripping: pixels less than 6-16 px deep in the head set to 0 (``depth`` from
      ``head_depth``; tumour is never removed), as BraTS ships its images;
    - per-channel gamma, contrast and brightness, a smooth multiplicative bias field, low-contrast
      (dark) slices, Gaussian noise and blur.
    - for a 2.5D batch (C > 3: FLAIR of neighbouring slices after the three sequences): the
      neighbours' order reversed half the time (stacks come head-first or feet-first), and replaced by
      the centre FLAIR (``p_no_context``), which is how a single image is fed; intensity changes to
      FLAIR apply to its neighbours alike.
    - ``p_flair_only``: a further share of images made FLAIR-only (both other sequences replaced by
      FLAIR), so the FLAIR-only input a single-sequence study gives is a first-class condition (0: the
      v2 recipe exactly, the same random draws).
    - ``tie_copies``: a pre- or post-contrast channel that is a copy of FLAIR (after dropout, or as stored:
      a FLAIR-only case, an LGG slice's missing sequence) takes FLAIR's gamma, contrast and noise, so a
      FLAIR-only image stays three identical channels, as a FLAIR-only study reaches the model (off: the
      same random draws as before, each channel its own).
    x: float NCHW in [0, 1]; y: N1HW; depth: N1HW or None. Random numbers from the CPU generator.
    """
    n, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    if depth is not None:
        strip = _u(gen, (n, 1, 1, 1), 0, 1, dev) < p_strip
        rim = _u(gen, (n, 1, 1, 1), 6, 16, dev)
        keep = ((depth.float() > rim) | (y > 0)).float()
        x = torch.where(strip, x * keep, x)
    x, y, _ = _flip_rotate_scale(x, y, gen, 20.0, (0.7, 1.4))
    x, seq = _sequence_dropout(x, gen, p_seq, p_flair_only, p_no_context, tie_copies)
    # Bias field: a 4x4 grid of log-gains, smoothly upsampled.
    field = F.interpolate(_u(gen, (n, 1, 4, 4), -0.3, 0.3, dev), size=(h, w), mode="bicubic", align_corners=True)
    on = _u(gen, (n, 1, 1, 1), 0, 1, dev) < 0.3
    x = torch.where(on, x * torch.exp(field), x)
    # Per-channel gamma / contrast, per-image brightness, and dark low-contrast slices.
    g = _per_channel(torch.exp(_u(gen, (n, 3, 1, 1), -0.35, 0.35, dev)), seq)
    c = _per_channel(_u(gen, (n, 3, 1, 1), 0.75, 1.25, dev), seq)
    b = _u(gen, (n, 1, 1, 1), -0.08, 0.08, dev)
    dark = torch.where(_u(gen, (n, 1, 1, 1), 0, 1, dev) < 0.15, _u(gen, (n, 1, 1, 1), 0.45, 0.8, dev), 1.0)
    x = (x.clamp(0, 1).pow(g) * c * dark + b).clamp(0, 1)
    # Blur (3x3 box, some images) and noise.
    blur = _u(gen, (n, 1, 1, 1), 0, 1, dev) < 0.15
    xb = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, xb, x)
    sigma = _u(gen, (n, 1, 1, 1), 0, 0.03, dev) * (_u(gen, (n, 1, 1, 1), 0, 1, dev) < 0.3)
    dev_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    noise = torch.randn(x.shape, generator=dev_gen, device=dev)
    if seq.dim() == 2:  # tied: a copy of FLAIR takes FLAIR's noise
        noise = noise.gather(1, seq[:, :, None, None].expand(-1, -1, h, w))
    x = (x + noise * sigma).clamp(0, 1)
    return x, y
