"""WSCXR design check on the ZhangLab DEV split (benchmarks/splits/zhanglab-dev.csv), never on the
official test split: Dn = 800 normals, test = 200 held-out normals + 200 train-pool pneumonia
images, the labelled anomalies of zhanglab-fewshot-anomalies.csv (none in the dev test set).
For each feature choice, K and mining fraction, one discriminator with cxrad's other defaults
(seed 0, 100 epochs, last kept), and the AUC/AP of two image scores on the dev test set:
  max   the largest patch output (the paper's and the code's score; cxrad's `wscxr`)
  mean  the mean patch output
Feature choices:
  stride8+16   PatchCore's Lite0 stages (cxrad's default; a 28 x 28 grid at 224 px)
  stride16+32  Lite0's two deepest stages (a 14 x 14 grid), closer in depth to the paper's
               DenseNet-121 block 4
Mining fraction 1.0 keeps every abnormal patch: the paper's ablation "linear mixing without
anomaly feature mining" (its Table II). Appends one JSON line per configuration to
benchmarks/results/wscxr-dev-study.jsonl.

    CXRAD_DATA=/path/to/data CXRAD_NO_PROGRESS=1 nice -n 5 python benchmarks/wscxr_dev_study.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, add_intensity_option, data_file, intensity_tag


def _trunk(strides):
    from cxrad.features.backbones import (
        StageTrunk,
        build_network,
        bundled_weights,
        load_weights,
        read_state_dict,
        stage_ends,
    )

    net = build_network("efficientnet-lite0")
    path = bundled_weights("efficientnet-lite0")
    load_weights(net, read_state_dict(path), path, "efficientnet-lite0")
    return StageTrunk(net, stage_ends(net, strides)).eval().requires_grad_(False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shots", default="4,16")
    add_intensity_option(ap)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    source = data_file(KERMANY_224, args.data)

    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    torch.set_num_threads(args.threads)
    from cxrad.config import PrepareConfig
    from cxrad.features.extractor import PatchFeatureExtractor
    from cxrad.io.store import load_split
    from cxrad.methods.wscxr.config import WSCXRConfig
    from cxrad.methods.wscxr.mining import mining_distance, select_farthest
    from cxrad.methods.wscxr.trainer import WSCXRTrainer
    from cxrad.stages.prepare import prepare

    class Stride16(PatchFeatureExtractor):
        """The extractor on a stride-16 shallow stage: its grid is the stride-16 map's."""

        def grid(self):
            side = -(-self.input_size // 16)
            return side, side

    shots = [int(k) for k in args.shots.split(",")]
    prepared = args.workdir / "prepared" / f"zhanglab-dev-224-anomalies{max(shots)}{intensity_tag(args.intensity)}"
    prepare(source, prepared, PrepareConfig(size=224, workers=1, anomaly_shots=max(shots), val_normals=0,
                                          intensity=args.intensity),
            labels=SPLITS / "zhanglab-dev.csv", anomalies=SPLITS / "zhanglab-fewshot-anomalies.csv")
    normal = load_split(prepared, "normal").images
    test = load_split(prepared, "test")
    anomalies = load_split(prepared, "anomaly", labelled_anomalies=True).images   # a study of WSCXR's own input
    labels = test.labels.astype(int)
    args.results.mkdir(parents=True, exist_ok=True)
    for name, strides, cls in (("stride8+16", (8, 16), PatchFeatureExtractor), ("stride16+32", (16, 32), Stride16)):
        t0 = time.perf_counter()
        ex = cls(_trunk(strides), input_size=224, feature_dim=256)
        fn, ft, fa = (ex.extract(x, batch_size=32) for x in (normal, test.images, anomalies))
        extract_s = round(time.perf_counter() - t0, 1)
        flat = fn.reshape(-1, fn.shape[-1])
        distance = torch.cat([mining_distance(a, flat) for a in fa])
        for k in shots:
            for fraction in (0.2, 1.0):
                protos = fa[:k].reshape(-1, fa.shape[-1])[select_farthest(distance[:k * fa.shape[1]], fraction)]
                cfg = WSCXRConfig(shots=k, mining_fraction=fraction).validate()
                trainer = WSCXRTrainer(fn, protos, cfg, torch.device("cpu"))
                t1 = time.perf_counter()
                for _ in range(cfg.epochs):
                    losses = trainer.run_epoch()
                with torch.no_grad():
                    out = trainer.model(ft.reshape(-1, ft.shape[-1])).reshape(len(ft), -1)
                rec = {"study": "wscxr dev split", "intensity": args.intensity, "features": name,
                       "grid": list(ex.grid()), "shots": k,
                       "mining_fraction": fraction, "prototypes": len(protos), "final_loss": losses[0],
                       "train_s": round(time.perf_counter() - t1, 1), "extract_s": extract_s}
                for agg, s in (("max", out.amax(1)), ("mean", out.mean(1))):
                    rec[f"dev_auc_{agg}"] = round(100 * roc_auc_score(labels, s.numpy()), 2)
                    rec[f"dev_ap_{agg}"] = round(100 * average_precision_score(labels, s.numpy()), 2)
                rec["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                with open(args.results / "wscxr-dev-study.jsonl", "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
