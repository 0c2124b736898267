"""Results held for re-thresholding and downloads: in memory only, never on disk, bounded, locked."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

import numpy as np

from .common import BadRequest

MAX_RESULTS = 4
MAX_RESULT_BYTES = 512 * 2**20  # held results are bounded in bytes too (the oldest go first)
TRIM_FROM_BYTES = 32 * 2**20  # after holding a result this large (a study, a follow-up), freed memory goes back
GIVE_BACK = True  # benchmarks/app_memory.py measures with and without


def give_back_freed_memory() -> None:
    """Hand the pages of freed arrays back to the system (glibc's malloc_trim; nothing elsewhere). Without it the
    allocator keeps what a study's work freed, in every job thread's arena, and the app's memory grows study after
    study beyond what it holds (measured: benchmarks/app_memory.py, docs/safety.md)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _held_bytes(obj) -> int:
    """What a held result keeps alive: its arrays (one level deep, and in lists: a study's slice images), its
    study's arrays (the volume, the affine), and a DICOM study's datasets (their pixel data). A follow-up: both
    time points and the change map (tests/test_followup_hardening.py walks the objects to check the count)."""
    if hasattr(obj, "change") and hasattr(obj, "followup"):  # a follow-up holds its two studies' results
        return _held_bytes(obj.baseline) + _held_bytes(obj.followup) + obj.change.nbytes
    study = getattr(obj, "study", None)
    values = list(vars(obj).values()) + (list(vars(study).values()) if study is not None else [])
    values += [x for v in list(values) if isinstance(v, (list, tuple)) for x in v]
    seen, total = set(), 0
    for v in values:
        if not isinstance(v, np.ndarray):
            continue
        while isinstance(v.base, np.ndarray):  # a view (a study's slice of its volume) counts as its array
            v = v.base
        if id(v) not in seen:
            seen.add(id(v))
            total += v.nbytes
    for ds in getattr(study, "dicom", None) or []:
        total += len(getattr(ds, "PixelData", b"") or b"")
    return total


class ResultStore:
    """The last ``MAX_RESULTS`` results, at most ``MAX_RESULT_BYTES`` together (the newest is always kept),
    each under an unguessable id; safe to use from the event loop and the thread pool at once."""

    def __init__(self, pred, max_results: int | None = None, max_bytes: int | None = None):
        self.pred = pred
        self.max_results = MAX_RESULTS if max_results is None else max_results
        self.max_bytes = MAX_RESULT_BYTES if max_bytes is None else max_bytes
        self._items: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, kind: str, obj, name: str) -> str:
        rid = secrets.token_urlsafe(12)
        with self._lock:
            self._items[rid] = (kind, obj, name, _held_bytes(obj))
            evicted = []
            while len(self._items) > 1 and (
                len(self._items) > self.max_results or sum(r[3] for r in self._items.values()) > self.max_bytes
            ):
                evicted.append(self._items.popitem(last=False))
            large = self._items[rid][3] >= TRIM_FROM_BYTES
        del evicted  # freed here, outside the lock's bookkeeping
        if GIVE_BACK and large:
            give_back_freed_memory()
        return rid

    def held_bytes(self) -> int:
        """The bytes the held results keep alive, as counted against ``max_bytes``."""
        with self._lock:
            return sum(r[3] for r in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, rid: str, threshold: float | None, kinds: tuple[str, ...] = ("image", "study")):
        """(kind, the result at ``threshold`` through the Predictor's post-processing, name); a result of another
        kind than the endpoint takes (``kinds``) is the request's fault (400), never a server error."""
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise BadRequest(422, f"threshold must be between 0 and 1, got {threshold}")
        with self._lock:
            held = self._items.get(rid)
        if held is None:
            raise BadRequest(
                404,
                f"result {rid!r} is not held here (the server keeps the last {self.max_results} results, "
                f"{self.max_bytes >> 20} MB at most, in memory only); open the file again",
            )
        kind, obj, name, _ = held
        if kind not in kinds:
            raise BadRequest(400, f"{name}: a {kind} result; this endpoint takes {' or '.join(kinds)} results")
        if kind == "followup":  # shown as computed (its threshold is the one the comparison used)
            return kind, obj, name
        if kind == "image":
            return kind, self.pred.rethreshold(obj, threshold), name
        return kind, self.pred.finish_study(obj.study, obj.images, obj.prob, obj.uncertainty, threshold), name
