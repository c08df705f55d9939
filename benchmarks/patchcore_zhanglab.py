"""PatchCore on ZhangLab-OCSSL (benchmarks/splits/zhanglab-ocssl.md; data from $CXRAD_DATA).

prepare (224 px: the size of the Kermany tar's images and the ImageNet size of the backbone, so
nothing is resized twice) -> `fit` on Dn (1,000 normal images; Du and every label unused) ->
`score` the test split -> `evaluate`, through the stage API; one JSON line per seed (the seed
draws the coreset's first feature and its random projection) appended to
benchmarks/results/patchcore.jsonl: AUC/AP with 95 % intervals, wall time per stage, feature
extraction throughput, memory-bank size, peak RSS of the process, commit.

    CXRAD_DATA=/path/to/data CXRAD_NO_PROGRESS=1 nice -n 5 python benchmarks/patchcore_zhanglab.py --seeds 0,1,2

Each seed runs in its own process, so each line's peak RSS is that run's own.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, add_intensity_option, data_file, intensity_tag
from bench_record import git_commit, peak_rss_mb, percent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2 (one process each)")
    ap.add_argument("--size", type=int, default=224, help="prepared image size")
    add_intensity_option(ap)
    ap.add_argument("--coreset-ratio", type=float, help="default: PatchCoreConfig's")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine the coreset loop's many small "
                         "operations ran 2x faster with one thread than with two)")
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--labels", type=Path, default=SPLITS / "zhanglab-ocssl.csv")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if len(seeds) > 1:
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--seeds") if "--seeds" in rest else None
        if i is not None:
            del rest[i:i + 2]
        rest = [a for a in rest if not a.startswith("--seeds=")]
        for seed in seeds:
            r = subprocess.run([sys.executable, __file__, "--seeds", str(seed), *rest])
            if r.returncode:
                return r.returncode
        return 0
    args.source = args.source or data_file(KERMANY_224, args.data)
    record = run_one(args, seeds[0])
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "patchcore.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps({k: record[k] for k in ("seed", "scores", "timings_s", "memory_bank",
                                             "extract_images_per_s", "peak_rss_mb")}, indent=1))
    return 0


def run_one(args, seed: int) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig
    from cxrad.devices import device_name, resolve_device
    from cxrad.methods.fitting import fit
    from cxrad.methods.patchcore.config import PatchCoreConfig
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.prepare import prepare
    from cxrad.stages.score import score

    device = resolve_device(args.device)
    cfg = PatchCoreConfig(backbone=args.backbone, seed=seed, device=args.device,
                          **({"coreset_ratio": args.coreset_ratio} if args.coreset_ratio is not None else {}))
    tag = intensity_tag(args.intensity)
    prepared = args.workdir / "prepared" / f"{args.labels.stem}-{args.size}{tag}"
    run = args.workdir / "runs" / f"patchcore-{args.backbone.replace('efficientnet-', '')}-{args.size}-" \
                                  f"c{cfg.coreset_ratio:g}-s{seed}{tag}"
    timings: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"[seed {seed}] {name}: {timings[name]:.1f} s", flush=True)
        return out

    timed("prepare", lambda: prepare(args.source, prepared, PrepareConfig(size=args.size, workers=1, val_normals=0,
                                                                   intensity=args.intensity), labels=args.labels))
    timed("fit", lambda: fit(prepared, run, "patchcore", cfg))   # a no-op when the run holds this model
    timed("score", lambda: score(run, ScoreConfig(split="test", device=args.device), force=True))
    metrics = timed("evaluate", lambda: evaluate(run, EvaluateConfig(device=args.device), force=True))
    model = json.loads((run / "model" / "manifest.json").read_text())
    timings["fit_training"] = round(float(model["timings_s"]["total"]), 2)   # the training, even when reused
    n_test = 624
    scores = metrics["scores"]
    s = scores["patchcore"]
    return {
        "benchmark": f"ZhangLab-OCSSL-{args.size}", "method": "patchcore", "seed": seed,
        "config": {k: v for k, v in vars(cfg).items() if k not in ("device",)},
        "intensity": args.intensity, "labels": args.labels.name, "device": device_name(device), "host": platform.node(),
        "threads": args.threads, "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(run),
        "auc": round(100 * s["auc"], 2), "ap": round(100 * s["ap"], 2),
        "auc_ci95": percent(s.get("auc_ci")), "ap_ci95": percent(s.get("ap_ci")),
        "scores": {k: {"auc": round(100 * v["auc"], 2), "ap": round(100 * v["ap"], 2),
                       "auc_ci95": percent(v.get("auc_ci")), "ap_ci95": percent(v.get("ap_ci"))}
                   for k, v in scores.items()},
        "metrics": scores, "timings_s": timings,
        "extract_s": model.get("extract_s"), "coreset_s": model.get("coreset_s"),
        "extract_images_per_s": round(model["train_images"] / model["extract_s"], 2),
        "score_images_per_s": round((n_test + model["train_images"]) / timings["score"], 2),   # Dn + test
        "train_images": model["train_images"], "train_patches": model["train_patches"],
        "memory_bank": model["memory_bank"], "covering_radius": model.get("covering_radius"),
        "weights_sha256": model.get("weights_sha256"), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
