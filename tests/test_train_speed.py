"""benchmarks/train_speed.py: a misspelt method is refused before anything is timed (it used to be
timed as the textbook loop), and batched-bf16 is a method of its own."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "train_speed.py"


def test_unknown_method_is_a_one_line_usage_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--methods", "batched,bf16", "--from-prepared", str(tmp_path),
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--methods: unknown bf16; choose from batched, per-member, plain, batched-bf16" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def test_bf16_method_trains_a_batched_epoch(prepared_sample32, tmp_path):
    # 32 px: cheap, and a folder that is not the benchmark's 64 px (the models were built at 64 px
    # whatever --from-prepared held, and the first step failed with a shape error)
    done = subprocess.run([sys.executable, str(SCRIPT), "--methods", "batched,batched-bf16", "--backbones", "ae",
                           "--from-prepared", str(prepared_sample32), "--batch-size", "8", "--threads", "1",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ae   ndm bf16 speed-up = " in done.stdout and "ae   udm bf16 speed-up = " in done.stdout
    (record,) = tmp_path.glob("train_speed-*.json")   # the image size it was timed at is on record
    data = json.loads(record.read_text())
    assert data["meta"]["image_px"] == [32] and {r["image_px"] for r in data["rows"]} == {32}
