"""WSCXR on ZhangLab-OCSSL with K labelled abnormal images (benchmarks/splits/zhanglab-ocssl.md and
zhanglab-fewshot-anomalies.csv; data from $CXRAD_DATA).

for each K: prepare (224 px as the PatchCore benchmark, plus the first K labelled anomalies of the
few-shot CSV as the `anomaly` set, `--anomaly-shots K`; Dn, Du and test are the same images as
every other ZhangLab benchmark) -> for each seed: `fit --method wscxr` on Dn + those K images (Du
and test never read) -> `score` -> `evaluate`, through the stage API. One JSON line per (K, seed) appended
to benchmarks/results/wscxr.jsonl: AUC/AP with 95 % intervals of every score (`wscxr`, the
maximum, decides; `wscxr_mean`), wall time per stage (a run already trained with the same
configuration is reused, and the training time is then the model manifest's), peak RSS of the
process so far, K, seed, commit. The last epoch is kept; no test label is read before
`evaluate`, and nothing is chosen with it.

All runs share one process and its feature memo (cxrad.methods.wscxr.features.enable_memo): the
backbone runs once over each image set and each labelled anomaly's mining distances are computed
once, so only the first run's `fit` and `score` pay for extraction (its record says so:
"features_cached": false). Peak RSS is the process's, which grows to the largest run's.

    CXRAD_DATA=/path/to/data CXRAD_NO_PROGRESS=1 nice -n 5 python benchmarks/wscxr_zhanglab.py
    python benchmarks/wscxr_zhanglab.py --shots 2 --seeds 0 --epochs 5      # a quick look

``--epoch-analysis`` (REPORT ONLY, no run folder, nothing chosen): trains the same models again and
after every epoch computes the test AUC, and the official code's selection criterion — the mean of
test AUROC, ACC and F1, ACC/F1 at the Youden threshold of min-max normalised test scores — to
measure how much the paper's protocol (keep the epoch best on the test set) adds over the last
epoch. One line per (K, seed) in benchmarks/results/wscxr-epoch-analysis.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, add_intensity_option, data_file, intensity_tag
from bench_record import git_commit, peak_rss_mb, percent


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", default="2,4,8,16", help="K values (each <= the CSV's 16 rows)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=224, help="prepared image size (as benchmarks/patchcore_zhanglab.py)")
    add_intensity_option(ap)
    ap.add_argument("--epochs", type=int, help="default: WSCXRConfig's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on the shared 2-core machine a discriminator step ran 6x faster "
                         "with one thread than with two)")
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--labels", type=Path, default=SPLITS / "zhanglab-ocssl.csv")
    ap.add_argument("--anomalies", type=Path, default=SPLITS / "zhanglab-fewshot-anomalies.csv")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--epoch-analysis", action="store_true",
                    help="report only: per-epoch test metrics and the paper's test-set epoch selection")
    args = ap.parse_args(argv)
    args.source = args.source or data_file(KERMANY_224, args.data)
    shots, seeds = _ints(args.shots), _ints(args.seeds)

    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import PrepareConfig
    from cxrad.methods.wscxr.features import enable_memo
    from cxrad.stages.prepare import prepare

    enable_memo()
    args.results.mkdir(parents=True, exist_ok=True)
    first = True
    for k in shots:
        # one prepared folder per K, as a user would make it (`--anomaly-shots K`): its `anomaly` set
        # is what the run saw, and what `cxrad compare` reports; Dn, Du and test are the same images
        tag = intensity_tag(args.intensity)
        prepared = args.workdir / "prepared" / f"{args.labels.stem}-{args.size}-anomalies{k}{tag}"
        t0 = time.perf_counter()
        prepare(args.source, prepared, PrepareConfig(size=args.size, workers=1, anomaly_shots=k, val_normals=0,
                                                     intensity=args.intensity),
                labels=args.labels, anomalies=args.anomalies)
        prepare_s = round(time.perf_counter() - t0, 2)
        if args.epoch_analysis:
            for seed in seeds:
                record = epoch_analysis(args, prepared, k, seed)
                with open(args.results / "wscxr-epoch-analysis.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(json.dumps({key: v for key, v in record.items() if key != "per_epoch"}), flush=True)
            continue
        for seed in seeds:
            record = run_one(args, prepared, k, seed, cached=not first)
            record["timings_s"]["prepare"] = prepare_s
            first = False
            with open(args.results / "wscxr.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps({key: record[key] for key in ("shots", "seed", "scores", "timings_s",
                                                           "fit_total_s_manifest", "peak_rss_mb")}), flush=True)
    return 0


def run_one(args, prepared: Path, k: int, seed: int, *, cached: bool) -> dict:
    import dataclasses

    from cxrad.config import EvaluateConfig, ScoreConfig
    from cxrad.devices import device_name, resolve_device
    from cxrad.methods.fitting import fit
    from cxrad.methods.wscxr.config import WSCXRConfig
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.score import score

    device = resolve_device(args.device)
    cfg = WSCXRConfig(seed=seed, device=args.device)   # shots: all K of the prepared `anomaly` set
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    cfg.validate()
    run = args.workdir / "runs" / f"wscxr-{cfg.backbone.replace('efficientnet-', '')}-{args.size}-e{cfg.epochs}-" \
                                  f"k{k}-s{seed}{intensity_tag(args.intensity)}"
    timings: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"[K {k} seed {seed}] {name}: {timings[name]:.1f} s", flush=True)
        return out

    # a run already trained with this configuration is kept (fit is then a no-op); the record takes
    # the training time from the model manifest either way
    timed("fit", lambda: fit(prepared, run, "wscxr", cfg))
    timed("score", lambda: score(run, ScoreConfig(split="test", device=args.device), force=True))
    metrics = timed("evaluate", lambda: evaluate(run, EvaluateConfig(device=args.device), force=True))
    model = json.loads((run / "model" / "manifest.json").read_text())
    log = json.loads((run / "model" / "log.json").read_text())
    s = metrics["scores"]["wscxr"]
    scores = {name: {"auc": round(100 * m["auc"], 2), "ap": round(100 * m["ap"], 2),
                     "auc_ci95": percent(m.get("auc_ci")), "ap_ci95": percent(m.get("ap_ci"))}
              for name, m in metrics["scores"].items()}
    return {
        "benchmark": f"ZhangLab-OCSSL-{args.size}", "method": "wscxr", "shots": k, "seed": seed,
        "config": {key: v for key, v in vars(cfg).items() if key != "device"},
        "intensity": args.intensity, "labels": args.labels.name, "anomalies": args.anomalies.name,
        "device": device_name(device),
        "host": platform.node(), "threads": args.threads, "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": str(run),
        "auc": round(100 * s["auc"], 2), "ap": round(100 * s["ap"], 2),
        "auc_ci95": percent(s.get("auc_ci")), "ap_ci95": percent(s.get("ap_ci")),
        "metrics": s, "scores": scores, "all_metrics": metrics["scores"],
        "decision_score": metrics.get("decision_score"),
        "timings_s": timings, "fit_total_s_manifest": round(float(model.get("timings_s", {}).get("total", 0.0)), 2),
        "features_cached": cached,
        "epoch_seconds_mean": round(sum(r["seconds"] for r in log) / max(1, len(log)), 3),
        "final_losses": model.get("final_losses"), "prototypes": model.get("prototypes"),
        "train_images": model.get("train_images"), "anomaly_images": model.get("anomaly_images"),
        "normal_patches": model.get("normal_patches"), "mining_reference": model.get("mining_reference"),
        "weights_sha256": model.get("weights_sha256"), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _paper_selection_metrics(labels, scores) -> dict:
    """The official code's wscxr/metrics.py on TEST scores: AUROC, and ACC/F1 at the threshold
    maximising TPR - FPR on the min-max normalised test scores themselves."""
    import numpy as np
    from sklearn.metrics import f1_score, roc_auc_score, roc_curve

    s = (scores - scores.min()) / (scores.max() - scores.min())
    fpr, tpr, thr = roc_curve(labels, s)
    t = thr[int(np.argmax(tpr - fpr))]
    pred = (s >= t).astype(np.int64)
    return {"auc": float(roc_auc_score(labels, s)), "acc": float((pred == labels).mean()),
            "f1": float(f1_score(labels, pred))}


def epoch_analysis(args, prepared: Path, k: int, seed: int) -> dict:
    """Report only: the model of `fit` retrained in memory, scored on the test set after each epoch."""
    import dataclasses

    import numpy as np
    import torch

    from cxrad.devices import resolve_device
    from cxrad.features.backbones import load_backbone
    from cxrad.io.store import load_split
    from cxrad.methods.fitting import FitContext
    from cxrad.methods.wscxr.config import WSCXRConfig
    from cxrad.methods.wscxr.features import extract
    from cxrad.methods.wscxr.method import _extractor, _extractor_key, make_trainer

    device = resolve_device(args.device)
    cfg = WSCXRConfig(seed=seed, device=args.device)
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    cfg.validate()
    trainer = make_trainer(FitContext(prepared, args.workdir / "unused", device, cfg))
    backbone = load_backbone(cfg.backbone, cfg.weights or None)
    extractor = _extractor(backbone.trunk, cfg.input_size, cfg.feature_dim, device)
    test = load_split(prepared, "test")
    feats = extract(extractor, test.images, key=_extractor_key(cfg.backbone, backbone.sha256 or "", cfg.input_size,
                                                               cfg.feature_dim), batch_size=32, device=device)
    labels = test.labels.astype(np.int64)
    per_epoch = []
    for epoch in range(1, cfg.epochs + 1):
        losses = trainer.run_epoch()
        with torch.no_grad():
            trainer.model.eval()
            out = trainer.model(feats.reshape(-1, feats.shape[-1]).to(device)).reshape(len(feats), -1)
            trainer.model.train()
        m = _paper_selection_metrics(labels, out.amax(1).cpu().numpy().astype(np.float64))
        per_epoch.append({"epoch": epoch, "loss": losses[0], **{key: round(100 * v, 2) for key, v in m.items()}})
    best = max(per_epoch, key=lambda r: (r["auc"] + r["acc"] + r["f1"]) / 3)   # the code's criterion
    last = per_epoch[-1]
    return {"analysis": "test metrics per epoch, REPORT ONLY", "shots": k, "seed": seed,
            "intensity": args.intensity, "epochs": cfg.epochs,
            "last_epoch": last, "paper_selected_epoch": best,
            "auc_gain_of_test_selection": round(best["auc"] - last["auc"], 2),
            "max_auc_any_epoch": max(r["auc"] for r in per_epoch), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "per_epoch": per_epoch}


if __name__ == "__main__":
    sys.exit(main())
