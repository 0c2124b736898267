"""Choosing the default engine by measuring: selection, native-bf16 rule, cache invalidation, int8 everywhere."""

from __future__ import annotations

import pytest

from tumorseg.engines import choice as engine_choice
from tumorseg.engines import hardware, loading
from tumorseg.engines.hardware import CpuInfo

AVX2 = CpuInfo("AMD EPYC 7B13 (Zen 3)", "x86_64", ("avx2", "fma"))
VNNI_BF16 = CpuInfo("AMD EPYC 9B14 (Zen 4)", "x86_64", ("avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"))
KEY = {"model_sha256": "m1", "device": "cpu", "versions": {"tumorseg": "1"}}


class FakeEngine:
    def __init__(self, name):
        self.name = name

    def run(self, x):
        return x


def fake(times_ms: dict[str, float]):
    """A loader that records what it loaded, and a timer that returns the given times."""
    loaded = []

    def load(name):
        loaded.append(name)
        return FakeEngine(name)

    def timer(run, x, best, budget):
        return times_ms[run.__self__.name]

    return load, timer, loaded


def choose(times, cpu=VNNI_BF16, key=KEY, **kw):
    load, timer, loaded = fake(times)
    c, eng = engine_choice.choose(list(times), {}, load, 64, 2, key, cpu=cpu, timer=timer, **kw)
    return c, eng, loaded


def test_fastest_wins_and_its_loaded_engine_is_returned():
    c, eng, _ = choose({"onnx-int8": 30.0, "torch-fp32": 150.0, "onnx-fp32": 90.0})
    assert c.engine == "onnx-int8" and eng.name == "onnx-int8" and not c.cached
    assert "onnx-int8 30 ms" in c.line() and "measured now" in c.line()


def test_never_slower_than_fp32():
    c, _, _ = choose({"onnx-int8": 300.0, "torch-fp32": 150.0, "onnx-fp32": 160.0}, key={**KEY, "model_sha256": "s"})
    assert c.engine == "torch-fp32"


def test_a_near_tie_goes_to_the_more_exact_engine():
    assert engine_choice.pick({"onnx-int8": 100.0, "onnx-fp32": 103.0}) == "onnx-fp32"
    assert engine_choice.pick({"onnx-int8": 100.0, "onnx-fp32": 110.0}) == "onnx-int8"


def test_cache_is_used_and_invalidated_by_model_version_threads_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE_DIR", str(tmp_path))
    times = {"onnx-int8": 30.0, "torch-fp32": 150.0}
    c1, _, loaded1 = choose(times)
    assert loaded1 and (tmp_path / engine_choice.CACHE_FILE).is_file()
    c2, eng2, loaded2 = choose(times)
    assert c2.cached and eng2 is None and loaded2 == [] and c2.engine == c1.engine
    assert "cached from" in c2.line()
    for key, cpu in (
        ({**KEY, "model_sha256": "m2"}, VNNI_BF16),  # another model (or the same name, new weights)
        ({**KEY, "versions": {"tumorseg": "2"}}, VNNI_BF16),  # another package version
        (KEY, AVX2),  # another CPU
    ):
        c, _, loaded = choose(times, cpu=cpu, key=key)
        assert not c.cached and loaded, (key, cpu)
    load, timer, loaded = fake(times)
    c, _ = engine_choice.choose(list(times), {}, load, 64, 1, KEY, cpu=VNNI_BF16, timer=timer)  # other thread count
    assert not c.cached
    c, _, loaded = choose(times, remeasure=True)
    assert not c.cached and loaded


def test_unwritable_cache_only_costs_a_measurement(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TUMORSEG_CACHE_DIR", str(blocker / "sub"))
    c, _, _ = choose({"onnx-int8": 30.0, "torch-fp32": 150.0})
    assert c.engine == "onnx-int8"


def test_an_engine_that_fails_to_load_is_left_out():
    def load(name):
        if name == "onnx-fp32":
            raise RuntimeError("broken")
        return FakeEngine(name)

    c, _ = engine_choice.choose(
        ["onnx-fp32", "torch-fp32"], {}, load, 64, 2, {**KEY, "model_sha256": "f"}, cpu=AVX2, timer=lambda *a: 10.0
    )
    assert c.engine == "torch-fp32" and "broken" in c.excluded["onnx-fp32"]


def test_timer_stops_a_clearly_slower_engine_after_its_warmup():
    calls = []

    def run(x):
        calls.append(1)
        import time

        time.sleep(0.05)

    ms = engine_choice.time_engine(run, engine_choice.measuring_input(16), best_ms=1.0, budget_s=3.0)
    assert len(calls) == engine_choice.WARMUP and ms >= 40


@pytest.mark.train
def test_bf16_is_never_a_candidate_without_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2)
    cands, excluded = loading.candidates(None, "cpu")
    assert "torch-bf16" not in cands and "native bf16" in excluded["torch-bf16"]
    assert {"onnx-int8", "torch-fp32", "onnx-fp32"} <= set(cands)  # int8 runs wherever onnxruntime does
    monkeypatch.setattr(hardware, "cpu_info", lambda: VNNI_BF16)
    cands, _ = loading.candidates(None, "cpu")
    assert "torch-bf16" in cands


def test_flags_classes():
    assert AVX2.flags_class == "avx2" and not AVX2.native_bf16 and not AVX2.has_vnni
    assert VNNI_BF16.flags_class == "avx512-vnni-bf16" and VNNI_BF16.native_bf16
    assert CpuInfo("Neoverse", "aarch64", ("asimd", "bf16", "i8mm")).flags_class == "arm64-i8mm-bf16"
    me = hardware.cpu_info()
    assert me.machine and me.key() == hardware.cpu_info().key()


@pytest.mark.slow
def test_int8_on_a_cpu_without_vnni(monkeypatch):
    """The bundled int8 file is used on any CPU: asked for, and chosen when it measures fastest."""
    import numpy as np

    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2)
    eng = loading.load_engine(None, "onnx-int8", threads=1)
    assert eng.name == "onnx-int8" and eng.reason == "asked for"
    assert eng.run(engine_choice.measuring_input(eng.size)).shape == (1, eng.size, eng.size)
    times = {"onnx-int8": 98.0, "onnx-fp32": 150.0, "torch-fp32": 281.0}  # the AVX2 measurements
    monkeypatch.setattr(engine_choice, "time_engine", lambda run, x, best, budget: times[run.__self__.name])
    eng = loading.load_engine(None, threads=1, remeasure=True)
    assert eng.name == "onnx-int8" and "avx2" in eng.reason and "torch-bf16" in eng.choice.excluded
    assert np.isfinite(eng.run(engine_choice.measuring_input(eng.size))).all()


def test_int8_for_a_model_without_an_int8_file_says_what_to_do(tmp_path):
    from .conftest import save_tiny_model

    m = save_tiny_model(tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="int8-calibration"):
        loading.load_engine(m, "onnx-int8", threads=1)
    cands, excluded = loading.candidates(m, "cpu")
    assert "onnx-int8" not in cands and "int8-calibration" in excluded["onnx-int8"]


@pytest.mark.train
def test_training_precision_follows_native_bf16():
    import torch

    from tumorseg.train.device import precision_plan

    cpu = torch.device("cpu")
    assert precision_plan(cpu, True, native_bf16=False)[:2] == (None, torch.channels_last)
    assert precision_plan(cpu, True, native_bf16=True)[:2] == (torch.bfloat16, torch.channels_last)
    assert precision_plan(cpu, False, native_bf16=True)[0] is None
