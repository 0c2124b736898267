"""Unpack ../shared/gpu/pack.py's zip into a kaggle_3m folder of PNG slices, over many processes.

    python research/gpu/gpu_unpack.py PACK.zip DEST [PROCESSES]

The decoding is unpack.py's (each .webp is one slice's three channels side by side, grey); the GPU
scripts call this before training so the 16 cores of the device machine share the work.
"""

from __future__ import annotations

import io
import sys
import zipfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image


def _work(job: tuple[str, str, list[str]]) -> int:
    zp, dest, names = job
    with zipfile.ZipFile(zp) as z:
        for name in names:
            t = Path(dest) / name
            t.parent.mkdir(parents=True, exist_ok=True)
            data = z.read(name)
            if name.endswith(".webp"):
                band = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
                w = band.shape[1] // 3
                rgb = np.stack([band[:, :w], band[:, w : 2 * w], band[:, 2 * w :]], axis=-1)
                Image.fromarray(rgb).save(t.with_suffix(".png"), compress_level=1)
            else:
                t.write_bytes(data)
    return len(names)


def main() -> None:
    zp, dest = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    names = [x for x in zipfile.ZipFile(zp).namelist() if not x.endswith("/")]
    with Pool(n) as p:
        print(sum(p.map(_work, [(zp, dest, names[i::n]) for i in range(n)])), "files unpacked")


if __name__ == "__main__":
    main()
