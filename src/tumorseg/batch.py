"""Batch prediction: many inputs, one row each in summary.csv, never writing into or over an input.

``BatchJob`` is the one home of the rules (input expansion, output names, output safety, what a
summary row says, when a study is done); the CLI prints its report, and the Dask runner
(``cluster``) executes the same ``process_item`` on workers, so a distributed run writes exactly
what a local one writes.
"""

from __future__ import annotations

import csv
import glob
import io as _io
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .engines import model_checksum
from .io import IMAGE_EXTENSIONS, ImageReadError, atomic_write_bytes, write_png

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


@dataclass(frozen=True)
class PredictOptions:
    """Everything that decides what a prediction writes (recorded in study.json for --skip-done)."""

    model: str | None = None
    engine: str | None = None
    threads: int = 0
    threshold: float | None = None
    tta: bool = False
    series: str | None = None
    min_component_mm3: float = 0.0
    spacing: tuple[float, float, float] | None = None

    def load_predictor(self, default_threads: int = 0):
        """The Predictor these options describe (``default_threads`` where --threads was not given)."""
        from .inference import Predictor

        return Predictor(
            self.model, engine=self.engine, threads=self.threads or default_threads, threshold=self.threshold
        )

    def settings(self) -> dict:
        """The settings a finished study must match to be skipped (threads and engine choice do not change
        what is judged: every default engine passed the model's accuracy check)."""
        d = asdict(self)
        for k in ("model", "threads", "engine"):
            d.pop(k)
        d["spacing"] = list(self.spacing) if self.spacing else None
        return d


@dataclass(frozen=True)
class Item:
    """One unit of work: an image, a study, or one study from per-sequence files."""

    source: str | tuple[tuple[str, str], ...]  # a path or URL; or ((sequence, path), ...)
    name: str  # output name (a file stem for images, a folder for studies)
    study: bool
    spacing: tuple[float, float, float] | None = None  # a manifest's per-study spacing

    @property
    def label(self) -> str:
        return " + ".join(p for _, p in self.source) if isinstance(self.source, tuple) else self.source

    def paths(self) -> list[Path]:
        src = [p for _, p in self.source] if isinstance(self.source, tuple) else [self.source]
        return [Path(p) for p in src if "://" not in p]


# --------------------------------------------------------------------------- inputs


def is_study(p) -> bool:
    from .studies import is_study_source

    return isinstance(p, dict) or is_study_source(p)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (their images, or the folder itself when it is a study) and globs."""
    found: list[Path] = []
    errors: list[tuple[str, str]] = []
    for raw in inputs:
        # An existing file is itself, even when its name holds glob characters (scan[1].tif).
        literal = Path(raw).exists() or not any(c in raw for c in "*?[")
        matches = [Path(raw)] if literal else [Path(m) for m in sorted(glob.glob(raw))]
        if not matches:
            errors.append((raw, "no file matches this pattern"))
            continue
        for p in matches:
            if not p.exists():
                errors.append((str(p), "file not found"))
            elif p.is_dir() and not is_study(p):
                from .studies import classify_names, file_format_of

                files = [q for q in sorted(p.iterdir()) if q.is_file() and not q.name.startswith(".")]
                studies = [q for q in files if file_format_of(q.name) is not None]
                # one study file, or several that are not one case's sequences (two patients' NIfTIs): each
                # is a study, as the page does
                if classify_names([q.name for q in studies]) not in ("study-file", "studies"):
                    studies = []
                imgs = [
                    q for q in files if q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask")
                ]
                if not imgs and not studies:
                    errors.append((str(p), "folder holds no images or studies"))
                found += studies + imgs
            else:
                found.append(p)
    return found, errors


def output_name(p, used: set[str]) -> str:
    """A safe, unique output name from an input's name: never empty, '.', '..', hidden or a path."""
    from .studies import study_name

    if isinstance(p, dict):  # one study from per-sequence files: named after the case
        name = study_name(p)
    elif Path(str(p)).is_dir():
        name = study_name([], folder=str(p))
    else:
        name = study_name([str(p)])
    name = safe_name(name)
    base, k = name, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def safe_name(name: str) -> str:
    """Letters, digits and -_. ()+ only; never empty, '.', '..' or hidden."""
    return "".join(c if c.isalnum() or c in "-_. ()+" else "_" for c in name).strip().lstrip(".").strip() or "image"


def read_manifest(path: str) -> tuple[list[tuple[str, str | None, tuple | None]], list[tuple[str, str]]]:
    """(source, name or None, spacing or None) per line of a manifest, and its bad lines.

    Text: one path or URL a line ('#' comments). CSV: a header with a 'path' column and optional
    'name' and 'spacing' ("ROW,COL,SLICE", quoted; the CLI's --spacing rule) columns.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the manifest ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out: list[tuple[str, str | None, tuple | None]] = []
    bad: list[tuple[str, str]] = []
    header = [h.strip().lower() for h in next(csv.reader(lines[:1]), [])] if lines else []
    if "path" not in header:
        return [(ln.strip(), None, None) for ln in lines], bad
    for k, row in enumerate(csv.DictReader(lines), start=2):
        row = {(key or "").strip().lower(): (v or "").strip() for key, v in row.items()}
        if not row.get("path"):
            bad.append((f"{path}:{k}", "no path on this line"))
            continue
        spacing = None
        if row.get("spacing"):
            from .studies import parse_spacing

            try:
                spacing = parse_spacing(row["spacing"])
            except ValueError as exc:
                bad.append((f"{path}:{k}", f"spacing {exc}"))
                continue
        out.append((row["path"], safe_name(row["name"]) if row.get("name") else None, spacing))
    return out, bad


def plan_items(
    inputs: list[str], sequences: dict[str, str] | None = None, manifest: str | None = None
) -> tuple[list[Item], list[tuple[str, str]]]:
    """The work, in input order, with unique output names; and the inputs that could not be found."""
    entries: list[tuple[object, str | None, tuple | None]] = []
    files, errors = expand_inputs(inputs)
    entries += [(f, None, None) for f in files]
    if sequences and any(sequences.values()):
        missing = [v for v in sequences.values() if v and not Path(v).exists()]  # NIfTI files or DICOM series
        errors += [(m, "file not found") for m in missing]
        if not missing:
            entries.append(({k: Path(v) for k, v in sequences.items() if v}, None, None))
    if manifest:
        rows, bad = read_manifest(manifest)
        errors += bad
        for src, name, spacing in rows:
            if "://" in src and not src.startswith("file://"):
                entries.append((src, name, spacing))
                continue
            local = src[len("file://") :] if src.startswith("file://") else src
            found, errs = expand_inputs([local])
            errors += errs
            entries += [(f, name if len(found) == 1 else None, spacing) for f in found]
    used: set[str] = set()
    items = []
    for src, name, spacing in entries:
        if name is not None and name not in used:
            used.add(name)
        else:
            name = output_name(src if not isinstance(src, str) else Path(src), used)
        if isinstance(src, dict):
            items.append(Item(tuple((k, str(v)) for k, v in src.items()), name, True, spacing))
        elif isinstance(src, str):  # a URL: studies only (2D images are read from paths)
            items.append(Item(src, name, True, spacing))
        else:
            items.append(Item(str(src), name, is_study(src), spacing))
    return items, errors


# --------------------------------------------------------------------------- output safety


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def output_conflicts(items: list[Item], out: Path) -> tuple[str | None, dict[str, str]]:
    """(a reason to refuse the whole run, or None; per item name, why its outputs would touch an input).

    Every output path is checked against every input's resolved path before anything is written.
    """
    out_r = out.resolve()
    inputs = [p.resolve() for it in items for p in it.paths()]
    for p in inputs:
        if p.is_dir() and _inside(out_r, p):
            return f"{out}: is inside the input {p}; choose another --out so inputs are never written into", {}
        if p.is_file() and out_r == p.parent:
            return f"{out}: is an input folder; choose another --out so inputs are never overwritten", {}
    bad: dict[str, str] = {}
    for it in items:
        targets = [out_r / it.name] if it.study else [out_r / f"{it.name}_{k}.png" for k in _IMAGE_OUTPUTS]
        for t in targets:
            hit = next((p for p in inputs if _inside(p, t) or _inside(t, p)), None)
            if hit is not None:
                bad[it.name] = f"output {t} would overwrite or contain the input {hit}"
                break
    return None, bad


_IMAGE_OUTPUTS = ("mask", "overlay", "prob", "uncertainty")


# --------------------------------------------------------------------------- one item


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
    from .studies import write_study_outputs

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
    from .studies.reference import own_reference

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


# --------------------------------------------------------------------------- the job


@dataclass
class Report:
    rows: list[dict]
    done: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    engine_lines: list[str] = field(default_factory=list)
    comparison: dict | None = None
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.failed and not (self.done or self.skipped):
            return 2
        return 1 if self.failed else 0


class BatchError(ValueError):
    """The whole run cannot start (bad --out, nothing to do); nothing was written."""


@dataclass
class BatchJob:
    """``tumorseg predict`` as an object: plan, check, run locally or on Dask, write summary.csv."""

    inputs: list[str]
    out: Path
    options: PredictOptions = field(default_factory=PredictOptions)
    sequences: dict[str, str] | None = None
    manifest: str | None = None
    reference: str | None = None
    skip_done: bool = False
    dask: str | None = None  # tcp://host:port of a scheduler, or local:N
    progress: bool = True

    def prepare(self) -> tuple[list[Item], list[tuple[str, str]], dict[str, str]]:
        """Plan the items and check the output folder; raises ``BatchError`` before writing anything."""
        items, errors = plan_items(self.inputs, self.sequences, self.manifest)
        if not items and not errors:
            raise BatchError("no inputs (give files, folders, --flair or --manifest)")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise BatchError(f"{out}: exists and is not a folder")
        fatal, conflicts = output_conflicts(items, out)
        if fatal:
            raise BatchError(fatal)
        if self.reference and len(items) != 1:
            raise BatchError("--reference needs exactly one input")
        if self.reference and self.dask:
            raise BatchError("--reference compares one input: run it without --dask")
        if self.reference and self.reference != "auto" and not Path(self.reference).exists():
            raise BatchError(f"--reference {self.reference}: not found")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".tumorseg-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BatchError(f"{out}: cannot write results there ({exc.strerror or exc})") from None
        return items, errors, conflicts

    def run(self) -> Report:
        t0 = time.perf_counter()
        items, errors, conflicts = self.prepare()
        out = Path(self.out)
        rows: list[dict | None] = [None] * len(items)
        record = run_record(self.options, model_checksum(self.options.model))
        todo = []
        for k, it in enumerate(items):
            if it.name in conflicts:
                rows[k] = error_row(it.label, conflicts[it.name])
            elif self.skip_done and it.study and (row := done_study(it, out, record)) is not None:
                rows[k] = row
            else:
                todo.append(k)
        skipped = sum(1 for k, r in enumerate(rows) if r is not None and not r["error"])
        rep = Report(rows=[])
        if todo and self.dask:
            from .cluster import run_on_dask

            results, rep.engine_lines = run_on_dask(
                self.dask, [items[k] for k in todo], out, self.options, record, self.progress
            )
            for k, row in zip(todo, results):
                rows[k] = row
        elif todo:
            self._run_local(items, todo, rows, out, record, rep)
        for it in items:  # what a killed worker left half-written (its task was redone elsewhere)
            for stale in out.glob(f".{glob.escape(it.name)}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
        rep.rows = [r for r in rows if r is not None] + [error_row(src, msg) for src, msg in errors]
        rep.skipped = skipped
        rep.failed = sum(1 for r in rep.rows if r["error"])
        rep.done = len(rep.rows) - rep.failed - skipped
        write_summary(out, rep.rows)
        rep.wall_s = time.perf_counter() - t0
        return rep

    def _run_local(self, items, todo, rows, out, record, rep: Report) -> None:
        from tqdm import tqdm

        o = self.options
        pred = o.load_predictor()
        rep.engine_lines = [pred.engine_line()]
        print(f"tumorseg: {pred.engine_line()}", file=sys.stderr)
        results: list = []
        keep = results.append if self.reference else None
        for k in tqdm(
            todo, desc="segmenting", unit="input", disable=not self.progress or len(todo) < 2, file=sys.stderr
        ):
            try:
                rows[k] = process_item(pred, items[k], out, o, record, keep)
            except KeyboardInterrupt:  # what finished is still reported in summary.csv
                rep.interrupted = True
                return
            if results:
                try:
                    rep.comparison = self._compare(items[k], results.pop())
                except (ImageReadError, ValueError, OSError) as exc:
                    rows[k] = error_row(items[k].label, f"reference: {exc}")

    def _compare(self, item: Item, result) -> dict:
        """Dice, volumes and the most different slices against --reference: a mask file, a slice folder's
        ``_mask`` images, or ``auto`` (the study's own reference beside it, as the page offers it)."""
        from .metrics import compare_masks
        from .studies.reference import own_reference, read_reference_files

        notes: list[str] = []
        src = dict(item.source) if isinstance(item.source, tuple) else item.source
        if self.reference == "auto":
            files = own_reference(src) if item.study or Path(str(src)).exists() else []
            if not files:
                raise ValueError(
                    f"no reference beside {item.label} (a case's _seg NIfTI or a slice folder's _mask images)"
                )
        else:
            p = Path(self.reference)
            files = (
                sorted(q for q in p.iterdir() if q.is_file() and q.stem.lower().endswith("_mask"))
                if p.is_dir()
                else [p]
            )
            if not files:
                raise ValueError(f"{p}: a folder given as the reference must hold <slice>_mask images")
        like = result.study if item.study else result.mask.shape
        ref = read_reference_files(files, like, notes)
        cmp = compare_masks(result.mask, ref, result.study.spacing if item.study else None)
        used = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} _mask images)"
        return {"reference": used, **cmp, "notes": notes}


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


def predict_pacs(a, opts: PredictOptions) -> int:
    """`tumorseg predict --dicomweb URL --study UID [--series UID] [--store]`: one study from the archive,
    the usual study folder in --out, and with --store the DICOM-SEG and the TID 1500 report sent back."""
    import tempfile

    from .inference import DISCLAIMER
    from .pacs import Pacs, PacsConfig, open_study
    from .studies import dicom_seg_dataset, dicom_sr_dataset

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
    with tempfile.TemporaryDirectory(prefix="tumorseg-pacs-") as tmp:
        study = open_study(pacs, a.study, a.series, Path(tmp))
        sp = pred.predict_study(study, tta=opts.tta, min_component_mm3=opts.min_component_mm3)
    name = safe_name(a.study)
    label = study.source
    extra = write_study_atomically(sp, out, name, label, run_record(opts, model_checksum(opts.model)))
    row = study_row(Item(label, name, True), {**sp.summary(), **extra})
    print(f"tumorseg: {'; '.join(study.pacs['chosen'])}", file=sys.stderr)
    if a.store:
        seg = dicom_seg_dataset(sp)
        arrived = pacs.store([seg, dicom_sr_dataset(sp, seg)], a.study)
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
    from .inference import DISCLAIMER

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
    print(
        f"{rep.done} segmented{skipped}, {rep.failed} failed in {rep.wall_s:.1f} s; results in {a.out} ({DISCLAIMER})",
        file=sys.stderr,
    )
    return rep.exit_code
