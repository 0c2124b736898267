"""Screenshot of the page's PACS panel for the README: a private Orthanc holding one BraTS case as
three DICOM series (FLAIR, T1, T1-contrast; converted here from its NIfTI files), the app started
with --dicomweb, the study listed and opened in Chromium.

    python scripts/screenshot_pacs.py [--case ../shared/data/brats-dev/BraTS-GLI-00000-000]
        [--out docs/screenshots/pacs.png]

Needs Debian's orthanc + orthanc-dicomweb and chromium (what .ci/run installs).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests is a package
from tests.chromium import launch  # noqa: E402
from tests.test_pacs import start_orthanc, upload  # noqa: E402

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats-dev" / "BraTS-GLI-00000-000"
USER, PASSWORD = "screenshot", "not-a-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nifti_to_series(nii: Path, folder: Path, study_uid: str, frame_uid: str, desc: str, number: int) -> None:
    """One axial DICOM MR series from a NIfTI volume (positions and orientation from its affine, LPS)."""
    import nibabel as nib
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    img = nib.as_closest_canonical(nib.load(str(nii)))  # RAS+
    vol = np.asarray(img.dataobj).astype(np.float32)
    zooms = img.header.get_zooms()[:3]
    vol = np.clip(vol / max(float(vol.max()), 1.0) * 4000, 0, 4095).astype(np.uint16)
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    a = img.affine
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "BraTS^GLI-00000", "BRATS-00000"
        ds.PatientSex, ds.PatientBirthDate = "O", ""
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "SCREENSHOT", ""
        ds.StudyDescription, ds.SeriesDescription = "MR BRAIN (BraTS case, external)", desc
        ds.SeriesNumber, ds.InstanceNumber = number, k + 1
        # Displayed radiologically: column c is voxel i = X-1-c (patient right on the left, towards LPS +x),
        # row r is voxel j = Y-1-r (anterior at the top, towards LPS +y): the standard axial orientation.
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        pos = a @ [vol.shape[0] - 1, vol.shape[1] - 1, k, 1]
        ds.ImagePositionPatient = [float(-pos[0]), float(-pos[1]), float(pos[2])]
        ds.PixelSpacing, ds.SliceThickness = [float(zooms[1]), float(zooms[0])], float(zooms[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        sl = vol[::-1, ::-1, k].T  # rows = -y, columns = -x
        ds.Rows, ds.Columns = sl.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(sl).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default=str(CASE))
    ap.add_argument("--out", default="docs/screenshots/pacs.png")
    a = ap.parse_args()
    case = Path(a.case)
    from pydicom.uid import generate_uid

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        study, frame = generate_uid(), generate_uid()
        for n, (suffix, desc) in enumerate((("flair", "AX T2 FLAIR"), ("t1", "AX T1"), ("t1c", "AX T1 POST GD")), 2):
            nifti_to_series(next(case.glob(f"*_{suffix}.nii.gz")), t / suffix, study, frame, desc, n)
        orthanc, url = start_orthanc(t / "orthanc", USER, PASSWORD)
        try:
            upload(url, t, USER, PASSWORD)
            _shoot(f"{url}/dicom-web", Path(a.out))
        finally:
            orthanc.terminate()
            orthanc.wait(timeout=10)
    print(f"wrote {a.out}")


def _shoot(dicomweb: str, out: Path) -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from tumorseg.app.server import create_app
    from tumorseg.pacs.config import PacsConfig

    os.environ["TUMORSEG_PACS_USER"], os.environ["TUMORSEG_PACS_PASSWORD"] = USER, PASSWORD
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            create_app(dicomweb=PacsConfig.from_env(dicomweb)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.1)
    with sync_playwright() as p:
        b = launch(p)
        page = b.new_page(viewport={"width": 1280, "height": 720})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("[data-testid=pacs-open]", timeout=30000)
        page.locator("[data-testid=pacs-open]").first.click()
        page.wait_for_selector("[data-testid=pacs-store]:not([hidden])", timeout=600000)
        time.sleep(1.0)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        b.close()
    srv.should_exit = True


if __name__ == "__main__":
    main()
