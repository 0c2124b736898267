"""Planning a batch run: inputs expanded into items, output names, manifests, conflicts."""

from __future__ import annotations

import csv
import glob
from dataclasses import asdict, dataclass
from pathlib import Path

from ..imaging.files import inside, out_touches_input
from ..imaging.images import IMAGE_EXTENSIONS
from ..studies import classify_names, file_format_of, is_study_source, parse_spacing, study_name

IMAGE_OUTPUTS = ("mask", "overlay", "prob", "uncertainty")


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
        from ..inference import Predictor

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


def is_study(p) -> bool:

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


def output_conflicts(items: list[Item], out: Path) -> tuple[str | None, dict[str, str]]:
    """(a reason to refuse the whole run, or None; per item name, why its outputs would touch an input).

    Every output path is checked against every input's resolved path before anything is written.
    """
    out_r = out.resolve()
    inputs = [p.resolve() for it in items for p in it.paths()]
    why = out_touches_input(out, inputs)
    if why:
        return f"{out}: {why}; choose another --out so inputs are never written into or overwritten", {}
    bad: dict[str, str] = {}
    for it in items:
        targets = [out_r / it.name] if it.study else [out_r / f"{it.name}_{k}.png" for k in IMAGE_OUTPUTS]
        for t in targets:
            hit = next((p for p in inputs if inside(p, t) or inside(t, p)), None)
            if hit is not None:
                bad[it.name] = f"output {t} would overwrite or contain the input {hit}"
                break
    return None, bad
