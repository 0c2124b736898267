"""Peak memory of each hostile input from the hardening probes, each read in a fresh process.

    python benchmarks/hostile_inputs.py [--json benchmarks/results/hostile_inputs.json]

Builds the inputs (tests/test_hostile_inputs.py's builders), reads each with the library in a subprocess
and reports the file size, the outcome and the peak RSS above the process's baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests is a package

from tests.test_hostile_inputs import (  # noqa: E402
    _corrupt_zip,
    _deflated_dicom,
    _nifti,
    _nifti_header_only,
    _peak_rss_delta_mb,
    _tiff_header,
    _zip_of_zeros,
)
from tests.test_limits_and_outputs import flat_png, legacy_multiframe, rgb24_nifti  # noqa: E402


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        dcm = _deflated_dicom(t / "d" / "bomb.dcm", 8192, 8192)
        import zipfile

        z4 = t / "four_deflated.zip"
        with zipfile.ZipFile(z4, "w") as zf:
            for k in range(4):
                zf.writestr(f"b{k}.dcm", dcm.read_bytes())
        planar = t / "planar.tif"
        planar.write_bytes(_tiff_header(22000, 22000, 3, 2))
        samples = t / "samples.tif"
        samples.write_bytes(_tiff_header(4000, 4000, 100, 1))
        probes = {
            "deflated DICOM 8192^2 16-bit, 4 in a zip": ("read_study(p)", z4),
            "planar TIFF 3x22000^2": ("read_image(p)", planar),
            "TIFF 4000^2 x 100 samples": ("read_image(p)", samples),
            "NIfTI.gz declaring 1400x1400x1000": (
                "read_study(p)",
                _nifti_header_only(t / "h.nii.gz", (1400, 1400, 1000)),
            ),
            "zip of two 150 MB zero members": (
                "read_study(p)",
                _zip_of_zeros(t / "z.zip", {"a.tif": 150 << 20, "b.tif": 150 << 20}),
            ),
            "zip with a corrupt member": ("read_study(p)", _corrupt_zip(t / "c" / "corrupt.zip")),
            "NIfTI with NaN pixdim": ("read_study(p)", _nifti(t / "nan.nii", (float("nan"), 1, 1))),
            # round 3
            "flat grey PNG 8000^2 (~80 kB)": ("read_image(p)", _write(t / "f8.png", flat_png(8000, 8000))),
            "flat grey PNG 4000^2 (working copies)": ("read_image(p)", _write(t / "f4.png", flat_png(4000, 4000))),
            "NIfTI 16x16x2000 (model time)": (
                "read_study(p)",
                _nifti_header_only(t / "m1.nii.gz", (16, 16, 2000), (1, 1, 1)),
            ),
            "NIfTI 44x44x32767 (model time)": (
                "read_study(p)",
                _nifti_header_only(t / "m2.nii.gz", (44, 44, 32767), (1, 1, 1)),
            ),
            "NIfTI 1x240x155 (1 px slices)": (
                "read_study(p)",
                _nifti_header_only(t / "m3.nii.gz", (1, 240, 155), (1, 1, 1)),
            ),
            "NIfTI RGB24": ("read_study(p)", rgb24_nifti(t / "rgb.nii.gz")),
            "legacy multi-frame DICOM, 20 frames (must read)": (
                "st = read_study(p); assert st.n_slices == 20",
                legacy_multiframe(t / "mf"),
            ),
        }
        for name, (call, path) in probes.items():
            delta, msg = _peak_rss_delta_mb(call, path)
            rows.append(
                {
                    "input": name,
                    "bytes": sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size,
                    "peak_rss_delta_mb": round(delta, 1),
                    "outcome": msg.split(": ", 1)[0] + ": " + msg.split(": ", 2)[-1][:140],
                }
            )
            print(f"{name:45s} {rows[-1]['bytes']:>10,} B  +{delta:6.1f} MB  {rows[-1]['outcome']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
