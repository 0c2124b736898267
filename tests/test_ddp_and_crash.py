"""Multi-process training (torchrun, gloo on CPU) and crash safety (SIGKILL mid-epoch, then --resume)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import free_port, make_kaggle

COMMON = ["--image-size", "64", "--patch-size", "64", "--batch-size", "4", "--threads", "1"]

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd, timeout=300):
    """Run a command in its own process group so a hang never leaves workers behind."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_torchrun_two_cpu_processes_and_resume(tmp_path):
    data = make_kaggle(tmp_path / "d", patients=5, slices=4, size=64, seed=7)
    run = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "tumorseg",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        *COMMON,
        "--samples-per-epoch",
        "16",
    ]
    r = _run([*base, "--epochs", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert row["samples"] == 16  # 2 ranks x 2 steps x batch 4: the epoch is shared, not doubled
    r = _run([*base, "--epochs", "2", "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert _epochs(run) == [1, 2]  # only rank 0 wrote the log
    assert (run / "best.safetensors").is_file()


def test_sigkill_mid_epoch_then_resume(tmp_path):
    data = make_kaggle(tmp_path / "d", patients=5, slices=4, size=64, seed=8)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tumorseg",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        *COMMON,
        "--samples-per-epoch",
        "64",
        "--epochs",
        "4",
        "--patience",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (run / "log.jsonl").is_file() and _epochs(run):
                break
            time.sleep(0.2)
        assert _epochs(run), "first epoch never finished"
        time.sleep(1.0)  # now inside epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = _epochs(run)
    assert done_before and done_before[-1] < 4
    r = _run([*cmd[:-4], "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert _epochs(run) == [1, 2, 3, 4]  # nothing repeated, nothing skipped: at most the killed epoch redone
    assert not list(run.glob(".*.tmp"))  # no half-written files left behind
