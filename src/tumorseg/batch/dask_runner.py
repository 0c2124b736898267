"""`tumorseg predict --dask`: the batch's items as Dask tasks, one per study (or image).

Why Dask: inference here is numpy + onnxruntime, the users are scientific-Python groups that
already run Dask on laptops, SSH hosts, SLURM/PBS (dask-jobqueue) and Kubernetes, and its
scheduler already does what an archive run needs: it reschedules the tasks of a worker that dies,
spreads work by load, and reports per task. Ray would also do but brings its own object store and
cluster manager for no gain on this workload.

Each worker loads the Predictor once (a worker plugin, loaded at its first task) and runs the same
``batch.process_item`` a local run uses, writing into ``--out`` itself (a folder every worker sees).
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

from distributed import WorkerPlugin

from .items import error_row, process_item
from .plan import Item, PredictOptions

PLUGIN = "tumorseg-predictor"


class PredictorPlugin(WorkerPlugin):
    """Holds one Predictor per worker process, loaded at its first task (a bad model fails the tasks with
    a clear error, not the worker's start)."""

    def __init__(self, options: PredictOptions):
        self.options = options
        self._pred = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"options": self.options}

    def __setstate__(self, state):
        self.__init__(state["options"])

    def predictor(self):
        with self._lock:
            if self._pred is None:
                self._pred = self.options.load_predictor(default_threads=1)  # one single-threaded worker a core
            return self._pred


def _task(item: Item, out: str, options: PredictOptions, record: dict, plugin: str) -> tuple[dict, str]:
    from distributed import get_worker

    pred = get_worker().plugins[plugin].predictor()
    return process_item(pred, item, Path(out), options, record), pred.engine_line()


def connect(address: str):
    """A Client for ``tcp://host:port`` (an existing scheduler) or ``local:N`` (N single-threaded workers here)."""
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
            assert 1 <= n <= 256
        except (ValueError, AssertionError):
            raise ValueError(f"--dask {address}: expected local:N with N workers, 1..256") from None
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
        return Client(cluster), cluster
    try:
        return Client(address, timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"--dask {address}: cannot reach the Dask scheduler ({type(exc).__name__}: {exc})") from None


def run_on_dask(
    address: str,
    items: list[Item],
    out: Path,
    options: PredictOptions,
    record: dict,
    progress: bool = True,
) -> tuple[list[dict], list[str]]:
    """Rows in ``items`` order, and each distinct worker engine line."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from tqdm import tqdm

    client, cluster = connect(address)
    try:
        name = f"{PLUGIN}-{uuid.uuid4().hex[:8]}"
        client.register_plugin(PredictorPlugin(options), name=name)
        run = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                _task,
                it,
                str(Path(out).resolve()),
                options,
                record,
                name,
                key=f"tumorseg-{run}-{k}",
                pure=False,
            ): k
            for k, it in enumerate(items)
        }
        rows: list[dict | None] = [None] * len(items)
        engines: set[str] = set()
        bar = tqdm(total=len(items), desc="segmenting", unit="study", disable=not progress, file=sys.stderr)
        for fut in as_completed(futures):
            k = futures[fut]
            try:
                rows[k], line = fut.result()
                engines.add(line)
            except KilledWorker:
                rows[k] = error_row(items[k].label, "its worker died every time it was tried (out of memory?)")
            except Exception as exc:  # a task-level failure outside process_item (e.g. the model did not load)
                rows[k] = error_row(items[k].label, f"failed on a Dask worker ({type(exc).__name__}: {exc})")
            bar.update(1)
        bar.close()
        return [r for r in rows if r is not None], sorted(engines)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
