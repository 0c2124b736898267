"""The `tumorseg` command. Front end only: parses arguments, calls the library, reports errors.

Exit codes: 0 success; 1 some inputs failed (the others were processed); 2 usage or
input error (bad arguments, unreadable data, bad model file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from .args import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, add_engine_arg, spacing_mm, unit_interval
from .train import add_evaluate, add_export, add_train, recipe_defaults, run_evaluate, run_export, run_train

TRAIN_EXTRA = ("torch", "safetensors", "onnx", "matplotlib")  # pyproject's `train` extra


EXTRA_OF = {**dict.fromkeys(TRAIN_EXTRA, "train"), "distributed": "dask", "dask": "dask"}


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images, folders, globs or studies",
        description="2D images: <name>_mask.png, <name>_overlay.png, <name>_prob.png (--tta: <name>_uncertainty.png). "
        "Studies (NIfTI, DICOM series, per-sequence folders, numbered slices, --dicomweb): a folder <name>/ with "
        "mask.nii.gz in the input's geometry, mask_seg.dcm (DICOM input), overlays/sliceNNNN_overlay.png (turned as the "
        "page shows the study) and study.json (volume, slices, diameter, notes). Always summary.csv; with "
        "--reference, comparison.json.",
    )
    p.add_argument("inputs", nargs="*", help="images, folders, globs, NIfTI, DICOM folders or zips")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument(
        "--threshold", type=unit_interval, default=None, help="probability threshold 0..1 (default: the model's)"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="left-right flip test-time augmentation and its spread as an uncertainty map "
        "(a model that records TTA, chosen on validation, uses it anyway)",
    )
    add_engine_arg(p)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all cores)")
    p.add_argument("--min-component-mm3", type=float, default=0.0, help="studies: drop 3D components smaller than this")
    p.add_argument("--series", default=None, help="DICOM: SeriesInstanceUID when a folder holds several")
    p.add_argument(
        "--reference",
        default=None,
        metavar="MASK|FOLDER|auto",
        help="compare with a reference (one input): a 2D mask image, a NIfTI mask (resampled onto the study's grid "
        "where it lies elsewhere), a slice folder's <slice>_mask images, or auto: the study's own reference beside it "
        "(a case's _seg, a slice folder's _mask files; what the page offers). Dice, volumes and the slices that "
        "disagree most (numbered from 1) go to <out>/comparison.json, with the reference used",
    )
    p.add_argument(
        "--spacing",
        type=spacing_mm,
        default=None,
        metavar="ROW,COL,SLICE",
        help="voxel size in mm for stacks of 2D slices (they carry none); recorded in study.json",
    )
    arc = p.add_argument_group("archives: many studies, resumable, optionally on a Dask cluster")
    arc.add_argument(
        "--manifest",
        default=None,
        metavar="FILE",
        help="a text file with one study path or URL a line, or a CSV with columns path[,name][,spacing]",
    )
    arc.add_argument(
        "--skip-done",
        action="store_true",
        help="skip studies whose study.json in --out records the same model and settings (rerun after a crash)",
    )
    arc.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="run one task per study on a Dask cluster: tcp://HOST:PORT of a running scheduler, or local:N for "
        'N single-threaded workers on this machine (needs pip install "tumorseg[dask]")',
    )
    pac = p.add_argument_group("a study from a PACS (DICOMweb; credentials from TUMORSEG_PACS_* or a file)")
    pac.add_argument(
        "--dicomweb", default=None, metavar="URL", help="the DICOMweb root, e.g. http://host:8042/dicom-web"
    )
    pac.add_argument("--study", default=None, metavar="UID", help="StudyInstanceUID to segment")
    pac.add_argument(
        "--store", action="store_true", help="send the DICOM-SEG and the TID 1500 report back into the study"
    )
    _pacs_auth_args(pac)
    seq = p.add_argument_group(
        "one study from one file or series per sequence (NIfTI files or DICOM series folders; on one grid)"
    )
    seq.add_argument("--flair", default=None, help="FLAIR volume (required for this mode)")
    seq.add_argument("--t1", default=None, help="pre-contrast T1 volume (FLAIR fills in when absent)")
    seq.add_argument("--t1c", default=None, help="post-contrast T1 volume (FLAIR fills in when absent)")


def _cmd_predict(a) -> int:
    from .predict import predict_inputs

    return predict_inputs(a)


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="start the local web app (default http://127.0.0.1:8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    add_engine_arg(p)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--token",
        default=None,
        help="require this bearer token for /api (visible in `ps`: prefer TUMORSEG_TOKEN or --token-file)",
    )
    p.add_argument("--token-file", default=None, help="read the bearer token from this file's first line")
    p.add_argument(
        "--allow-host",
        action="append",
        default=None,
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; default: only the bound "
        "host name and, on loopback, localhost/127.0.0.1/::1)",
    )
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload (default: %(default)s MB)")
    p.add_argument(
        "--dicomweb", default=None, metavar="URL", help="a PACS (DICOMweb root) to list, open and store studies"
    )
    _pacs_auth_args(p)


def _cmd_app(a) -> int:
    import os

    from ..app.server import serve

    if a.token is not None and not a.token.strip():
        raise ValueError("--token is empty; give a token, or leave --token out to serve without one")
    token = a.token or os.environ.get("TUMORSEG_TOKEN") or None
    if a.token_file:
        from pathlib import Path

        try:
            token = Path(a.token_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ValueError(f"{a.token_file}: cannot read a token from it ({exc or 'empty file'})") from None
    serve(
        host=a.host,
        port=a.port,
        model=a.model,
        engine=a.engine,
        open_browser=not a.no_browser,
        token=token,
        max_upload_mb=a.max_upload_mb,
        allow_hosts=a.allow_host,
        dicomweb=_pacs_config(a) if a.dicomweb else None,
    )
    return EXIT_OK


def _pacs_config(a):
    from ..pacs.config import PacsConfig

    return PacsConfig.from_env(a.dicomweb, a.pacs_auth_file, a.pacs_ca, a.pacs_allow_redirect)


def _add_followup(sub) -> None:
    p = sub.add_parser(
        "followup",
        help="compare two studies of one patient: what changed, in mL and where",
        description="Segment a baseline and a follow-up study (any study source predict takes, or study UIDs in a "
        "PACS), register the follow-up onto the baseline (rigid, SimpleITK) and write followup.json (volumes, "
        "diameters, the RANO-style bidimensional product, change, growth per month, new and resolved tumour, a "
        "RANO-style wording as a suggestion), change.nii.gz (baseline space: 1 unchanged, 2 new, 3 resolved), "
        "side_by_side.png and, for DICOM studies, each time point's DICOM-SEG and TID 1500 SR, linked by one "
        "tracking UID. Research use only; not a medical device.",
    )
    p.add_argument(
        "studies",
        nargs="+",
        metavar="STUDY",
        help="BASELINE FOLLOWUP: two study paths, or two StudyInstanceUIDs with --dicomweb; with --prior the "
        "FOLLOWUP UID alone",
    )
    p.add_argument("--out", required=True, help="folder for the outputs (created; inputs are never written)")
    p.add_argument(
        "--interval",
        default=None,
        metavar="DAYS",
        help="days between, where the files carry no dates (a number in (0, 36500])",
    )
    p.add_argument("--force", action="store_true", help="compare studies whose PatientIDs differ")
    p.add_argument(
        "--spacing",
        type=spacing_mm,
        default=None,
        metavar="ROW,COL,SLICE",
        help="voxel size in mm for stacks of 2D slices (they carry none), used for both studies",
    )
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    add_engine_arg(p)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all cores)")
    pac = p.add_argument_group("studies from a PACS (DICOMweb; credentials from TUMORSEG_PACS_* or a file)")
    pac.add_argument("--dicomweb", default=None, metavar="URL", help="the DICOMweb root; STUDY arguments are UIDs")
    pac.add_argument(
        "--prior",
        action="store_true",
        help="the baseline is the patient's latest MR study dated before FOLLOWUP (looked up by PatientID)",
    )
    pac.add_argument(
        "--store", action="store_true", help="send each time point's DICOM-SEG and SR back into its own study"
    )
    _pacs_auth_args(pac)


def _cmd_followup(a) -> int:
    from ..followup.run import run
    from ..inference import Predictor

    pacs = None
    if a.dicomweb:
        from ..pacs.client import Pacs

        pacs = Pacs(_pacs_config(a))
    pred = lambda: Predictor(a.model, engine=a.engine, threads=a.threads)  # noqa: E731  (loaded after the checks)
    fu, out = run(
        pred, a.studies, a.out, pacs=pacs, prior=a.prior, store=a.store, interval=a.interval, force=a.force,
        spacing=a.spacing, say=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    return EXIT_OK


def _pacs_auth_args(p) -> None:
    p.add_argument(
        "--pacs-auth-file",
        default=None,
        metavar="FILE",
        help="credentials: a first line 'user:password' or 'Bearer TOKEN' (else TUMORSEG_PACS_TOKEN, or "
        "TUMORSEG_PACS_USER and TUMORSEG_PACS_PASSWORD)",
    )
    p.add_argument("--pacs-ca", default=None, metavar="FILE", help="CA bundle for a PACS with a private certificate")
    p.add_argument(
        "--pacs-allow-redirect",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let the PACS redirect to this other origin (e.g. https://pacs2:443); by default a redirect off the "
        "--dicomweb origin is refused (a retrieval or a store could otherwise go elsewhere)",
    )


def _add_pacs(sub) -> None:
    p = sub.add_parser("pacs", help="look into a DICOMweb archive (PACS)")
    psub = p.add_subparsers(dest="pacs_cmd", required=True)
    ls = psub.add_parser("list", help="the studies a user could segment")
    ls.add_argument("url", help="the DICOMweb root, e.g. http://host:8042/dicom-web")
    ls.add_argument("--patient", default=None, help="PatientID")
    ls.add_argument("--name", default=None, help="PatientName (fuzzy, e.g. 'Doe*')")
    ls.add_argument("--date", default=None, help="StudyDate, YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    ls.add_argument("--modality", default="MR", help="modality in the study (default: %(default)s; '' for any)")
    ls.add_argument("--json", action="store_true")
    _pacs_auth_args(ls)


def _cmd_pacs(a) -> int:
    from ..pacs.client import Pacs
    from ..pacs.config import PacsConfig

    pacs = Pacs(PacsConfig.from_env(a.url, a.pacs_auth_file, a.pacs_ca, a.pacs_allow_redirect))
    found = pacs.studies(a.patient, a.name, a.date, a.modality or None)
    if a.json:
        print(json.dumps(found, indent=1))
        return EXIT_OK
    if not found:
        print("no studies found", file=sys.stderr)
        return EXIT_OK
    for s in found:
        print(
            f"{s['study_uid']}  {s['patient_id']:<12} {s['patient_name'][:24]:<24} {s['date']:<8}  "
            f"{','.join(s['modalities']):<8} {s['series'] if s['series'] is not None else '?':>3} series  {s['description']}"
        )
    return EXIT_OK


def _add_engines(sub) -> None:
    p = sub.add_parser(
        "engines",
        help="measure the inference engines on this machine and say which is the default and why",
        description="Times each candidate engine on a fixed slice (cached per CPU, threads, version and model).",
    )
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all cores, up to 8)")
    p.add_argument("--remeasure", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print the engine choice's record as JSON")


def _cmd_engines(a) -> int:
    from ..engines.choice import CACHE_FILE
    from ..engines.hardware import user_cache_dir
    from ..engines.loading import load_engine

    eng = load_engine(a.model, None, a.threads, remeasure=a.remeasure)
    c = eng.choice
    if a.json:
        print(json.dumps(c.as_dict() | {"cache": str(user_cache_dir() / CACHE_FILE)}, indent=1))
        return EXIT_OK
    cpu = c.cpu
    print(
        f"CPU: {cpu['model']} ({cpu['machine']}, class {cpu['flags_class']}: {' '.join(cpu['flags']) or 'no flags read'})"
    )
    print(f"threads: {c.threads}")
    if c.timings_ms:
        print("engine        median per slice (batch 1, the model's input size)")
        for name, ms in sorted(c.timings_ms.items(), key=lambda kv: kv[1]):
            print(f"  {name:<11} {ms:8.1f} ms{'   <- default' if name == c.engine else ''}")
    for name, why in c.excluded.items():
        print(f"  {name:<11} not a candidate: {why}")
    print(f"default: {eng.name}: {eng.reason}")
    cache = user_cache_dir() / CACHE_FILE
    if not c.timings_ms:
        print("cache: not needed (one candidate, nothing to measure)")
    elif c.cached:
        print(f"cache: used ({cache}, measured {c.measured_at}); --remeasure measures again")
    else:
        print(
            f"cache: measured now (timed runs {c.measure_run_s:.1f} s, loading the candidates {c.measure_load_s:.1f} s); saved in {cache}"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    ap = argparse.ArgumentParser(
        prog="tumorseg",
        description="Brain-tumour segmentation in MRI. Research use only: not a medical device.",
    )
    ap.add_argument("--version", action="version", version=f"tumorseg {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (add_train, add_evaluate, _add_predict, _add_app, add_export, _add_engines, _add_pacs, _add_followup):
        add(sub)
    ap.commands = sub.choices  # each command's parser: `train --recipe` sets the train parser's defaults
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    a = parser.parse_args(argv)
    handlers = {
        "train": run_train,
        "evaluate": run_evaluate,
        "predict": _cmd_predict,
        "app": _cmd_app,
        "export": run_export,
        "engines": _cmd_engines,
        "pacs": _cmd_pacs,
        "followup": _cmd_followup,
    }
    from ..errors import ImageReadError, ModelFileError

    try:
        if a.cmd == "train" and a.recipe:  # the recipe's settings become the defaults; flags still win
            recipe_defaults(parser, a)
            a = parser.parse_args(argv)
        return handlers[a.cmd](a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in EXTRA_OF:
            extra = EXTRA_OF[top]
            print(
                f"tumorseg {a.cmd}: error: this needs {top}, which the base install leaves out: "
                f'pip install "tumorseg[{extra}]" (or, from a checkout, pip install -e ".[{extra}]")',
                file=sys.stderr,
            )
            return EXIT_ERROR
        raise
    except (ImageReadError, ModelFileError, OSError, ValueError) as exc:  # a DatasetError or RecipeError too
        print(f"tumorseg {a.cmd}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as exc:
        print(f"tumorseg {a.cmd}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
