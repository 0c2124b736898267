"""What this machine's CPU can run natively, read once, without PyTorch.

Speed decisions are measured (``choice``), but two facts must be known before measuring: whether
bf16 is native (emulated bf16 is 7x slower than fp32, so it is never even tried without it) and
which CPU the measurement belongs to (the cache key, and the CPU line of every benchmark record).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Flags that decide which kernels are fast; any change of these measures the engines again.
_KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
_ARM_KEY_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    machine: str  # x86_64, aarch64, arm64, ...
    flags: tuple[str, ...]  # the speed-relevant subset of the CPU's flags

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: AVX-512 BF16 or AMX on x86, the BF16 extension on ARM."""
        return any(f in self.flags for f in ("avx512_bf16", "amx_bf16", "bf16"))

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))

    @property
    def flags_class(self) -> str:
        """A short name for the benchmark tables: 'avx512-vnni-bf16', 'avx2', 'arm64-bf16', ..."""
        f = set(self.flags)
        if self.machine in ("aarch64", "arm64"):
            return "arm64" + ("-i8mm" if "i8mm" in f else "") + ("-bf16" if "bf16" in f else "")
        if "amx_tile" in f:
            return "amx"
        if "avx512f" in f:
            parts = ["avx512"] + (["vnni"] if "avx512_vnni" in f else []) + (["bf16"] if "avx512_bf16" in f else [])
            return "-".join(parts)
        if "avx2" in f:
            return "avx2-vnni" if "avx_vnni" in f else "avx2"
        return self.machine or "unknown"

    def key(self) -> str:
        return hashlib.sha256(f"{self.model}|{self.machine}|{','.join(self.flags)}".encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {**asdict(self), "flags": list(self.flags), "flags_class": self.flags_class}


def _linux_cpu() -> tuple[str, set[str]]:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    model, flags = "", set()
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "hardware", "cpu model") and not model:
            model = v.strip()
        elif k in ("flags", "features") and not flags:
            flags = set(v.split())
    return model, flags


def _mac_cpu() -> tuple[str, set[str]]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = {
        f for f, n in (("bf16", "hw.optional.arm.FEAT_BF16"), ("i8mm", "hw.optional.arm.FEAT_I8MM")) if sysctl(n) == "1"
    }
    if platform.machine() == "arm64":
        flags |= {"asimd", "asimddp"}
    return sysctl("machdep.cpu.brand_string"), flags


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU; unknown platforms give their name and no flags (so nothing 'native' is assumed)."""
    model, flags = "", set()
    try:
        if sys.platform.startswith("linux"):
            model, flags = _linux_cpu()
        elif sys.platform == "darwin":
            model, flags = _mac_cpu()
    except OSError:
        pass
    machine = platform.machine().lower()
    keep = _ARM_KEY_FLAGS if machine in ("aarch64", "arm64") else _KEY_FLAGS
    return CpuInfo(
        model=model or platform.processor() or "unknown CPU",
        machine=machine,
        flags=tuple(sorted(f for f in flags if f in keep)),
    )


def user_cache_dir() -> Path:
    """Where the engine choice's result lives: $TUMORSEG_CACHE_DIR, else the platform's user cache folder."""
    if os.environ.get("TUMORSEG_CACHE_DIR"):
        return Path(os.environ["TUMORSEG_CACHE_DIR"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tumorseg"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "tumorseg" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tumorseg"


def machine_record(threads: int) -> dict:
    """What every benchmark result records about the machine it ran on (one CPU class per README block)."""
    cpu = cpu_info()
    return {
        "cpu": cpu.model,
        "cpu_class": cpu.flags_class,
        "cpu_flags": list(cpu.flags),
        "machine": cpu.machine,
        "cores": os.cpu_count(),
        "threads": threads,
        "summary": f"{cpu.model} ({cpu.flags_class}), {os.cpu_count()} cores, {threads} threads",
    }
