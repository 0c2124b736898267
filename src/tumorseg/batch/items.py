"""One item of a batch: segmented, written atomically, summarised in a row. The Dask runner
executes the same ``process_item`` on workers, so a distributed run writes exactly what a local one does.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import ImageReadError
from ..imaging.files import atomic_write_bytes
from ..imaging.images import write_png
from ..studies import write_study_outputs
from ..studies.reference import own_reference
from .plan import Item, PredictOptions

# tumour_pixels: a 2D image's mask; tumour_voxels: a study's (each its own column, never one in the other's)
SUMMARY_FIELDS = [
    "file",
    "tumour_pixels",
    "area_mm2",
    "tumour_voxels",
    "volume_ml",
    "max_probability",
    "outputs",
    "warnings",
    "error",
]


def run_record(opts: PredictOptions, model_sha256: str) -> dict:
    return {"model_sha256": model_sha256, "settings": opts.settings()}


def study_row(item: Item, summary: dict) -> dict:
    """A study's summary.csv row, from its study.json alone (so a skipped study reads the same)."""
    m = summary
    return {
        "file": item.label,
        "tumour_pixels": "",
        "area_mm2": "",
        "tumour_voxels": m["tumour_voxels"],
        "volume_ml": "" if m.get("volume_ml") is None else f"{m['volume_ml']:.3f}",
        "max_probability": f"{m['max_probability']:.4f}",
        "outputs": f"{item.name}/",
        "warnings": " | ".join(m.get("notes", [])),
        "error": "; ".join(f"{item.label}: {e}" for e in m.get("export_errors", [])),  # outputs kept, still failed
    }


def error_row(label: str, msg: str) -> dict:
    if not msg.startswith(label):
        msg = f"{label}: {msg}"
    return {"file": label, **{k: "" for k in SUMMARY_FIELDS[1:-1]}, "error": msg}


def done_study(item: Item, out: Path, record: dict) -> dict | None:
    """The row of a study already complete in ``out`` with the same model and settings, else None."""
    try:
        summary = json.loads((out / item.name / "study.json").read_text())
    except (OSError, ValueError):
        return None
    # any content: a study.json of another shape (a list, nulls, missing or wrong-typed fields) is not done
    if not isinstance(summary, dict) or summary.get("run") != record or summary.get("source_label") != item.label:
        return None
    try:
        return study_row(item, summary)
    except (KeyError, TypeError, ValueError):
        return None


def _fetch(url: str, tmp: Path) -> Path:
    """A copy of a remote study (fsspec: s3://, gs://, http(s)://, ... where its package is installed)."""
    try:
        import fsspec
    except ImportError:
        raise ValueError(
            f"{url}: reading URLs needs fsspec (pip install fsspec and the filesystem's package)"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
        target = tmp / Path(path.rstrip("/")).name
        fs.get(path, str(target), recursive=fs.isdir(path))
    except ImportError as exc:
        raise ValueError(f"{url}: this kind of URL needs another package ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{url}: cannot be fetched ({type(exc).__name__}: {exc})") from None
    return target


def _swap_in(tmp_dir: Path, final: Path, attempts: int = 20) -> None:
    """Put a finished study folder in place in one rename (an older result is replaced only then).

    Two processes writing one ``--out`` may swap the same study at once: a rename onto a folder the other
    just put there fails, so the newer result is moved aside again and the rename retried; whatever was moved
    aside is removed (a symlink only unlinked: its target is never touched), so no ``.old-`` folder is left."""
    import errno

    for _ in range(attempts):
        old = None
        if final.is_symlink() or final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(final, old)
            except FileNotFoundError:  # the other writer moved it first
                old = None
        try:
            os.replace(tmp_dir, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
            continue  # another writer put its folder there in between: move it aside and try again
        finally:
            if old is not None:
                if old.is_symlink():
                    old.unlink()
                else:
                    shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(f"{final}: another process keeps replacing this study folder; not written")


def write_study_atomically(sp, out: Path, name: str, label: str, record: dict) -> dict:
    """The study folder written hidden, then renamed into place: complete exactly when study.json exists.
    Returns what was added to study.json beyond the prediction's own summary."""

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    extra = {"source_label": label, "max_probability": float(sp.prob.max()), "run": record}
    try:
        write_study_outputs(sp, tmp, extra=extra)
        errors = json.loads((tmp / "study.json").read_text()).get("export_errors")
        _swap_in(tmp, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**extra, "export_errors": errors} if errors else extra


def _note_own_reference(sp, src) -> None:
    """Say so when the study has its own reference beside it (a case's _seg, a folder's _mask files): the page
    offers it, and the CLI compares with it on --reference auto, never silently ignoring it."""

    try:
        found = own_reference(src)
    except OSError:
        return
    if found:
        what = found[0].name if len(found) == 1 else f"{len(found)} _mask images"
        sp.study.notes.append(f"A reference lies beside the study ({what}): --reference auto compares with it.")


def process_item(pred, item: Item, out: Path, opts: PredictOptions, record: dict, keep=None) -> dict:
    """Segment one item and write its outputs; returns its summary row (an error row on failure).

    A study is written into a hidden temporary folder and renamed into place with study.json in it,
    so a study is complete exactly when ``out/<name>/study.json`` exists. No output touches an input:
    ``output_conflicts`` refused every item whose outputs would, before anything ran.
    """
    import tempfile

    try:
        if not item.study:
            return _process_image(pred, item, out, opts, keep)
        with tempfile.TemporaryDirectory(prefix=".tumorseg-fetch-") as fetch_dir:
            src: object = item.source
            if isinstance(src, tuple):
                src = {k: Path(v) for k, v in src}
            elif "://" in src:
                src = _fetch(src, Path(fetch_dir))
            else:
                src = Path(src)
            sp = pred.predict_study(
                src,
                series=opts.series,
                tta=opts.tta,
                min_component_mm3=opts.min_component_mm3,
                progress=False,
                spacing=item.spacing or opts.spacing,
            )
        if keep is None and not isinstance(src, str):
            _note_own_reference(sp, src)
        extra = write_study_atomically(sp, out, item.name, item.label, record)
        if keep is not None:
            keep(sp)
        return study_row(item, {**sp.summary(), **extra})
    except (ImageReadError, ValueError, OSError) as exc:
        return error_row(item.label, str(exc))
    except Exception as exc:  # one row per bad input, never a traceback that stops the batch
        return error_row(item.label, f"cannot be processed ({type(exc).__name__}: {exc})")


def _process_image(pred, item: Item, out: Path, opts: PredictOptions, keep=None) -> dict:
    r = pred.predict(item.source, tta=opts.tta)
    targets = {
        out / f"{item.name}_mask.png": r.mask_png_array(),
        out / f"{item.name}_overlay.png": r.heatmap_overlay,
        out / f"{item.name}_prob.png": r.prob_png_array(),
    }
    if r.uncertainty is not None:
        targets[out / f"{item.name}_uncertainty.png"] = (r.uncertainty.clip(0, 0.5) * 510).astype("uint8")
    for t, arr in targets.items():
        write_png(t, arr)
    if keep is not None:
        keep(r)
    return {
        "file": item.label,
        "tumour_pixels": r.area_pixels,
        "area_mm2": "" if r.area_mm2 is None else f"{r.area_mm2:.2f}",
        "tumour_voxels": "",
        "volume_ml": "",
        "max_probability": f"{r.max_prob:.4f}",
        "outputs": f"{item.name}_*.png",
        "warnings": " | ".join(r.warnings),
        "error": "",
    }


def spreadsheet_safe(value) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (=, +, -, @, a tab or a carriage
    return; OWASP's rule) gets a leading apostrophe, so a file named ``=cmd|...`` is never run."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)  # a negative number is a number, not a formula
            return text
        except ValueError:
            return "'" + text
    return text


def write_summary(out: Path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    atomic_write_bytes(out / "summary.csv", buf.getvalue().encode())
