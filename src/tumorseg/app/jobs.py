"""Long studies as polled jobs: progress (slices done of total, elapsed, an estimate), cancel, result.

The page starts a study with ``POST /api/jobs/study`` (the fields of ``POST /api/study``), polls
``GET /api/jobs/{id}`` for a progress bar and gets the same answer ``/api/study`` gives when it is done;
``DELETE /api/jobs/{id}`` cancels it between batches. Jobs live in memory only, a few at a time.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .common import BadRequest, failure

log = logging.getLogger("tumorseg.app")

MAX_JOBS_KEPT = 8  # finished jobs are forgotten oldest first
MAX_RUNNING = 2  # a laptop has few cores; more studies at once only make each slower
MAX_ANSWER_BYTES = 256 * 2**20  # finished jobs' answers together (a 155-slice study's is ~70 MB)


class Cancelled(Exception):
    """Raised inside the prediction, between batches, when the user cancelled."""


@dataclass
class Job:
    id: str
    name: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch: float | None = None
    last_batch: float | None = None
    answer: bytes | None = None  # the finished job's answer, serialised once (polls send these bytes)
    error: str = ""
    status: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    slots: object = None  # the app's ModelSlots (guard.py); None: no limit (a JobStore without slots)

    def progress(self, done: int, total: int) -> None:
        """The Predictor's ``on_progress`` callback: record, and stop here if cancelled."""
        if self.cancel.is_set():
            raise Cancelled()
        now = time.monotonic()
        if self.first_batch is None:
            self.first_batch = now
        self.last_batch = now
        self.done, self.total, self.state = done, total, "running"

    def model_slot(self):
        """Hold one of the app's model slots for the model work (queued until one is free; a cancel gives up):
        a job counts against the same slots as requests, and its network or file reading holds none."""
        return _slot(self.slots, cancelled=self.cancel.is_set)

    def response(self):
        """The job's view as an HTTP answer; a finished job's answer goes out as the bytes serialised when it
        finished (a poll never re-serialises a study's slices)."""
        from starlette.responses import Response

        view = self.view() if self.answer is None or self.state != "done" else {**self._progress(), "result": None}
        body = json.dumps(view).encode()
        if self.state == "done" and self.answer is not None:
            body = body[: body.rindex(b"null")] + self.answer + b"}"
        return Response(body, media_type="application/json")

    def view(self) -> dict:
        return self._progress() | ({"result": json.loads(self.answer)} if self.state == "done" and self.answer else {})

    def _progress(self) -> dict:
        elapsed = time.monotonic() - self.started
        eta = None
        if self.state == "running" and self.last_batch is not None and 0 < self.done < self.total:
            # the rate at the last batch, counted down since: the estimate never grows while a batch runs
            rate = self.done / max(1e-6, self.last_batch - self.started)
            eta = round(max(0.0, (self.total - self.done) / rate - (time.monotonic() - self.last_batch)), 1)
        out = {
            "job_id": self.id,
            "name": self.name,
            "state": "cancelling" if self.state == "running" and self.cancel.is_set() else self.state,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": eta,
        }
        if self.state == "failed":
            out["error"], out["status"] = self.error, self.status
        return out


def _slot(slots, **kw):
    from contextlib import nullcontext

    return nullcontext() if slots is None else slots.hold(**kw)


class JobStore:
    def __init__(self, slots=None) -> None:
        self.slots = slots
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def model_slot(self, timeout: float = 3600.0):
        """A model slot for work outside a job (a synchronous endpoint that took none at the guard)."""
        return _slot(self.slots, timeout=timeout)

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))

    def start(self, name: str, work, respond) -> Job:
        """Run ``work(job)`` in a thread of its own (it outlives the request that started it);
        ``respond(result)`` turns its result into the job's answer."""
        if self.running() >= MAX_RUNNING:
            raise BadRequest(429, f"{MAX_RUNNING} studies are being segmented already; wait for one to finish")
        job = Job(secrets.token_urlsafe(12), name, slots=self.slots)
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed", "cancelled")]
            for k in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
                del self._jobs[k]

        def run() -> None:
            try:
                job.answer = json.dumps(respond(work(job))).encode()
                job.state = "done"
                self._trim()
            except Cancelled:
                job.state = "cancelled"
            except Exception as exc:  # what the synchronous endpoint would answer, never a traceback
                job.status, job.error = failure(exc)
                if job.status == 500:
                    log.error("job %s: unexpected error: %s", job.id[:6], type(exc).__name__)
                job.state = "failed"

        threading.Thread(target=run, name=f"tumorseg-job-{job.id[:6]}", daemon=True).start()
        return job

    def _trim(self) -> None:
        """Finished answers count against MAX_ANSWER_BYTES together (the newest is always kept), the oldest
        forgotten first, as held results are."""
        with self._lock:
            done = [(k, j) for k, j in self._jobs.items() if j.answer is not None]
            total = sum(len(j.answer) for _, j in done)
            for k, j in done[:-1]:
                if total <= MAX_ANSWER_BYTES:
                    break
                total -= len(j.answer)
                del self._jobs[k]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise BadRequest(404, "no such job (finished jobs are kept for a while only)")
        return job
