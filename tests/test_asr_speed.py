"""benchmarks/asr_speed.py: it times the network cxrad trains, and its NCHW baseline is the same network."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from asr_speed import network  # noqa: E402


def test_both_layouts_are_the_same_network():
    nchw, nhwc = network("nchw", torch.device("cpu")), network("nhwc", torch.device("cpu"))
    assert nchw[3].weight.is_contiguous() and not nhwc.body[3].weight.is_contiguous()
    x = torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        assert torch.allclose(nchw.eval()(x), nhwc.eval()(x), atol=1e-5, rtol=1e-4)


def test_script_writes_every_combination(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "asr_speed.py"), "--device", "cpu",
                           "--threads", "1", "--steps", "1", "--size", "16", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "asr_speed-cpu-1-threads.json").read_text())
    combos = {(r["pass"], r["layout"], r["precision"]) for r in record["rows"]}
    assert len(combos) == 8 and record["train_batch"] == 8 and record["size"] == 16
    for r in record["rows"]:
        assert r["ms_per_image"] > 0
        if (r["layout"], r["precision"]) == ("nchw", "fp32"):
            assert r["speedup_vs_nchw_fp32"] == 1.0
