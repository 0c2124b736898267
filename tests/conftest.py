"""Shared fixtures: small synthetic datasets with blob 'tumours' and a tiny saved model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:  # the base install (no train extra) runs the torch-free tests: this file must import without torch
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(1)  # predictable under load; CI machines are small

HAVE_TORCH = torch is not None
# test modules that are about training or the torch engines through and through: not collected on the base
# install (the others skip test by test where they need the tiny model or a torch engine)
collect_ignore = [] if HAVE_TORCH else ["test_context.py", "test_metrics.py", "test_network.py"]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``train`` need the train extra (PyTorch, onnx): skipped, saying so, on the base install."""
    if HAVE_TORCH:
        return
    skip = pytest.mark.skip(reason="needs the train extra (PyTorch): pip install -e '.[train]'")
    for item in items:
        if "train" in item.keywords:
            item.add_marker(skip)


# The engine choice's cache: one per test session (subprocesses inherit it), never the user's own.
os.environ["TUMORSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="tumorseg-test-cache-")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LGG = SHARED / "data" / "lgg-kaggle_3m"
LGG_WEIGHTS = SHARED / "weights" / "resnet50_imagenet_msra_stem-layer3.pth"


def smooth_noise(shape, seed: int = 0, hi: float = 255, dtype=np.uint8) -> np.ndarray:
    """Random but smooth like an MRI slice (pure noise is refused by the input checks)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    small = rng.random((max(2, h // 6), max(2, w // 6)) + tuple(shape[2:]))
    chans = [small] if small.ndim == 2 else [small[..., c] for c in range(small.shape[2])]
    big = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)) for c in chans]
    out = big[0] if small.ndim == 2 else np.stack(big, -1)
    return (out * hi).astype(dtype)


def blob_slice(rng: np.random.Generator, size: int, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    img = smooth_noise((size, size, 3), int(rng.integers(1 << 30)), 60)
    mask = np.zeros((size, size), np.uint8)
    if tumour:
        r = size // 8
        cy, cx = rng.integers(r + 2, size - r - 2, 2)
        yy, xx = np.mgrid[:size, :size]
        b = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[b] = np.clip(img[b].astype(int) + 150, 0, 255)
        mask[b] = 255
    return img, mask


def make_kaggle(
    root: Path, patients: int = 6, slices: int = 6, size: int = 64, ext: str = ".png", seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for p in range(patients):
        pid = f"TCGA_XX_{p:04d}_20000101"
        d = root / pid
        d.mkdir(parents=True, exist_ok=True)
        for n in range(1, slices + 1):
            img, mask = blob_slice(rng, size, tumour=(n % 2 == 1))
            Image.fromarray(img).save(d / f"{pid}_{n}{ext}")
            Image.fromarray(mask).save(d / f"{pid}_{n}_mask{'.png' if ext in ('.jpg', '.webp') else ext}")
    (root / "data.csv").write_text("Patient,x\n")
    (root / "README.md").write_text("synthetic\n")
    return root


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory) -> Path:
    return make_kaggle(tmp_path_factory.mktemp("kaggle"))


def png_bytes(arr, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **kw)
    return buf.getvalue()


def tif_bytes(arr, **kw) -> bytes:
    import io

    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def free_port() -> int:
    """A free TCP port on loopback (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_client(predictor, max_upload_mb: float = 50.0):
    """The app in process, around a Predictor, with an upload cap."""
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app

    return TestClient(create_app(predictor, max_upload_mb=max_upload_mb))


def write_dicom_series(
    folder, n=6, rows=32, cols=32, spacing=(0.8, 0.7), thickness=2.5, series_uid=None, pixel=True, prefix="IM"
):
    """A synthetic single-frame MR series (file names shuffled, instance numbers reversed on purpose)."""
    import datetime
    import random

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    names = [f"{prefix}{k:04d}.dcm" for k in range(n)]
    random.Random(0).shuffle(names)  # file names do not follow slice order
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Test^Phantom", "X1", "O", "19700101"
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, n - k  # instance numbers reversed on purpose
        ds.Manufacturer = "synthetic"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 10 + k * thickness]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if pixel:
            arr = np.full((rows, cols), k * 100, np.uint16)  # intensity encodes the true slice position
            ds.PixelData = arr.tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return series_uid


def save_tiny_model(path: Path, seed: int = 0, **meta) -> Path:
    """A randomly initialised model in the project's format, input 64x64; ``meta`` adds or overrides keys."""
    pytest.importorskip("torch", reason="needs the train extra (PyTorch): pip install -e '.[train]'")
    from tumorseg.nn.serialise import save_model
    from tumorseg.nn.unet import UNetResNet50

    torch.manual_seed(seed)
    base = {
        "architecture": {"name": "unet-resnet50", "decoder_channels": [256, 128, 64, 32, 16]},
        "input_size": 64,
        "normalisation": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "threshold": 0.5,
        "training": {"split": {"train": [], "val": [], "test": []}},
    }
    save_model(UNetResNet50(), path, {**base, **meta}, dtype=torch.float16)
    return path


def cli_predict(inputs, out, model, *extra: str) -> int:
    """`tumorseg predict` with a test model on the exact fp32 engine."""
    from tumorseg.cli.main import main

    inputs = [inputs] if isinstance(inputs, (str, Path)) else inputs
    return main(
        ["predict", *map(str, inputs), "--out", str(out), "--model", str(model), "--engine", "torch-fp32", *extra]
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised model saved in the project's format, input 64x64."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def predictor(tiny_model):
    """The tiny model behind the one Predictor, in fp32 so results are exact across runs."""
    from tumorseg.inference import Predictor

    return Predictor(tiny_model, engine="torch-fp32")
