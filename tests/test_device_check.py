"""benchmarks/device_check.sh, the one script a lent GPU runs, in its CPU dry run (sample_data,
one epoch per stage) so that it cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_device_check_dry_run_produces_every_figure(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "CXRAD_CHECK_WORK": str(work), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "device_check.log").read_text() if (out / "device_check.log").is_file() else proc.stderr
    assert proc.returncode == 0, log[-3000:]
    steps = {s["step"]: s for s in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}
    assert steps["zhanglab-full"]["rc"] == 0 and steps["train-speed"]["rc"] == 0
    assert steps["zhanglab-amp"]["rc"] == 0
    if (REPO / "benchmarks" / "simsid_zhanglab.py").is_file():
        assert steps["simsid-full"]["rc"] == 0
    record, amp = (json.loads(line) for line in (out / "zhanglab.jsonl").read_text().splitlines())
    assert record["epochs"] == 1 and record["asr_epochs"] == 1 and record["amp"] is False
    assert amp["amp"] is True and amp["run"].endswith("-amp") and set(amp["auc"]) == set(record["auc"])
    assert len(record["per_epoch_test_auc_analysis_only"]["R_dual"]) == 1   # the per-epoch analysis ran
    assert set(record["auc"]) >= {"A_inter", "R_dual"} and all(0 <= v <= 100 for v in record["auc"].values())
    speed = json.loads(next(out.glob("train_speed-*.json")).read_text())
    assert {r["method"] for r in speed["rows"]} == {"batched", "per-member", "plain"}
    summary = (out / "summary.md").read_text()
    assert "| zhanglab-full | 0 |" in summary and "R_dual" in summary and "mode dry, device cpu" in summary
    assert "bf16 − fp32 AUC (points)" in summary and "ASR-Net" in summary
    # at most 8 files, none deeper than the device tool brings back
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.parent == out for p in files), files
