"""benchmarks/zhanglab.py stopped by SIGTERM inside the refine (a session's end, SLURM's walltime
warning) leaves a partial record of what the run knows: the ensembles' test AUCs and the ASR epochs
done. Such records used to be assembled by hand from the run folder and the epoch log. And the
commit a record names is the one the run started from (it was read when the record was written,
hours and commits later)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import zhanglab  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CXRAD_NO_PROGRESS": "1"}


FAKE_GIT = """#!/bin/sh
# HEAD moves (a commit lands) once the marker file exists; the code is never dirty
case "$*" in
  *rev-parse*) if [ -e "{marker}" ]; then echo later00; else echo start00; fi ;;
esac
"""


def test_sigterm_in_refine_leaves_a_partial_record_and_no_result(tmp_path):
    work, results, bin_dir, marker = tmp_path / "work", tmp_path / "results", tmp_path / "bin", tmp_path / "moved"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(FAKE_GIT.format(marker=marker))
    (bin_dir / "git").chmod(0o755)
    cmd = [sys.executable, str(REPO / "benchmarks" / "zhanglab.py"), "--source", str(REPO / "sample_data"),
           "--labels", str(REPO / "sample_data" / "labels.csv"), "--size", "32", "--epochs", "1",
           "--asr-epochs", "500", "--batch-size", "16", "--threads", "1", "--refine-inputs", "dual",
           "--log-epoch-auc", "--epoch-auc-every", "2", "--workdir", str(work), "--results", str(results)]
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epoch_log = work / "epoch-logs" / "ae-e1-a500-k3-s0-px32-pct-R_dual.jsonl"
    deadline = time.monotonic() + 300
    while not (epoch_log.is_file() and epoch_log.read_text().endswith("\n")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    marker.touch()                                            # a commit lands while the run trains
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "partial record appended to" in err.strip().splitlines()[-1] and "Traceback" not in err

    assert not (results / "zhanglab.jsonl").exists()          # a stopped run is not a result
    (record,) = map(json.loads, (results / "zhanglab-partial.jsonl").read_text().splitlines())
    done = record["per_epoch_test_auc_analysis_only"]["R_dual"]   # every 2nd epoch was looked at
    assert 1 <= len(done) < 250 and [r["epoch"] for r in done] == list(range(2, 2 * len(done) + 1, 2))
    stopped_after = int(record["status"].split("after ASR epoch ")[1].split()[0])
    assert record["status"].startswith(f"stopped by a signal in refine dual after ASR epoch {stopped_after} of 500")
    assert 2 * len(done) <= stopped_after <= 2 * len(done) + 1 and record["epoch_auc_every"] == 2
    (ckpt,) = (work / "runs").glob("*/refine/dual/checkpoint.ckpt")
    assert torch.load(ckpt, weights_only=False)["epoch"] == stopped_after
    assert set(record["auc"]) == set(record["ap"]) == {"A_rec", "A_intra", "A_inter"}
    assert all(0 <= v <= 100 for v in record["auc"].values())
    assert record["epochs"] == 1 and record["asr_epochs"] == 500 and record["intensity"] == "percentile"
    assert {"prepare", "train-ensemble", "synthesize"} <= set(record["timings_s"])
    assert record["commit"] == "start00"


def test_a_stopped_refine_is_counted_from_its_checkpoint_not_the_last_logged_epoch(tmp_path):
    # with --epoch-auc-every 2 the log held epochs 2 and 4 while the checkpoint held 5: a resumed
    # run stopped before its first epoch ended claimed "after ASR epoch 4"
    from cxrad.artifacts import save_torch_atomic

    ckpt = tmp_path / "checkpoint.ckpt"
    assert zhanglab._checkpoint_epoch(ckpt) == 0                      # a fresh refine stopped early
    save_torch_atomic({"epoch": 5, "step": 40}, ckpt, checksum=True)
    assert zhanglab._checkpoint_epoch(ckpt) == 5
