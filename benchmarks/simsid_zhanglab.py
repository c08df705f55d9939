"""SimSID on ZhangLab-OCSSL (benchmarks/splits/zhanglab-ocssl.md; data from $CXRAD_DATA).

prepare (64 px by default, the size of DDAD-ASR's benchmark; 128 is the official size) -> `fit`
on Dn only (1,000 normal images; Du and every label unused; the last epoch is kept) -> `score`
the test split -> `evaluate`, through the stage API. One JSON line per seed appended to
RESULTS/simsid.jsonl: AUC/AP (with 95 % intervals) of each score, wall time per stage, seconds
per epoch, peak RSS of the process, epochs, commit.

    CXRAD_DATA=/path/to/data CXRAD_NO_PROGRESS=1 nice -n 5 python benchmarks/simsid_zhanglab.py \\
        --size 64 --epochs 4 --seeds 0,1,2

Each seed runs in its own process (its own peak RSS). A fit stopped by SIGTERM (e.g. the time
limit of benchmarks/device_check.sh) checkpoints; the line then says how far it got
("completed": false, epochs done, seconds per epoch) and nothing is scored. Started again with
the same options, the run resumes from that checkpoint.
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
    ap.add_argument("--size", type=int, default=64, help="prepared image size = SimSID's size (64 or 128)")
    add_intensity_option(ap)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (official: 1000)")
    ap.add_argument("--batch-size", type=int, help="default: SimSIDConfig's (16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on the shared 2-core machine a training step ran 3x faster with "
                         "one thread than with two; benchmarks/results/simsid-profile.md)")
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--prepared", type=Path, help="an existing prepared folder to use (must match --size)")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--labels", type=Path, default=SPLITS / "zhanglab-ocssl.csv")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for simsid.jsonl")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if len(seeds) > 1:
        rest = list(argv if argv is not None else sys.argv[1:])
        if "--seeds" in rest:
            i = rest.index("--seeds")
            del rest[i:i + 2]
        rest = [a for a in rest if not a.startswith("--seeds=")]
        code = 0
        for seed in seeds:
            code = subprocess.run([sys.executable, __file__, "--seeds", str(seed), *rest]).returncode or code
        return code
    if args.prepared is None:
        args.source = args.source or data_file(KERMANY_224, args.data)
    record = run_one(args, seeds[0])
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "simsid.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps({k: record.get(k) for k in ("seed", "completed", "epochs", "auc", "ap", "timings_s",
                                                 "seconds_per_epoch", "peak_rss_mb")}, indent=1))
    return 0 if record["completed"] else 1


def run_one(args, seed: int) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig
    from cxrad.devices import device_name, resolve_device
    from cxrad.errors import CxradError
    from cxrad.io.store import preprocessing_of
    from cxrad.layout import MODEL_CHECKPOINT, RunLayout
    from cxrad.methods.fitting import fit
    from cxrad.methods.simsid.config import SimSIDConfig
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.prepare import prepare
    from cxrad.stages.score import score

    device = resolve_device(args.device)
    cfg = SimSIDConfig(size=args.size, epochs=args.epochs, seed=seed, device=args.device,
                       **({"batch_size": args.batch_size} if args.batch_size else {})).validate()
    # with --prepared, the folder's own scaling names the run and the record, whatever --intensity says
    intensity = preprocessing_of(args.prepared)["intensity"] if args.prepared else args.intensity
    tag = intensity_tag(intensity)
    prepared = args.prepared or args.workdir / "prepared" / f"{args.labels.stem}-{args.size}{tag}"
    run = args.workdir / "runs" / f"simsid-{args.size}-e{args.epochs}-b{cfg.batch_size}-s{seed}{tag}"
    timings: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            timings[name] = round(time.perf_counter() - t0, 2)
            print(f"[seed {seed}] {name}: {timings[name]:.1f} s", flush=True)

    if args.prepared is None:   # a no-op when the folder already holds this preparation
        timed("prepare", lambda: prepare(args.source, prepared, PrepareConfig(size=args.size, workers=1, val_normals=0,
                                                                       intensity=args.intensity), labels=args.labels))
    ckpt = RunLayout(run).model / MODEL_CHECKPOINT
    record = {"benchmark": f"ZhangLab-OCSSL-{args.size}", "method": "simsid", "seed": seed,
              "config": {k: v for k, v in vars(cfg).items() if k != "device"},
              "intensity": intensity,
              "labels": args.labels.name, "device": device_name(device), "host": platform.node(),
              "threads": args.threads, "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "run": str(run), "protocol": "train on Dn only, last epoch kept, no labelled selection"}
    try:
        timed("fit", lambda: fit(prepared, run, "simsid", cfg, resume=ckpt.is_file()))
    except CxradError as exc:   # stopped (SIGTERM) or diverged: say how far it got
        state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
        log = json.loads(state["log"]) if state else []
        record.update(completed=False, stopped=str(exc), epochs=len(log), timings_s=timings,
                      seconds_per_epoch=round(sum(r["seconds"] for r in log) / len(log), 1) if log else None,
                      peak_rss_mb=round(peak_rss_mb(), 1))
        return record
    timed("score", lambda: score(run, ScoreConfig(split="test", device=args.device), force=True))
    metrics = timed("evaluate", lambda: evaluate(run, EvaluateConfig(device=args.device), force=True))
    model = json.loads((run / "model" / "manifest.json").read_text())
    log = json.loads((run / "model" / "log.json").read_text())
    scores = metrics["scores"]
    record.update(
        completed=True, epochs=model["epochs"], train_images=model["train_images"],
        auc={k: round(100 * v["auc"], 2) for k, v in scores.items()},
        ap={k: round(100 * v["ap"], 2) for k, v in scores.items()},
        auc_ci95={k: percent(v.get("auc_ci")) for k, v in scores.items()},
        ap_ci95={k: percent(v.get("ap_ci")) for k, v in scores.items()},
        metrics=scores, timings_s=timings,
        seconds_per_epoch=round(sum(r["seconds"] for r in log) / len(log), 1),
        final_losses=dict(zip(model.get("loss_names", []), model.get("final_losses", []))),
        d_mean=model.get("d_mean"), d_std=model.get("d_std"), peak_rss_mb=round(peak_rss_mb(), 1))
    return record


if __name__ == "__main__":
    sys.exit(main())
