"""What the app keeps in memory while it holds follow-ups (issue 44.15): its RSS after each of N follow-up jobs
of two 155-slice studies and one study, beside what the results store counts against its budget.

python benchmarks/app_memory.py [--case ../shared/data/brats-dev/BraTS-GLI-00000-000] [--followups 6]
    [--threads 2] [--json benchmarks/results/app_memory.json]

Two fresh processes side by side, one with the store handing freed memory back after each large result
(``app.results.GIVE_BACK``, the app's behaviour) and one without. In each the app runs in process (FastAPI's
TestClient, the same routes and jobs as `tumorseg app`); the follow-up is the case's FLAIR against itself under a
rigid move. RSS is read from /proc/self/status after each job (after a garbage collection), and once more at the
end after an explicit malloc_trim: what is left then is the model, the runtime's working memory and what the
store holds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trimmed_rss_mb() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--case", default=str(Path(__file__).resolve().parents[2] / "shared/data/brats-dev/BraTS-GLI-00000-000")
    )
    ap.add_argument("--followups", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--variant", choices=("give-back", "keep"), default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant is None:
        return compare_variants(a)
    from fastapi.testclient import TestClient
    from followup import moved_copy  # benchmarks/followup.py: the same known move

    from tumorseg.app import results
    from tumorseg.app.results import MAX_RESULT_BYTES, MAX_RESULTS
    from tumorseg.app.server import create_app
    from tumorseg.engines.hardware import machine_record
    from tumorseg.inference import Predictor

    case = Path(a.case)
    src = case / f"{case.name}_flair.nii.gz"
    results.GIVE_BACK = a.variant == "give-back"
    start = rss_mb()
    pred = Predictor(engine="onnx-int8", threads=a.threads)
    app = create_app(pred)
    client = TestClient(app)
    store = app.state.results
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        moved = moved_copy(src, Path(tmp) / "later_flair.nii.gz")
        files = [("baseline", (src.name, src.read_bytes())), ("followup", (moved.name, moved.read_bytes()))]
        loaded = trimmed_rss_mb()

        def run_job(endpoint: str, form) -> dict:
            job = client.post(endpoint, files=form).json()
            while True:
                v = client.get(f"/api/jobs/{job['job_id']}").json()
                if v["state"] in ("done", "failed", "cancelled"):
                    return v
                time.sleep(0.5)

        for k in range(a.followups + 1):
            kind = "study" if k == a.followups else "followup"
            t0 = time.perf_counter()
            if kind == "study":
                v = run_job("/api/jobs/study", [("files", (src.name, src.read_bytes()))])
            else:
                v = run_job("/api/jobs/followup", files)
            assert v["state"] == "done", v
            gc.collect()
            rows.append(
                {
                    "job": f"{kind} {k + 1}",
                    "seconds": round(time.perf_counter() - t0, 1),
                    "rss_mb": round(rss_mb(), 1),
                    "held_results": len(store),
                    "held_counted_mb": round(store.held_bytes() / 2**20, 1),
                }
            )
            print(rows[-1], flush=True)
    result = {
        "variant": a.variant,
        "machine": machine_record(a.threads),
        "case": case.name,
        "threads": a.threads,
        "store_limits": {"max_results": MAX_RESULTS, "max_mb": MAX_RESULT_BYTES >> 20},
        "rss_mb": {"at_start": round(start, 1), "model_loaded": round(loaded, 1)},
        "jobs": rows,
        "rss_after_trim_mb": round(trimmed_rss_mb(), 1),
        "note": "rss_after_trim_mb - model_loaded is what the held results and the libraries' caches keep; compare "
        "with the last held_counted_mb",
    }
    print(json.dumps({k: result[k] for k in ("rss_mb", "rss_after_trim_mb")}))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


def compare_variants(a) -> None:
    """Both variants in fresh processes, one after the other, and their RSS side by side."""
    import subprocess
    import sys

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("give-back", "keep"):
            out = Path(tmp) / f"{variant}.json"
            cmd = [sys.executable, __file__, "--case", a.case, "--followups", str(a.followups)]
            cmd += ["--threads", str(a.threads), "--variant", variant, "--json", str(out)]
            subprocess.run(cmd, check=True)
            runs[variant] = json.loads(out.read_text())
    jobs = [
        {
            "job": g["job"],
            "held_counted_mb": g["held_counted_mb"],
            "rss_mb_give_back": g["rss_mb"],
            "rss_mb_keep": k["rss_mb"],
            "seconds_give_back": g["seconds"],
            "seconds_keep": k["seconds"],
        }
        for g, k in zip(runs["give-back"]["jobs"], runs["keep"]["jobs"])
    ]
    result = {
        "machine": runs["give-back"]["machine"],
        "case": runs["give-back"]["case"],
        "store_limits": runs["give-back"]["store_limits"],
        "model_loaded_rss_mb": {v: r["rss_mb"]["model_loaded"] for v, r in runs.items()},
        "jobs": jobs,
        "final_rss_mb": {v: r["jobs"][-1]["rss_mb"] for v, r in runs.items()},
        "final_rss_after_trim_mb": {v: r["rss_after_trim_mb"] for v, r in runs.items()},
        "median_seconds_followup": {
            v: statistics.median(j["seconds"] for j in r["jobs"] if j["job"].startswith("followup"))
            for v, r in runs.items()
        },
    }
    print(json.dumps({k: result[k] for k in ("final_rss_mb", "final_rss_after_trim_mb", "median_seconds_followup")}))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
