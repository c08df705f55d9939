"""Where should the abnormal/normal threshold come from? Training normals vs held-out normals.

Builds a ZhangLab-like split of the Kermany set (official 624-image test split; from the training
pool Dn = ``--normal-count`` normals, Du = 853 images at 60 % pneumonia, and ``--val-normals``
normal images held out of all training), runs the short pipeline (AE, K = 3, 30 reconstruction
epochs, R_dual with 5 ASR epochs) and evaluates twice: thresholds from the held-out normals
(``--threshold-from val``) and from the normal training images (``--threshold-from normal``).
Prints sensitivity / specificity on the test split at each threshold and appends one JSON line to
benchmarks/results/threshold_calibration.jsonl. The test labels are only read to report.

    CXRAD_DATA=/path/to/data python benchmarks/threshold_calibration.py --workdir W [--seed 0] [--val-normals 200]

Reads the Kermany 224-px tar and its labels.csv from $CXRAD_DATA/kermany-pneumonia-224/ (or ``--data``;
``--source`` / ``--labels`` override each): see benchmarks/bench_data.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

from bench_data import KERMANY_224, RESULTS, add_intensity_option, data_file, intensity_tag  # the script dir
from bench_record import git_commit

KERMANY_LABELS = KERMANY_224.parent / "labels.csv"   # part of the data release, next to the tar
LABEL = {"val": "held-out normals", "normal": "Dn (training)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--normal-count", type=int, default=800)
    ap.add_argument("--val-normals", type=int, default=200)
    add_intensity_option(ap)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--asr-epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--labels", type=Path, help="its labels CSV [default: DATA/" + str(KERMANY_LABELS) + "]")
    ap.add_argument("--results", type=Path, default=RESULTS / "threshold_calibration.jsonl")
    args = ap.parse_args(argv)
    args.source = args.source or data_file(KERMANY_224, args.data)
    args.labels = args.labels or data_file(KERMANY_LABELS, args.data)

    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig
    from cxrad.devices import device_name, resolve_device
    from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig
    from cxrad.methods.ddad.refine import refine
    from cxrad.methods.ddad.synthesize import synthesize
    from cxrad.methods.ddad.train_ensemble import train_ensemble
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.prepare import prepare
    from cxrad.stages.score import score

    tag = intensity_tag(args.intensity)
    prepared = args.workdir / "prepared" / f"kermany-n{args.normal_count}-v{args.val_normals}-s{args.seed}{tag}"
    run = args.workdir / "runs" / f"ae-e{args.epochs}-a{args.asr_epochs}-s{args.seed}{tag}"
    pcfg = PrepareConfig(size=64, workers=max(1, args.threads), normal_count=args.normal_count,
                         unlabeled_count=853, anomaly_rate=0.6, val_normals=args.val_normals, seed=args.seed,
                         intensity=args.intensity)
    t0 = time.perf_counter()
    prepare(args.source, prepared, pcfg, labels=args.labels)
    train_ensemble(prepared, run, EnsembleConfig(epochs=args.epochs, seed=args.seed))
    synthesize(run, SynthConfig(epochs=args.asr_epochs, seed=args.seed))
    refine(run, RefineConfig(epochs=args.asr_epochs, seed=args.seed, inputs="dual"))
    score(run, ScoreConfig(split="test"))
    results = {}
    for source in ("val", "normal"):
        m = evaluate(run, EvaluateConfig(threshold_from=source), force=True)
        results[source] = {"threshold_source": m["threshold_source"],
                           **{k: {f: round(v[f], 4) for f in ("threshold", "sensitivity", "specificity", "acc", "f1")}
                              | {"auc": round(100 * v["auc"], 2)} for k, v in m["scores"].items()}}
    print(f"\n{'score':8s} {'AUC':>6s}  {'thresholds from':>16s} {'sens':>6s} {'spec':>6s} {'acc':>6s}")
    for k in results["val"]:
        if k == "threshold_source":
            continue
        for source in ("val", "normal"):
            r = results[source][k]
            print(f"{k:8s} {r['auc']:6.1f}  {LABEL[source]:>16s} {100 * r['sensitivity']:6.1f} "
                  f"{100 * r['specificity']:6.1f} {100 * r['acc']:6.1f}")
    record = {"benchmark": "Kermany, ZhangLab-like split with held-out normals", "seed": args.seed,
              "normal_count": args.normal_count, "val_normals": args.val_normals, "epochs": args.epochs,
              "asr_epochs": args.asr_epochs, "prepare": dataclasses.asdict(pcfg),
              "device": device_name(resolve_device("auto")), "host": platform.node(), "commit": git_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "wall_s_this_call": round(time.perf_counter() - t0, 1),  # stages already done are no-ops
              "results": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
