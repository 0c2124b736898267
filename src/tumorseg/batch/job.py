"""A batch job: items planned, run here or on Dask, reported; comparisons with a reference."""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..engines.bundled import model_checksum
from ..errors import ImageReadError
from ..model.metrics import compare_masks
from ..studies.reference import own_reference, read_reference_files
from .items import done_study, error_row, process_item, run_record, write_summary
from .plan import Item, PredictOptions, output_conflicts, plan_items


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
        if not items:  # every input refused while planning: nothing to write, so no (empty) --out folder either
            return items, errors, conflicts
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
            from .dask_runner import run_on_dask

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
        if items:  # inputs all refused while planning: the errors are printed, and no folder is made for them
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
