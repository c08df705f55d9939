"""PatchCore design check on the ZhangLab DEV split (benchmarks/splits/zhanglab-dev.csv), never on
the official test split: one memory bank (Dn = 800 normals, cxrad's defaults), then several ways
of turning the same patch distances into an image score, and the AUC/AP of each on the dev test
set (200 held-out normals + 200 train-pool pneumonia images). Appends one JSON line to
benchmarks/results/patchcore-dev-study.jsonl.

    CXRAD_DATA=/path/to/data CXRAD_NO_PROGRESS=1 nice -n 5 python benchmarks/patchcore_dev_study.py

Image scores compared (grid = the 28×28 patch distances at 224 px):
  max        the largest raw patch distance (cxrad's default, the official code's)
  max-map    the largest value of the smoothed, upsampled map
  max-inner  the largest raw patch distance at least 2 patches (16 px) away from the image edge
  top1pct    the mean of the largest 1 % of raw patch distances (8 of 784)
  mean       the mean patch distance
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, add_intensity_option, data_file, intensity_tag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    add_intensity_option(ap)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    source = data_file(KERMANY_224, args.data)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import PrepareConfig
    from cxrad.io.store import load_split
    from cxrad.methods.fitting import FitContext
    from cxrad.methods.patchcore.config import PatchCoreConfig
    from cxrad.methods.patchcore.method import PatchCoreScorer, PatchCoreTrainer
    from cxrad.metrics import auc, average_precision
    from cxrad.stages.prepare import prepare

    labels_csv = SPLITS / "zhanglab-dev.csv"
    prepared = args.workdir / "prepared" / f"zhanglab-dev-224{intensity_tag(args.intensity)}"
    prepare(source, prepared, PrepareConfig(size=224, workers=1, val_normals=0, intensity=args.intensity),
            labels=labels_csv)
    cfg = PatchCoreConfig(seed=args.seed).validate()
    t0 = time.perf_counter()
    trainer = PatchCoreTrainer(FitContext(prepared, args.workdir, torch.device("cpu"), cfg))
    trainer.run_epoch()
    scorer = PatchCoreScorer(trainer.final_state(), torch.device("cpu"))
    t1 = time.perf_counter()
    test = load_split(prepared, "test")
    grids, map_max = [], []
    from cxrad.methods.patchcore.anomaly_maps import patch_maps, sigma_at
    from cxrad.methods.patchcore.knn import knn_distance

    gh, gw = scorer.extractor.grid()
    with torch.no_grad():
        for s in range(0, len(test.images), 32):
            x = torch.from_numpy(np.asarray(test.images[s:s + 32], np.float32))
            f = scorer.extractor(x)
            d = knn_distance(f.reshape(-1, f.shape[-1]), scorer.bank).reshape(len(x), gh, gw)
            grids.append(d)
            map_max.append(patch_maps(d, (224, 224), sigma_at(224, 224, cfg.smoothing_sigma)).flatten(1).amax(1))
    grid = torch.cat(grids)
    flat = grid.flatten(1)
    k = max(1, round(0.01 * flat.shape[1]))
    scores = {
        "max": flat.amax(1), "max-map": torch.cat(map_max), "max-inner": grid[:, 2:-2, 2:-2].flatten(1).amax(1),
        "top1pct": flat.topk(k, dim=1).values.mean(1), "mean": flat.mean(1),
    }
    y = np.asarray(test.labels)
    # where the largest patch distance lies: share of images whose maximum is on the outer 2-patch ring
    argmax = flat.argmax(1)
    rows, cols = argmax // gw, argmax % gw
    on_edge = ((rows < 2) | (rows >= gh - 2) | (cols < 2) | (cols >= gw - 2)).float()
    record = {
        "benchmark": "ZhangLab-dev-224", "method": "patchcore", "seed": args.seed, "intensity": args.intensity,
        "config": {k: v for k, v in vars(cfg).items() if k != "device"},
        "auc": {n: round(100 * auc(y, s.numpy()), 2) for n, s in scores.items()},
        "ap": {n: round(100 * average_precision(y, s.numpy()), 2) for n, s in scores.items()},
        "max_on_edge_share": {"normal": round(float(on_edge[y == 0].mean()), 3),
                              "abnormal": round(float(on_edge[y == 1].mean()), 3)},
        "fit_s": round(t1 - t0, 1), "score_s": round(time.perf_counter() - t1, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "patchcore-dev-study.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
