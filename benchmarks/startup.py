"""Start-up cost of the default (int8) path, each measurement in a fresh process.

    python benchmarks/startup.py [--runs 5] [--out benchmarks/results/startup.json]

Per run: `import tumorseg.inference`, `Predictor()` with the bundled model, and a one-slice
`tumorseg predict` end to end (wall time and the child's peak RSS). The same CLI run is repeated
with `import torch` first, which is what the int8 path cost while the package imported PyTorch at
module level. Medians over --runs; the two variants take turns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORT = "import time; t = time.perf_counter(); import tumorseg.inference; print(time.perf_counter() - t)"
READY = (
    "import time; from tumorseg.inference import Predictor; t = time.perf_counter(); p = Predictor(); "
    "print(time.perf_counter() - t)"
)
CLI = "{pre}import sys; from tumorseg.cli.main import main; sys.exit(main(['predict', {png!r}, '--out', {out!r}]))"


def _child(code: str) -> tuple[float, str]:
    """(wall s, stdout) of one fresh interpreter running ``code``."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {code}\n{r.stderr[-800:]}")
    return wall, r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/startup.json")
    a = ap.parse_args()
    import numpy as np
    from PIL import Image

    from tumorseg.engines.loading import load_engine

    engine = load_engine(None).name
    rng = np.random.default_rng(0)
    img = np.asarray(
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).resize((256, 256), Image.BILINEAR)
    )
    res: dict[str, list[float]] = {k: [] for k in ("import_s", "ready_s", "cli_s", "cli_with_torch_s")}
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        png = str(Path(tmp) / "slice.png")
        Image.fromarray(img).save(png)
        for k in range(a.runs):
            res["import_s"].append(float(_child(IMPORT)[1]))
            res["ready_s"].append(float(_child(READY)[1]))
            out = str(Path(tmp) / f"out{k}")
            res["cli_s"].append(_child(CLI.format(pre="", png=png, out=out))[0])
            res["cli_with_torch_s"].append(_child(CLI.format(pre="import torch; ", png=png, out=out + "t"))[0])
        # peak RSS of each variant, each in its own wrapper process
        rss["cli_peak_rss_mb"] = _peak([sys.executable, "-c", CLI.format(pre="", png=png, out=str(Path(tmp) / "r1"))])
        rss["cli_with_torch_peak_rss_mb"] = _peak(
            [sys.executable, "-c", CLI.format(pre="import torch; ", png=png, out=str(Path(tmp) / "r2"))]
        )
    med = {k + "_median": statistics.median(v) for k, v in res.items()}
    result = {"engine": engine, "runs": a.runs, **med, **rss, "samples": res}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{engine}: import tumorseg.inference {med['import_s_median']:.2f} s; Predictor() {med['ready_s_median']:.2f} s; "
        f"one-slice `tumorseg predict` {med['cli_s_median']:.2f} s wall, {rss['cli_peak_rss_mb']:.0f} MB peak "
        f"(with torch imported first: {med['cli_with_torch_s_median']:.2f} s, "
        f"{rss['cli_with_torch_peak_rss_mb']:.0f} MB); median of {a.runs}"
    )


def _peak(cmd: list[str]) -> float:
    """Peak RSS (MB) of one command: a fresh wrapper process runs it and reports its only child's maximum."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    return int(r.stdout.strip()) / 1024


if __name__ == "__main__":
    main()
