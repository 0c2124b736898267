"""The CLI's predict command: a batch job or a PACS study, and what it prints."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..batch.items import run_record, study_row, write_study_atomically, write_summary
from ..batch.job import BatchError, BatchJob
from ..batch.plan import Item, PredictOptions, safe_name
from ..engines.bundled import model_checksum
from ..imaging.files import atomic_write_bytes


def predict_pacs(a, opts: PredictOptions) -> int:
    """`tumorseg predict --dicomweb URL --study UID [--series UID] [--store]`: one study from the archive,
    the usual study folder in --out, and with --store the DICOM-SEG and the TID 1500 report sent back."""

    from ..inference import DISCLAIMER
    from ..pacs.client import Pacs
    from ..pacs.config import PacsConfig
    from ..pacs.usecases import segment_study, store_results

    if not a.study:
        raise BatchError("--dicomweb needs --study STUDY_UID (`tumorseg pacs list URL` shows the studies)")
    if a.inputs or getattr(a, "manifest", None) or getattr(a, "dask", None):
        raise BatchError("give either input files or --dicomweb, not both")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: exists and is not a folder")
    t0 = time.perf_counter()
    pacs = Pacs(PacsConfig.from_env(a.dicomweb, a.pacs_auth_file, a.pacs_ca))
    pred = opts.load_predictor()
    print(f"tumorseg: {pred.engine_line()}", file=sys.stderr)
    sp = segment_study(pacs, pred, a.study, a.series, tta=opts.tta, min_component_mm3=opts.min_component_mm3)
    study = sp.study
    name = safe_name(a.study)
    label = study.source
    extra = write_study_atomically(sp, out, name, label, run_record(opts, model_checksum(opts.model)))
    row = study_row(Item(label, name, True), {**sp.summary(), **extra})
    print(f"tumorseg: {'; '.join(study.pacs['chosen'])}", file=sys.stderr)
    if a.store:
        arrived = store_results(pacs, sp, a.study)
        summary = json.loads((out / name / "study.json").read_text())
        summary["stored"] = arrived
        atomic_write_bytes(out / name / "study.json", (json.dumps(summary, indent=1) + "\n").encode())
        print(f"tumorseg: stored in study {a.study}: {', '.join(arrived)}", file=sys.stderr)
    write_summary(out, [row])
    print(
        f"1 segmented ({row['volume_ml']} mL) in {time.perf_counter() - t0:.1f} s; results in {out / name} ({DISCLAIMER})",
        file=sys.stderr,
    )
    return 0


def predict_inputs(a) -> int:
    """The CLI's predict command; returns the exit code."""
    from ..inference import DISCLAIMER

    opts = PredictOptions(
        model=a.model,
        engine=a.engine,
        threads=a.threads,
        threshold=a.threshold,
        tta=a.tta,
        series=a.series,
        min_component_mm3=a.min_component_mm3,
        spacing=a.spacing,
    )
    job = BatchJob(
        inputs=a.inputs,
        out=Path(a.out),
        options=opts,
        sequences={k: getattr(a, k, None) for k in ("t1", "flair", "t1c")},
        manifest=getattr(a, "manifest", None),
        reference=getattr(a, "reference", None),
        skip_done=getattr(a, "skip_done", False),
        dask=getattr(a, "dask", None),
    )
    try:
        if getattr(a, "dicomweb", None):
            return predict_pacs(a, opts)
        rep = job.run()
    except BatchError as exc:
        print(f"tumorseg predict: error: {exc}", file=sys.stderr)
        return 2
    if rep.comparison is not None:
        c = rep.comparison
        atomic_write_bytes(Path(a.out) / "comparison.json", (json.dumps(c, indent=1) + "\n").encode())
        print(
            f"reference {c['reference']}: Dice {c['dice']:.4f} (model {c['model_voxels']} voxels, "
            f"reference {c['reference_voxels']})",
            file=sys.stderr,
        )
    for r in rep.rows:
        if r["error"]:
            print(f"error: {r['error']}", file=sys.stderr)
    if job.dask:
        for line in rep.engine_lines:
            print(f"tumorseg worker: {line}", file=sys.stderr)
    if rep.interrupted:
        print("interrupted: summary.csv lists what finished", file=sys.stderr)
    skipped = f", {rep.skipped} already done" if rep.skipped else ""
    where = f"results in {a.out}" if Path(a.out).is_dir() else "nothing written"
    print(
        f"{rep.done} segmented{skipped}, {rep.failed} failed in {rep.wall_s:.1f} s; {where} ({DISCLAIMER})",
        file=sys.stderr,
    )
    return rep.exit_code
