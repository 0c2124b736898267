"""Results held for re-thresholding and downloads: in memory only, never on disk, bounded, locked."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

import numpy as np

from .common import BadRequest

MAX_RESULTS = 4
MAX_RESULT_BYTES = 512 * 2**20  # held results are bounded in bytes too (the oldest go first)


def _held_bytes(obj) -> int:
    """What a held result keeps alive: its arrays (one level deep, and in lists: a study's slice images), its
    study's volume, and a DICOM study's datasets (their pixel data)."""
    if hasattr(obj, "change") and hasattr(obj, "followup"):  # a follow-up holds its two studies' results
        return _held_bytes(obj.baseline) + _held_bytes(obj.followup) + obj.change.nbytes
    study = getattr(obj, "study", None)
    values = list(vars(obj).values()) + [getattr(study, "volume", None)]
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
            while len(self._items) > 1 and (
                len(self._items) > self.max_results or sum(r[3] for r in self._items.values()) > self.max_bytes
            ):
                self._items.popitem(last=False)
        return rid

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
