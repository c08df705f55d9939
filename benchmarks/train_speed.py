"""Seconds per epoch of NDM/UDM ensemble training (K = 3, AE and AE-U) on ZhangLab-OCSSL-64.

Three ways to train the same K networks for one epoch each:
  batched    cxrad: one batched model of K members, data on the device, index batches
  per-member cxrad: the same trainer with K = 1, members one after another (`--member i`)
  batched-bf16  (only when asked: --methods batched,batched-bf16) the batched model under bf16
             autocast (`--amp`), on a GPU or a CPU with AMX / AVX512-BF16
  plain      a textbook loop: torch DataLoader over a Dataset of per-image tensors (default
             collate, shuffle, batch 64, drop_last), nn.Module AE, torch.optim.Adam defaults
             (betas as the reference), one model after another

Every (method, backbone) runs in a fresh subprocess so peak memory (max RSS on CPU,
max_memory_allocated on CUDA) belongs to that method alone. Times exclude a short warm-up.

    CXRAD_DATA=/path/to/data python benchmarks/train_speed.py [--device auto] [--epochs 1] [--threads N]
        [--full-epochs 250 [--amp]]

Reads the Kermany 224-px tar from $CXRAD_DATA (or ``--data``; benchmarks/bench_data.py) and the split
benchmarks/splits/zhanglab-ocssl.csv; the prepared set is cached in cxrad-work/ (git-ignored).
Writes benchmarks/results/train_speed-<device>.json and .md (``--results`` another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, data_file  # benchmarks/ is the script dir

SPLIT_CSV = SPLITS / "zhanglab-ocssl.csv"
CACHE = REPO / "cxrad-work" / "benchmarks" / "zhanglab-ocssl-64"  # git-ignored
K = 3
BATCH = 64
DEFAULT_METHODS = ("batched", "per-member", "plain")
METHODS = (*DEFAULT_METHODS, "batched-bf16")   # batched-bf16 only when asked
WARMUP_STEPS = 3


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def prepared_split(data: Path | None = None) -> tuple[Path, str]:
    """The ZhangLab-OCSSL-64 prepared artifact (cached) and how it was made; ``data``: a --data root."""
    from cxrad.artifacts import is_valid

    if is_valid(CACHE, "prepared"):
        return CACHE, json.loads((CACHE / "how.json").read_text())["how"]
    from cxrad.config import PrepareConfig
    from cxrad.stages.prepare import prepare

    prepare(data_file(KERMANY_224, data), CACHE, PrepareConfig(size=64, val_normals=0), labels=SPLIT_CSV, force=True)
    how = "cxrad.stages.prepare (tar + zhanglab-ocssl.csv)"
    (CACHE / "how.json").write_text(json.dumps({"how": how}))
    return CACHE, how


def module_images(prepared: Path):
    import numpy as np

    from cxrad.io.store import load_split

    normal = load_split(prepared, "normal").images
    return {"ndm": normal, "udm": np.concatenate([normal, load_split(prepared, "unlabeled").images])}


# ---------------------------------------------------------------------------------------------
# one measurement (runs in a child process)
# ---------------------------------------------------------------------------------------------
def _peak_reset(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_cxrad(images, backbone: str, members_per_model: int, epochs: int, device, amp: bool = False) -> float:
    """Seconds per epoch for K members, trained ``members_per_model`` at a time."""
    import torch

    from cxrad.methods.ddad import losses
    from cxrad.methods.ddad.config import EnsembleConfig
    from cxrad.methods.ddad.trainer import GroupTrainer

    data = torch.from_numpy(images).to(device) * 2 - 1
    cfg = EnsembleConfig()   # the stage's own defaults, so the timing follows them
    # the prepared folder's own image size (64 px for the benchmark, other sizes with --from-prepared)
    arch = dict(size=int(images.shape[-1]), latent_dim=cfg.latent_dim, memory_items=cfg.memory_items,
                shrink_threshold=cfg.shrink_threshold)
    loss_fn = losses.for_backbone(backbone)
    total = 0.0
    for first in range(0, K, members_per_model):
        seeds = list(range(first, first + members_per_model))
        trainer = GroupTrainer(backbone, seeds, arch, cfg.lr, cfg.betas, cfg.weight_decay, device, amp=amp)
        trainer.run_epoch(data[: WARMUP_STEPS * BATCH], BATCH, loss_fn)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(epochs):
            trainer.run_epoch(data, BATCH, loss_fn)
        _sync(device)
        total += (time.perf_counter() - t0) / epochs
    return total


def measure_plain(images, backbone: str, epochs: int, device) -> float:
    """The textbook loop, one model after another."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from cxrad.methods.ddad.autoencoders import build_member
    from cxrad.methods.ddad.config import EnsembleConfig

    cfg = EnsembleConfig()

    class Images(Dataset):
        def __init__(self, arr):
            self.items = [torch.from_numpy(a).unsqueeze(0) for a in arr]  # per-image (1, H, W)

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i] * 2 - 1

    loader = DataLoader(Images(images), batch_size=BATCH, shuffle=True, drop_last=True)
    total = 0.0
    for seed in range(K):
        torch.manual_seed(seed)
        model = build_member(backbone, int(images.shape[-1]), cfg.latent_dim, cfg.memory_items,
                             cfg.shrink_threshold).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)

        def epoch(limit=None):
            for step, x in enumerate(loader):
                if limit is not None and step >= limit:
                    break
                x = x.to(device)
                out = model(x)
                if backbone == "aeu":
                    mean, logvar = out
                    loss = (torch.exp(-logvar) * (mean - x) ** 2).mean() + logvar.mean()
                else:
                    loss = ((out - x) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # typical per-step logging

        epoch(limit=WARMUP_STEPS)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(epochs):
            epoch()
        _sync(device)
        total += (time.perf_counter() - t0) / epochs
    return total


def time_full_stage(prepared: Path, args) -> dict:
    """Wall time of `cxrad train-ensemble` itself (data loading, checkpoints, manifests included)."""
    import tempfile

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from cxrad.methods.ddad.config import EnsembleConfig
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    cfg = EnsembleConfig(epochs=args.full_epochs, device=args.device, amp=args.amp)
    with tempfile.TemporaryDirectory(dir=REPO / "cxrad-work") as tmp:
        t0 = time.perf_counter()
        train_ensemble(prepared, Path(tmp) / "run", cfg)
        wall = time.perf_counter() - t0
    return {"epochs": args.full_epochs, "members": K, "backbone": "ae", "amp": args.amp, "wall_s": round(wall, 2)}


def child(args) -> None:
    import torch

    from cxrad.devices import device_name, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    images = module_images(Path(args.prepared))
    result = {}
    for module in ("ndm", "udm"):
        _peak_reset(device)
        if args.method in ("batched", "batched-bf16"):
            s = measure_cxrad(images[module], args.backbone, K, args.epochs, device, amp=args.method != "batched")
        elif args.method == "per-member":
            s = measure_cxrad(images[module], args.backbone, 1, args.epochs, device)
        else:
            s = measure_plain(images[module], args.backbone, args.epochs, device)
        used = (len(images[module]) // BATCH) * BATCH
        result[module] = {"s_per_epoch": s, "images_per_s": K * used / s, "peak_mb": _peak_mb(device),
                          "images": len(images[module]), "image_px": int(images[module].shape[-1])}
    result["device"] = device_name(device)
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=1, help="measured epochs per model (after a short warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast in the --full-epochs run (CUDA only)")
    ap.add_argument("--backbones", default="ae,aeu")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--full-epochs", type=int, default=0,
                    help="also time the real stage end to end: NDM + UDM, K=3, AE, this many epochs "
                         "(GPU acceptance: 250)")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--from-prepared", type=Path, help="time on this prepared folder instead of ZhangLab-OCSSL-64 "
                                                       "(benchmarks/device_check.sh --dry-run: sample_data)")
    ap.add_argument("--batch-size", type=int, default=BATCH, help="default: %(default)s (the paper's)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the .json/.md [default: %(default)s]")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    BATCH = args.batch_size
    if args.method:
        return child(args)

    unknown = set(args.methods.split(",")) - {*METHODS, ""}
    if unknown:
        ap.error(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    if args.from_prepared:
        prepared, how = args.from_prepared, f"prepared folder {args.from_prepared}"
    else:
        prepared, how = prepared_split(args.data)
    print(f"data: {prepared} ({how})", flush=True)
    rows = []
    device = args.device
    for backbone in args.backbones.split(","):
        for method in [m for m in args.methods.split(",") if m]:
            cmd = [sys.executable, __file__, "--method", method, "--backbone", backbone, "--prepared", str(prepared),
                   "--device", args.device, "--epochs", str(args.epochs), "--threads", str(args.threads),
                   "--batch-size", str(BATCH)]
            load0 = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{method}/{backbone} failed:\n{out.stderr}")
            res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            device = res.pop("device")
            for module, r in res.items():
                rows.append({"backbone": backbone, "method": method, "module": module, **r,
                             "load_avg_1m_before": round(load0, 2)})
                print(f"{backbone:4} {module} {method:10} {r['s_per_epoch']:8.2f} s/epoch  "
                      f"{r['images_per_s']:8.0f} img/s  peak {r['peak_mb']:7.0f} MB", flush=True)
    print_ratios(rows, args.backbones.split(","))
    full = None
    if args.full_epochs:
        full = time_full_stage(prepared, args)
        print(f"stage end to end: NDM + UDM, K=3, AE, {args.full_epochs} epochs: {full['wall_s']:.1f} s wall",
              flush=True)
    if (args.methods not in (",".join(DEFAULT_METHODS), ",".join(METHODS))
            or args.backbones != "ae,aeu") and args.results == RESULTS:
        print("partial run: results not written to benchmarks/results (name another folder with --results)")
        return
    write_results(args, device, how, rows, full)


def print_ratios(rows: list[dict], backbones: list[str]) -> None:
    """batched / plain time and the bf16 speed-up, per backbone and module, where both were measured."""
    for backbone in backbones:
        for module in ("ndm", "udm"):
            t = {r["method"]: r["s_per_epoch"] for r in rows if r["backbone"] == backbone and r["module"] == module}
            if "batched" in t and "plain" in t:
                print(f"{backbone:4} {module} batched / plain = {t['batched'] / t['plain']:.2f}")
            if "batched" in t and "batched-bf16" in t:
                print(f"{backbone:4} {module} bf16 speed-up = {t['batched'] / t['batched-bf16']:.2f}x")


def write_results(args, device: str, how: str, rows: list[dict], full: dict | None) -> None:
    """benchmarks/results/train_speed-<device>.json and .md (or under --results)."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "members": K, "batch_size": BATCH, "epochs_measured": args.epochs,
            "image_px": sorted({r["image_px"] for r in rows}),
            "threads": args.threads or "torch default", "data": how, "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if full:
        meta["full_stage"] = full
    (results / f"train_speed-{slug}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [f"# train_speed on {device}", "", "".join(f"- {k}: {v}\n" for k, v in meta.items()),
          "| backbone | module | method | s/epoch (K=3) | images/s | peak MB |", "|---|---|---|---|---|---|"]
    md += [f"| {r['backbone']} | {r['module']} | {r['method']} | {r['s_per_epoch']:.2f} | {r['images_per_s']:.0f} | "
           f"{r['peak_mb']:.0f} |" for r in rows]
    (results / f"train_speed-{slug}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {results / f'train_speed-{slug}.json'} and .md")


if __name__ == "__main__":
    main()
