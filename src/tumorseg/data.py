"""Datasets: discovery of slice/mask pairs, patient-level splits, preprocessing, sampling."""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import IMAGE_EXTENSIONS, head_depth, read_image, read_mask, to_uint8_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalisation(imagenet: bool) -> dict:
    """The input normalisation a model file records (and every engine then applies)."""
    return {
        "scale": "uint8/255",
        "mean": list(IMAGENET_MEAN) if imagenet else [0, 0, 0],
        "std": list(IMAGENET_STD) if imagenet else [1, 1, 1],
    }


def model_input(batch_u8: np.ndarray, norm: dict) -> np.ndarray:
    """N x S x S x 3 uint8 -> N x 3 x S x S float32, scaled and normalised as the model file says.

    The one numpy home of this rule: the engines and int8 calibration call it; training applies the
    same numbers on its device from ``normalisation``.
    """
    mean = np.array(norm.get("mean", [0, 0, 0]), np.float32).reshape(1, 3, 1, 1)
    std = np.array(norm.get("std", [1, 1, 1]), np.float32).reshape(1, 3, 1, 1)
    if batch_u8.dtype != np.uint8:
        return (batch_u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    # the same float32 arithmetic on the 256 possible values, then one lookup per pixel (3x faster)
    lut = (np.arange(256, dtype=np.float32).reshape(1, 256) / 255.0 - mean.reshape(3, 1)) / std.reshape(3, 1)
    out = np.empty((batch_u8.shape[0], 3, *batch_u8.shape[1:3]), np.float32)
    for c in range(3):
        np.take(lut[c], batch_u8[..., c], out=out[:, c])
    return out


_MASK_RE = re.compile(r"^(?P<stem>.+)_mask$", re.IGNORECASE)
_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<index>\d+)$")


class DatasetError(ValueError):
    """The dataset folder cannot be used; the message says which file/folder and why."""


@dataclass
class SliceRecord:
    patient: str
    index: int
    image: Path
    mask: Path


@dataclass
class Case:
    """One patient: its slices in order along the head axis."""

    patient: str
    slices: list[SliceRecord] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _pairs_in_folder(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not _is_image(p):
            continue
        m = _MASK_RE.match(p.stem)
        if m:
            masks[m.group("stem")] = p
        else:
            images[p.stem] = p
    return images, masks


def discover(root: str | os.PathLike, patient_pattern: str | None = None) -> list[Case]:
    """Find slice/mask pairs in a kaggle_3m layout or a generic images/ + masks/ layout.

    kaggle_3m: ``<root>/[kaggle_3m/]<patient>/<patient>_<n>.<ext>`` with ``..._<n>_mask.<ext>``.
    Generic: ``<root>/images/<name>.<ext>`` and ``<root>/masks/<name>[_mask].<ext>``; each
    image is its own patient unless ``patient_pattern`` (a regex with a ``patient``
    group, matched against the file stem) groups them.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: is not a folder")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        cases = _discover_generic(root, patient_pattern)
    else:
        if (root / "kaggle_3m").is_dir():
            root = root / "kaggle_3m"
        cases = _discover_kaggle(root)
    if not cases:
        raise DatasetError(
            f"{root}: no image/mask pairs found (expected <patient>/<patient>_<n>.tif with "
            "<patient>_<n>_mask.tif, or images/ and masks/ folders)"
        )
    return cases


def _discover_kaggle(root: Path) -> list[Case]:
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    # A single patient folder given directly.
    if not folders and any(_is_image(p) for p in root.iterdir()):
        folders = [root]
    cases = []
    for folder in folders:
        images, masks = _pairs_in_folder(folder)
        if not images and not masks:
            continue
        orphan_masks = sorted(set(masks) - set(images))
        if orphan_masks:
            raise DatasetError(f"{masks[orphan_masks[0]]}: mask without an image")
        case = Case(patient=folder.name)
        for stem, img in images.items():
            if stem not in masks:
                raise DatasetError(f"{img}: image without a mask (expected {stem}_mask{img.suffix})")
            m = _SLICE_RE.match(stem)
            index = int(m.group("index")) if m else 0
            case.slices.append(SliceRecord(folder.name, index, img, masks[stem]))
        case.slices.sort(key=lambda s: (s.index, s.image.name))
        cases.append(case)
    return cases


def _discover_generic(root: Path, patient_pattern: str | None) -> list[Case]:
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if _is_image(p)}
    masks: dict[str, Path] = {}
    for p in sorted((root / "masks").iterdir()):
        if _is_image(p):
            m = _MASK_RE.match(p.stem)
            masks[m.group("stem") if m else p.stem] = p
    pat = re.compile(patient_pattern) if patient_pattern else None
    by_patient: dict[str, Case] = {}
    for stem, img in images.items():
        if stem not in masks:
            raise DatasetError(f"{img}: image without a mask in {root / 'masks'}")
        patient, index = stem, 0
        if pat:
            m = pat.search(stem)
            if not m:
                raise DatasetError(f"{img}: name does not match patient pattern {patient_pattern!r}")
            patient = m.group("patient")
            idx = m.groupdict().get("index")
            index = int(idx) if idx else 0
        case = by_patient.setdefault(patient, Case(patient))
        case.slices.append(SliceRecord(patient, index, img, masks[stem]))
    for c in by_patient.values():
        c.slices.sort(key=lambda s: (s.index, s.image.name))
    return [by_patient[k] for k in sorted(by_patient)]


# --------------------------------------------------------------------------- loading


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(im) >= 128


@dataclass
class LoadedSet:
    """Slices of several patients held in RAM as uint8, resized to the model input."""

    images: np.ndarray  # N x S x S x 3 uint8
    masks: np.ndarray  # N x S x S bool
    patients: list[str]  # per slice
    indices: list[int]  # per slice
    names: list[str]  # image file per slice
    depth: np.ndarray | None = None  # N x S x S uint8 from head_depth(); for skull-strip augmentation

    def __len__(self) -> int:
        return len(self.patients)

    def with_head_depth(self) -> LoadedSet:
        """Compute every slice's head depth once, for skull-strip augmentation."""
        if self.depth is None:
            from concurrent.futures import ThreadPoolExecutor

            self.depth = np.zeros(self.masks.shape, np.uint8)
            with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as ex:
                for i, d in enumerate(ex.map(head_depth, self.images)):
                    self.depth[i] = d
        return self


def load_cases(cases: Sequence[Case], size: int, progress: bool = False) -> LoadedSet:
    """Read every slice and mask once, checking they fit together."""
    recs = [s for c in cases for s in c.slices]
    n = len(recs)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    it = recs
    if progress:
        from tqdm import tqdm

        it = tqdm(recs, desc="reading slices", unit="slice", leave=False)
    for i, r in enumerate(it):
        img = read_image(r.image)
        msk = read_mask(r.mask)
        if img.shape[:2] != msk.shape[:2]:
            raise DatasetError(
                f"{r.mask}: mask is {msk.shape[1]}x{msk.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}"
            )
        images[i] = resize_rgb(to_uint8_rgb(img), size)
        masks[i] = resize_mask(msk, size)
    return LoadedSet(images, masks, [r.patient for r in recs], [r.index for r in recs], [str(r.image) for r in recs])


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def brain_mask(img: np.ndarray, rim_px: int = 10) -> np.ndarray:
    """Head pixels deeper than ``rim_px`` (scalp and skull are about 10 px on the LGG slices)."""
    return head_depth(img) > rim_px


# --------------------------------------------------------------------------- splits


def make_split(
    cases: Sequence[Case],
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 0,
    has_tumour: dict[str, bool] | None = None,
) -> dict[str, list[str]]:
    """Patient-level split, seeded, stratified by whether a patient has any tumour.

    Each part gets at least one patient with tumour when there are enough of them.
    ``has_tumour`` maps patient -> bool; when absent every patient counts as positive.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    patients = sorted({c.patient for c in cases})
    if len(patients) < 3:
        raise DatasetError(f"need at least 3 patients for a train/val/test split, found {len(patients)}")
    ht = has_tumour or {p: True for p in patients}
    if not any(ht.values()):
        raise DatasetError("no tumour in any mask: nothing to learn from")
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for group in (True, False):
        members = [p for p in patients if bool(ht.get(p, False)) == group]
        rng.shuffle(members)
        n = len(members)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if group and n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = n - n_val - n_test
        if group and n_train < 1:
            raise DatasetError(f"only {n} patients with tumour: too few to split")
        parts["train"] += members[:n_train]
        parts["val"] += members[n_train : n_train + n_val]
        parts["test"] += members[n_train + n_val :]
    for k in parts:
        parts[k].sort()
    return parts


def save_split(split: dict[str, list[str]], path: str | os.PathLike, meta: dict | None = None) -> None:
    from .io import atomic_write_bytes

    payload = {**(meta or {}), **split}
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read split file ({exc})") from None
    missing = [k for k in ("train", "val", "test") if k not in d]
    if missing:
        raise DatasetError(f"{path}: split file lacks {missing}")
    return {k: list(d[k]) for k in ("train", "val", "test")}


def check_no_leak(split: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for part, pats in split.items():
        for p in pats:
            if p in seen:
                raise DatasetError(f"patient {p} is in both {seen[p]} and {part}")
            seen[p] = part


def patient_has_tumour(cases: Sequence[Case]) -> dict[str, bool]:
    """Which patients have any tumour pixel (reads only the masks)."""
    out = {}
    for c in cases:
        out[c.patient] = any(read_mask(s.mask).any() for s in c.slices)
    return out


# --------------------------------------------------------------------------- tensors


class PatchSampler:
    """Random training patches, a share of them centred on tumour (as nnU-Net oversamples foreground)."""

    def __init__(self, data: LoadedSet, patch: int, fg_fraction: float = 0.5, seed: int = 0):
        self.data = data
        self.patch = min(patch, data.images.shape[1])
        self.fg_fraction = fg_fraction
        self.fg_slices = np.flatnonzero(data.masks.reshape(len(data), -1).any(1))
        if len(self.fg_slices) == 0:
            raise DatasetError("no tumour in any training mask: nothing to learn from")
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns uint8 NHWC images, bool NHW masks and (when the set has it) uint8 NHW head depth."""
        s = self.data.images.shape[1]
        p = self.patch
        imgs = np.empty((batch, p, p, 3), np.uint8)
        msks = np.empty((batch, p, p), bool)
        depth = self.data.depth
        brs = np.empty((batch, p, p), np.uint8) if depth is not None else None
        for b in range(batch):
            if self.rng.random() < self.fg_fraction:
                i = int(self.rng.choice(self.fg_slices))
                ys, xs = np.nonzero(self.data.masks[i])
                k = self.rng.integers(len(ys))
                cy, cx = ys[k], xs[k]
                y0 = int(np.clip(cy - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                x0 = int(np.clip(cx - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
            else:
                i = int(self.rng.integers(len(self.data)))
                y0 = int(self.rng.integers(0, s - p + 1))
                x0 = int(self.rng.integers(0, s - p + 1))
            imgs[b] = self.data.images[i, y0 : y0 + p, x0 : x0 + p]
            msks[b] = self.data.masks[i, y0 : y0 + p, x0 : x0 + p]
            if brs is not None:
                brs[b] = depth[i, y0 : y0 + p, x0 : x0 + p]
        return torch.from_numpy(imgs), torch.from_numpy(msks), (torch.from_numpy(brs) if brs is not None else None)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, st: dict) -> None:
        self.rng.bit_generator.state = st


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


def augment_v2(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    depth: torch.Tensor | None = None,
    p_strip: float = 0.25,
    p_seq: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The v2 recipe: v1's geometry with a wider scale range, plus what other collections look like.

    - scale 0.7-1.4 (other voxel sizes and fields of view), rotation up to 20 degrees;
    - sequence dropout: pre- and/or post-contrast replaced by FLAIR, as the LGG set itself does for
      missing sequences and as a FLAIR-only study is fed to the model;
    - skull-stripping: pixels less than 6-16 px deep in the head set to 0 (``depth`` from
      ``head_depth``; tumour is never removed), as BraTS ships its images;
    - per-channel gamma, contrast and brightness, a smooth multiplicative bias field, low-contrast
      (dark) slices, Gaussian noise and blur.
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
    # Sequence dropout: 0 keep, 1 pre->FLAIR, 2 post->FLAIR, 3 FLAIR only.
    mode = torch.randint(0, 4, (n,), generator=gen)
    mode = torch.where(torch.rand(n, generator=gen) < p_seq, mode, torch.zeros_like(mode)).to(dev)
    fl = x[:, 1:2]
    pre = torch.where(((mode == 1) | (mode == 3)).view(n, 1, 1, 1), fl, x[:, 0:1])
    post = torch.where(((mode == 2) | (mode == 3)).view(n, 1, 1, 1), fl, x[:, 2:3])
    x = torch.cat([pre, fl, post], 1)
    # Bias field: a 4x4 grid of log-gains, smoothly upsampled.
    field = F.interpolate(_u(gen, (n, 1, 4, 4), -0.3, 0.3, dev), size=(h, w), mode="bicubic", align_corners=True)
    on = _u(gen, (n, 1, 1, 1), 0, 1, dev) < 0.3
    x = torch.where(on, x * torch.exp(field), x)
    # Per-channel gamma / contrast, per-image brightness, and dark low-contrast slices.
    g = torch.exp(_u(gen, (n, 3, 1, 1), -0.35, 0.35, dev))
    c = _u(gen, (n, 3, 1, 1), 0.75, 1.25, dev)
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
    x = (x + noise * sigma).clamp(0, 1)
    return x, y
