"""Killed and signalled training resumes to weights bitwise identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cxrad.layout import RunLayout

EPOCHS = 16
ARGS = ["--module", "ndm", "--members", "2", "--epochs", str(EPOCHS), "--batch-size", "8",
        "--checkpoint-every", "2", "--device", "cpu"]
# Same thread count in every process: reductions must be split the same way to be bit-identical.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CXRAD_NO_PROGRESS": "1"}


def _cmd(prepared, run, *extra):
    return [sys.executable, "-m", "cxrad.cli", "train-ensemble", str(prepared), "--run", str(run), *ARGS, *extra]


def _logged_epochs(run):
    try:
        lines = (run / "ensemble" / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x).get("epoch", 0) for x in lines if x.endswith("}")), default=0)


def _start_and_wait(prepared, run, min_epoch):
    proc = subprocess.Popen(_cmd(prepared, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _logged_epochs(run) < min_epoch:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def _weights(run):
    return [torch.load(RunLayout(run).member_weights("ndm", i), weights_only=True) for i in range(2)]


def _assert_bitwise(a_run, b_run):
    for a, b in zip(_weights(a_run), _weights(b_run)):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(prepared_sample32, tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "reference"
    subprocess.run(_cmd(prepared_sample32, run), env=ENV, check=True, capture_output=True)
    return run


def test_kill_9_then_resume_is_bitwise_identical(prepared_sample32, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    proc = _start_and_wait(prepared_sample32, run, min_epoch=5)  # past the checkpoint of epoch 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunLayout(run).member_checkpoint("ndm", 0).exists()
    assert not RunLayout(run).member_weights("ndm", 0).exists(), "finished before the kill; raise EPOCHS"
    # Without --resume an unfinished run is refused, not silently restarted.
    refused = subprocess.run(_cmd(prepared_sample32, run), env=ENV, capture_output=True, text=True)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    done = subprocess.run(_cmd(prepared_sample32, run, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    _assert_bitwise(uninterrupted, run)


def test_sigterm_checkpoints_then_resume_is_bitwise_identical(prepared_sample32, uninterrupted, tmp_path):
    run = tmp_path / "walltime"
    proc = _start_and_wait(prepared_sample32, run, min_epoch=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err.strip().splitlines()[-1]
    ckpt = torch.load(RunLayout(run).member_checkpoint("ndm", 1), weights_only=True)
    assert 1 <= ckpt["epoch"] < EPOCHS
    done = subprocess.run(_cmd(prepared_sample32, run, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_bitwise(uninterrupted, run)
