"""Milliseconds per image of ASR-Net (hidden 128, dual inputs, 64 px): memory layout x precision.

ASR-Net is most of a full-budget run's wall time on CPU (100 epochs of training plus the scoring
passes), and nearly all of its work is one 128 -> 128 3x3 convolution at full resolution. This
script times that network as cxrad runs it, in the four combinations of
  layout     nchw  (PyTorch's default layout; cxrad before it switched)
             nhwc  (channels-last, what ASRNet uses now)
  precision  fp32 / bf16 (torch.autocast; on CPU fast only with AMX or AVX512-BF16)
for a training step (batch 8, the refine default: forward, focal loss, backward, Adam) and for
inference (batch 64, as scoring applies it). Inputs are random: the cost of a convolution does
not depend on pixel values. Times exclude two warm-up steps.

    python benchmarks/asr_speed.py [--device auto] [--threads N] [--steps 20] [--size 64] [--note TEXT]

Writes benchmarks/results/asr_speed-<device>-<threads>.json (``--results`` another folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from bench_record import git_commit  # benchmarks/ is the script dir
from torch import nn

from cxrad.devices import device_name, resolve_device
from cxrad.methods.ddad.asr_net import ASRNet, focal_loss
from cxrad.methods.ddad.config import RefineConfig

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_BATCH = RefineConfig().batch_size
INFER_BATCH = 64
WARMUP = 2


def network(layout: str, device: torch.device) -> nn.Module:
    """ASR-Net as cxrad builds it (nhwc), or the same layers in PyTorch's default layout (nchw)."""
    torch.manual_seed(0)
    net = ASRNet(2, RefineConfig().hidden_channels)
    if layout == "nchw":
        net = nn.Sequential(*net.body).to(memory_format=torch.contiguous_format)
    return net.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_per_image(layout: str, bf16: bool, train: bool, size: int, steps: int, device: torch.device) -> float:
    """Mean milliseconds per image over ``steps`` steps after the warm-up."""
    batch = TRAIN_BATCH if train else INFER_BATCH
    net = network(layout, device).train(train)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 2, size, size, device=device)
    mask = (torch.rand(batch, size, size, device=device) > 0.9).long()
    for i in range(WARMUP + steps):
        if i == WARMUP:
            _sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
            logits = net(x)
        if train:
            loss = focal_loss(logits, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps / batch * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per combination")
    ap.add_argument("--size", type=int, default=64, help="map side in pixels")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--note", default="", help="recorded as timing_note (e.g. what else ran on the machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for train in (True, False):
        for bf16 in (False, True):
            for layout in ("nchw", "nhwc"):
                ms = time_per_image(layout, bf16, train, args.size, args.steps, device)
                rows.append({"pass": "train" if train else "inference", "layout": layout,
                             "precision": "bf16" if bf16 else "fp32", "ms_per_image": round(ms, 3)})
                print(f"{rows[-1]['pass']:9s} {layout} {rows[-1]['precision']}: {ms:7.2f} ms/image", flush=True)
    base = {(r["pass"]): r["ms_per_image"] for r in rows if r["layout"] == "nchw" and r["precision"] == "fp32"}
    for r in rows:
        r["speedup_vs_nchw_fp32"] = round(base[r["pass"]] / r["ms_per_image"], 2)
    record = {"benchmark": "asr_speed", "device": device_name(device), "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "size": args.size, "steps": args.steps,
              "train_batch": TRAIN_BATCH, "inference_batch": INFER_BATCH, "torch": torch.__version__,
              "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timing_note": args.note,
              "rows": rows}
    tag = device.type if device.type == "cuda" else f"cpu-{torch.get_num_threads()}-threads"
    out = args.results / f"asr_speed-{tag}.json"
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
