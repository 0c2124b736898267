"""Choose the default engine by measuring it on this machine, once, and remember the answer.

Which engine is fastest depends on the CPU in ways flags do not predict (int8 without VNNI was
assumed slow and is in fact 2.9x faster than fp32 on AVX2; bf16 without native support is 7x
slower). So the candidates that passed the model's accuracy check are timed on a fixed input, the
fastest wins, and the result is cached per CPU, thread count, package version and model checksum.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .hardware import CpuInfo, cpu_info, user_cache_dir

RUN_BUDGET_S = 3.0  # timed runs of all candidates together (loading them is counted apart)
WARMUP, RUNS = 1, 3
CLEARLY_SLOWER = 3.0  # a warm-up this many times the best median so far ends that candidate's runs
TIE = 0.05  # within 5 % of a faster one, the more exact engine is preferred
EXACTNESS = ("torch-fp32", "onnx-fp32", "torch-bf16", "onnx-int8")  # most exact first
CACHE_FILE = "engines.json"
CACHE_ENTRIES = 32


@dataclass
class EngineChoice:
    """The engine choice's measurement: what was chosen, each candidate's median time, what was left out and why."""

    engine: str
    timings_ms: dict[str, float]
    excluded: dict[str, str]
    cpu: dict
    threads: int
    measured_at: str
    measure_run_s: float = 0.0  # timed runs only
    measure_load_s: float = 0.0  # loading the candidates
    cached: bool = False

    def line(self) -> str:
        """Why this engine, in one line (``Predictor.info()['engine_line']`` shows it everywhere)."""
        cls = self.cpu.get("flags_class", "?")
        if len(self.timings_ms) <= 1:
            return "the only candidate here" + (f" ({self.excluded_text()})" if self.excluded else "")
        times = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(self.timings_ms.items(), key=lambda kv: kv[1]))
        when = f"cached from {self.measured_at[:10]}" if self.cached else "measured now"
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        return f"fastest on this CPU ({cls}, {threads}; {times}; {when})"

    def excluded_text(self) -> str:
        by_reason: dict[str, list[str]] = {}
        for name, why in self.excluded.items():
            by_reason.setdefault(why, []).append(name)
        return "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())

    def as_dict(self) -> dict:
        return asdict(self)


def measuring_input(size: int) -> np.ndarray:
    """A fixed, MRI-like batch of one (smooth, with a bright blob): timing must not depend on chance."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / max(size - 1, 1)
    base = 60 + 50 * np.sin(6 * yy) * np.cos(5 * xx)
    blob = 120 * (((yy - 0.4) ** 2 + (xx - 0.6) ** 2) < 0.01)
    img = np.clip(base + blob, 0, 255).astype(np.uint8)
    return np.repeat(img[None, :, :, None], 3, axis=3)


def time_engine(run: Callable[[np.ndarray], object], x: np.ndarray, best_ms: float | None, budget_s: float) -> float:
    """Median ms of ``RUNS`` calls after ``WARMUP``; stops early when clearly slower or out of budget."""
    t0 = time.perf_counter()
    for _ in range(WARMUP):
        run(x)
    warm_ms = (time.perf_counter() - t0) * 1e3 / WARMUP
    if best_ms is not None and warm_ms > CLEARLY_SLOWER * best_ms:
        return warm_ms
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - t0 > budget_s:
            break
    return statistics.median(times)


def pick(timings_ms: dict[str, float]) -> str:
    """The fastest; where a more exact engine is within ``TIE`` of it, that one."""
    best = min(timings_ms.values())
    close = [k for k, v in timings_ms.items() if v <= best * (1 + TIE)]
    return min(close, key=lambda k: EXACTNESS.index(k) if k in EXACTNESS else len(EXACTNESS))


def cache_key(model_sha256: str, threads: int, device: str, versions: dict[str, str], cpu: CpuInfo) -> str:
    parts = [cpu.key(), str(threads), device, model_sha256] + [f"{k}={v}" for k, v in sorted(versions.items())]
    return "|".join(parts)


MAX_CACHE_BYTES = 1 << 20  # 32 records are a few kB


def _read_cache(path: Path) -> dict:
    """The cache's records, tolerating any content: only a regular file of at most 1 MB is read (never through
    a symlink, a FIFO or a device: those could hang or never end), and anything that is not a JSON object
    counts as empty (the next measurement rewrites it)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_BYTES:
            return {}
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = json.loads(f.read(MAX_CACHE_BYTES + 1))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        if fd >= 0:
            os.close(fd)


def _cached_choice(rec, candidates: list[str]) -> EngineChoice | None:
    """A cached record as a EngineChoice, or None when it is of any other shape or names other engines."""
    try:
        times = rec["timings_ms"]
        ok = (
            isinstance(rec, dict)
            and rec.get("engine") in candidates
            and isinstance(times, dict)
            and set(times) <= set(candidates)
            and all(isinstance(v, (int, float)) for v in times.values())
            and isinstance(rec.get("excluded", {}), dict)
            and isinstance(rec.get("cpu", {}), dict)
            and isinstance(rec.get("threads"), int)
            and isinstance(rec.get("measured_at"), str)
        )
        if not ok:
            return None
        return EngineChoice(
            **{k: rec[k] for k in EngineChoice.__dataclass_fields__ if k in rec and k != "cached"}, cached=True
        )
    except (KeyError, TypeError, ValueError):
        return None


def _write_cache(path: Path, key: str, record: dict) -> None:
    """Atomic (temp + rename); a cache that cannot be written only costs a measurement next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data.pop(key, None)
        data[key] = record
        while len(data) > CACHE_ENTRIES:
            data.pop(next(iter(data)))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engines-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass


def choose(
    candidates: list[str],
    excluded: dict[str, str],
    load: Callable[[str], object],
    size: int,
    threads: int,
    key_parts: dict,
    *,
    remeasure: bool = False,
    cpu: CpuInfo | None = None,
    timer: Callable[..., float] | None = None,
) -> tuple[EngineChoice, object | None]:
    """Measure ``candidates`` (or take the cached answer); returns the choice and, when it was measured
    now, the winner's loaded engine (so it is not loaded twice).

    ``load(name)`` returns an object with ``run(batch_u8)``; ``timer`` is replaceable for tests.
    """
    if not candidates:
        raise ValueError("no engine can run this model here: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    cpu = cpu or cpu_info()
    timer = timer or time_engine
    key = cache_key(key_parts["model_sha256"], threads, key_parts.get("device", "cpu"), key_parts["versions"], cpu)
    path = user_cache_dir() / CACHE_FILE
    if not remeasure and len(candidates) > 1:
        cached = _cached_choice(_read_cache(path).get(key), candidates)
        if cached is not None:
            return cached, None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if len(candidates) == 1:
        eng = load(candidates[0])
        return EngineChoice(candidates[0], {}, excluded, cpu.as_dict(), threads, now), eng
    x = measuring_input(size)
    timings: dict[str, float] = {}
    leader, leader_eng = None, None  # only the fastest so far stays loaded
    load_s = run_s = 0.0
    for name in candidates:
        t = time.perf_counter()
        try:
            eng = load(name)
        except Exception as exc:  # an engine that cannot load here is simply not a candidate
            excluded[name] = f"failed to load: {type(exc).__name__}: {exc}"[:200]
            continue
        load_s += time.perf_counter() - t
        t = time.perf_counter()
        best = min(timings.values()) if timings else None
        timings[name] = round(timer(eng.run, x, best, max(0.2, RUN_BUDGET_S - run_s)), 2)
        run_s += time.perf_counter() - t
        if pick(timings) == name:
            leader, leader_eng = name, eng
    if not timings:
        raise ValueError("no engine could be loaded: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    winner = pick(timings)
    choice = EngineChoice(winner, timings, excluded, cpu.as_dict(), threads, now, round(run_s, 2), round(load_s, 2))
    _write_cache(path, key, {k: v for k, v in choice.as_dict().items() if k != "cached"})
    return choice, leader_eng if leader == winner else None
