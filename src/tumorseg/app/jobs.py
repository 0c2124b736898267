"""Long studies as polled jobs: progress (slices done of total, elapsed, an estimate), cancel, result.

The page starts a study with ``POST /api/jobs/study`` (the fields of ``POST /api/study``), polls
``GET /api/jobs/{id}`` for a progress bar and gets the same answer ``/api/study`` gives when it is done;
``DELETE /api/jobs/{id}`` cancels it between batches. Jobs live in memory only, a few at a time.
"""

from __future__ import annotations

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
    result: dict | None = None
    error: str = ""
    status: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, done: int, total: int) -> None:
        """The Predictor's ``on_progress`` callback: record, and stop here if cancelled."""
        if self.cancel.is_set():
            raise Cancelled()
        if self.first_batch is None:
            self.first_batch = time.monotonic()
        self.done, self.total, self.state = done, total, "running"

    def view(self) -> dict:
        elapsed = time.monotonic() - self.started
        eta = None
        if self.state == "running" and self.first_batch is not None and 0 < self.done < self.total:
            rate = self.done / max(1e-6, time.monotonic() - self.started)
            eta = round((self.total - self.done) / rate, 1)
        out = {
            "job_id": self.id,
            "name": self.name,
            "state": "cancelling" if self.state == "running" and self.cancel.is_set() else self.state,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": eta,
        }
        if self.state == "done":
            out["result"] = self.result
        if self.state == "failed":
            out["error"], out["status"] = self.error, self.status
        return out


class JobStore:
    def __init__(self) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))

    def start(self, name: str, work, respond) -> Job:
        """Run ``work(job)`` in a thread of its own (it outlives the request that started it);
        ``respond(result)`` turns its result into the job's answer."""
        if self.running() >= MAX_RUNNING:
            raise BadRequest(429, f"{MAX_RUNNING} studies are being segmented already; wait for one to finish")
        job = Job(secrets.token_urlsafe(12), name)
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed", "cancelled")]
            for k in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
                del self._jobs[k]

        def run() -> None:
            try:
                job.result = respond(work(job))
                job.state = "done"
            except Cancelled:
                job.state = "cancelled"
            except Exception as exc:  # what the synchronous endpoint would answer, never a traceback
                job.status, job.error = failure(exc)
                if job.status == 500:
                    log.error("job %s: unexpected error: %s", job.id[:6], type(exc).__name__)
                job.state = "failed"

        threading.Thread(target=run, name=f"tumorseg-job-{job.id[:6]}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise BadRequest(404, "no such job (finished jobs are kept for a while only)")
        return job
