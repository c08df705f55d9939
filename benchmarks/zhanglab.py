"""ZhangLab-OCSSL-64 benchmark (benchmarks/splits/zhanglab-ocssl.md; data from $CXRAD_DATA).

Runs prepare → train-ensemble → synthesize → refine (dual, intra) → score → evaluate through the
stage API for one backbone / epoch budget / seed, and appends one JSON line per run (metrics,
per-stage wall times, device, peak memory) to benchmarks/results/zhanglab.jsonl.

    python benchmarks/zhanglab.py --variant short                      # AE, 30/5 epochs, K = 3
    python benchmarks/zhanglab.py --variant full --backbone aeu        # 250/100 epochs (GPU)

Stability study (ASR stage only, on the run's frozen ensembles): ``--study-seeds 0,1,2`` trains
R_dual again per seed (FPI recipes and ASR init both from the seed) for each ``--study-variants``
(cxrad = the shipped defaults; image-space = the reference FPI with cxrad's other defaults;
reference-fpi = the reference end to end; see REFINE_VARIANTS) and appends one line
per (variant, seed) to benchmarks/results/zhanglab-stability.jsonl. Test AUC is computed after
every epoch FOR THE REPORT ONLY — nothing is selected with it; the model kept is always the last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, SPLITS, add_intensity_option, data_file, intensity_tag
from bench_record import append_jsonl, git_commit, peak_rss_mb

VARIANTS = {"short": (30, 5), "full": (250, 100)}
REFINE_VARIANTS = {
    "cxrad": {},
    "reference": {"normalize": "none", "ema_decay": 0.0, "precise_bn": False},
    "norm-only": {"ema_decay": 0.0, "precise_bn": False},
    "ema-bn-only": {"normalize": "none"},
    "jitter": {"level_jitter": (1.0, 2.0)},
    "jitter-wide": {"level_jitter": (0.5, 3.0)},
    "clip99": {"clip_quantile": 0.99},
    "scalar-norm": {"normalize": "normal-mean"},
    "donors-top-half": {"donor_fraction": 0.5},
    "donors-top-quarter": {"donor_fraction": 0.25},
    # the reference FPI (blend in the image, donors from Dn) with every other cxrad default
    "image-space": {"space": "image"},
    # the reference end to end: image-space FPI, raw maps, no EMA, no precise BN
    "reference-fpi": {"space": "image", "normalize": "none", "ema_decay": 0.0, "precise_bn": False},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="short")
    ap.add_argument("--backbone", choices=("ae", "memae", "aeu"), default="ae")
    ap.add_argument("--epochs", type=int, help="reconstruction epochs (default: from --variant)")
    ap.add_argument("--asr-epochs", type=int, help="ASR-Net epochs (default: from --variant)")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="image side in px (default: the benchmark's 64)")
    ap.add_argument("--depth", type=int, default=4,
                    help="stride-2 stages per autoencoder (4: reference; 5 at --size 128 keeps the 4 x 4 bottleneck)")
    add_intensity_option(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast of the training forward passes, ensembles "
                    "and ASR-Net (changes results; fast on GPUs and on CPUs with AMX or AVX512-BF16)")
    ap.add_argument("--batch-size", type=int, default=64, help="ensemble batch size (default: the paper's 64)")
    ap.add_argument("--independent-init", action="store_true",
                    help="UDM members start independently of the NDM members (the reference; cxrad pairs them)")
    ap.add_argument("--ensemble-ema-decay", type=float, help="EMA of the ensembles' weights (0: the reference's "
                                                             "last step; default: cxrad's)")
    ap.add_argument("--val-normals", default="0",
                    help="normal images held out of Dn for the threshold: 0 (default, the paper's protocol: Dn "
                         "trains on all of them), N, or auto (cxrad prepare's default)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--workdir", type=Path, default=REPO / "cxrad-work" / "bench")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--labels", type=Path, default=SPLITS / "zhanglab-ocssl.csv")
    ap.add_argument("--refine-inputs", default="dual,intra",
                    help="which ASR-Nets to train: dual,intra (default) or dual alone (saves a third of the "
                         "CPU time when only R_dual is studied; R_intra is then absent from the record)")
    ap.add_argument("--log-epoch-auc", action="store_true",
                    help="also log R_dual/R_intra test AUC after each ASR epoch (analysis only, never used to select)")
    ap.add_argument("--epoch-auc-every", type=int, default=1, metavar="N",
                    help="with --log-epoch-auc and in the study: the analysis after every N-th ASR epoch and the "
                         "last (each costs a third of an epoch: precise BN of the kept model, then the test set)")
    ap.add_argument("--study-seeds", default="", help="e.g. 0,1,2: ASR stability study after the pipeline")
    ap.add_argument("--study-variants", default="cxrad,reference")
    ap.add_argument("--study-inputs", choices=("dual", "intra"), default="dual", help="ASR inputs in the study")
    ap.add_argument("--skip-pipeline", action="store_true", help="only the study, on an existing run")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.source = args.source or data_file(KERMANY_224, args.data)
    args.refine_inputs = [m for m in args.refine_inputs.split(",") if m]
    if args.val_normals != "auto" and not args.val_normals.isdigit():
        ap.error("--val-normals: a count or auto")
    val_tag = ("" if args.val_normals == "0" else f"-v{args.val_normals}") + \
        intensity_tag(args.intensity)
    args.val_normals = None if args.val_normals == "auto" else int(args.val_normals)
    if args.epoch_auc_every < 1:
        ap.error("--epoch-auc-every: a whole number of epochs, 1 or more")
    if not args.refine_inputs or set(args.refine_inputs) - {"dual", "intra"}:
        ap.error("--refine-inputs: a comma-separated list of dual and intra")

    import torch

    torch.set_num_threads(args.threads)
    from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig
    from cxrad.devices import device_name, resolve_device
    from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig

    epochs, asr_epochs = VARIANTS[args.variant]
    epochs = args.epochs or epochs
    asr_epochs = args.asr_epochs or asr_epochs
    device = resolve_device(args.device)
    prepared = args.workdir / "prepared" / f"{args.labels.stem}-{args.size}{val_tag}"   # e.g. zhanglab-ocssl-64
    ens_ema = EnsembleConfig.ema_decay if args.ensemble_ema_decay is None else args.ensemble_ema_decay
    run = args.workdir / "runs" / (f"{args.backbone}-e{epochs}-a{asr_epochs}-k{args.members}-s{args.seed}"
                                   + (f"-px{args.size}" if args.size != 64 else "")
                                   + (f"-d{args.depth}" if args.depth != 4 else "")
                                   + val_tag + ("-amp" if args.amp else "")
                                   + ("-indep" if args.independent_init else "")
                                   + (f"-ema{ens_ema:g}" if ens_ema != EnsembleConfig.ema_decay else ""))
    cfgs = {
        "prepare": PrepareConfig(size=args.size, workers=max(1, args.threads), val_normals=args.val_normals,
                                 intensity=args.intensity),
        "ensemble": EnsembleConfig(backbone=args.backbone, members=args.members, epochs=epochs, seed=args.seed,
                                   device=args.device, amp=args.amp, batch_size=args.batch_size, depth=args.depth,
                                   paired_init=not args.independent_init, ema_decay=ens_ema),
        "synth": SynthConfig(epochs=asr_epochs, seed=args.seed),
        "refine": RefineConfig(epochs=asr_epochs, seed=args.seed, device=args.device, amp=args.amp),
        "score": ScoreConfig(split="test", device=args.device),
        "evaluate": EvaluateConfig(device=args.device),
    }
    if not args.skip_pipeline:
        try:
            record = run_pipeline(args, prepared, run, cfgs, device, device_name(device), asr_epochs)
        except RefineStopped as stopped:
            # not a result: the ensembles' own scores and the ASR epochs done, apart from zhanglab.jsonl;
            # the same command resumes the refine
            append_jsonl(args.results / "zhanglab-partial.jsonl", stopped.record)
            print(f"{stopped}; partial record appended to {args.results / 'zhanglab-partial.jsonl'}",
                  file=sys.stderr)
            return stopped.exit_code
        append_jsonl(args.results / "zhanglab.jsonl", record)
        print(json.dumps({k: record[k] for k in ("auc", "ap", "timings_s")}, indent=1))
    if args.study_seeds:
        study(args, run, cfgs["refine"], [int(s) for s in args.study_seeds.split(",")],
              args.study_variants.split(","), asr_epochs, device_name(device))
    return 0


class RefineStopped(Exception):
    """A refine was stopped by SIGTERM/SIGUSR1 after its checkpoint; ``record`` holds what is known."""

    def __init__(self, message: str, exit_code: int, record: dict):
        super().__init__(message)
        self.exit_code, self.record = exit_code, record


def _epoch_logger(test_maps, labels, store: list):
    """on_epoch callback: test AUC/AP of the kept model after an epoch — analysis only."""
    from cxrad.methods.ddad.refinement import refined_maps
    from cxrad.metrics import auc, average_precision

    def cb(epoch, kept):
        s = refined_maps(kept(), test_maps).reshape(len(labels), -1).mean(1)
        store.append({"epoch": epoch, "auc": auc(labels, s), "ap": average_precision(labels, s)})
        print(f"  [analysis only] epoch {epoch}: test AUC {100 * store[-1]['auc']:.1f}", flush=True)
    return cb


def _final_scores(folder: Path, test_maps, labels, device) -> dict:
    """Test AUC/AP of the ASR-Net saved in a refine folder (the model that is kept) — report only."""
    from cxrad.methods.ddad.refinement import load_asr, refined_maps
    from cxrad.metrics import auc, average_precision

    s = refined_maps(load_asr(folder, device), test_maps, device).reshape(len(labels), -1).mean(1)
    return {"auc": auc(labels, s), "ap": average_precision(labels, s)}


def _kept_epoch_log(path: Path, resume: bool, test_maps, labels, every: int = 1, last: int = 0):
    """Per-epoch analysis log that outlives the process -> (rows, on_epoch callback).

    ``rows`` starts with what ``path`` holds when ``resume`` (an interrupted refine continues), else
    empty and ``path`` is cleared; the callback adds a row to ``rows`` and appends it to ``path``
    after every ``every``-th epoch and the ``last``, so a refine resumed in a later session still
    reports them all.
    """
    rows = [json.loads(line) for line in path.read_text().splitlines() if line] if resume and path.is_file() else []
    if not resume:
        path.unlink(missing_ok=True)
    log_epoch = _epoch_logger(test_maps, labels, rows)

    def on_epoch(epoch, kept):
        if epoch % every == 0 or epoch == last:
            log_epoch(epoch, kept)
            append_jsonl(path, rows[-1])
    return rows, on_epoch


def _checkpoint_epoch(ckpt: Path) -> int:
    """The epochs a refine checkpoint holds (0 without one): where a stopped refine stopped, since a
    stop signal checkpoints the finished epoch. Not the last logged row, which under
    --epoch-auc-every N lags it by up to N - 1 epochs."""
    from cxrad.artifacts import load_torch

    if not ckpt.is_file():
        return 0
    return int(load_torch(ckpt, fix=f"delete {ckpt} to start the refine over.")["epoch"])


def _last_per_epoch(rows: list) -> list:
    """One row per epoch, in order: the last one, since a resumed refine reruns the epochs after
    its checkpoint."""
    return sorted({r["epoch"]: r for r in rows}.values(), key=lambda r: r["epoch"])


def _test_maps(run: Path, device):
    """The test split through the run's ensembles -> (maps {"A_*": (N, H, W)}, labels (N,),
    image scores {"A_*": (N,)})."""
    from cxrad.io.store import load_split
    from cxrad.methods.ddad.ensembles import maps_of_images, open_ensembles
    from cxrad.runs import open_run

    info = open_run(run)
    ens = open_ensembles(info, device)
    test = load_split(info.prepared, "test")
    maps, scores = maps_of_images(ens, test.images)
    return maps, test.labels, scores


def run_pipeline(args, prepared: Path, run: Path, cfgs: dict, device, dev_name: str, asr_epochs: int) -> dict:
    """All stages, resuming from what ``run`` holds -> the record; raises :class:`RefineStopped`
    when a stop signal ends a refine (with --log-epoch-auc: what the run knows so far)."""
    from cxrad.errors import CxradError
    from cxrad.layout import ASR_CHECKPOINT, RunLayout
    from cxrad.methods.ddad.refine import refine
    from cxrad.methods.ddad.synthesize import synthesize
    from cxrad.methods.ddad.train_ensemble import has_checkpoints, train_ensemble
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.prepare import prepare
    from cxrad.stages.score import score

    timings: dict[str, float] = {}
    per_epoch: dict[str, list] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"[{name}] {timings[name]:.1f} s", flush=True)
        return out

    timed("prepare", lambda: prepare(args.source, prepared, cfgs["prepare"], labels=args.labels))
    # a run cut short (end of a session, SIGTERM) continues from its checkpoints when started again
    timed("train-ensemble", lambda: train_ensemble(prepared, run, cfgs["ensemble"],
                                                   resume=has_checkpoints(run, cfgs["ensemble"])))
    timed("synthesize", lambda: synthesize(run, cfgs["synth"]))
    test_maps = _test_maps(run, device) if args.log_epoch_auc else None
    for mode in args.refine_inputs:
        cb = None
        ckpt = RunLayout(run).refine(mode) / ASR_CHECKPOINT
        if test_maps is not None:
            rows, cb = _kept_epoch_log(args.workdir / "epoch-logs" / f"{run.name}-R_{mode}.jsonl", ckpt.is_file(),
                                       *test_maps[:2], every=args.epoch_auc_every, last=asr_epochs)
        rcfg = dataclasses.replace(cfgs["refine"], inputs=mode)
        try:
            timed(f"refine-{mode}", lambda rcfg=rcfg, cb=cb, ckpt=ckpt: refine(run, rcfg, resume=ckpt.is_file(),
                                                                                on_epoch=cb))
        except CxradError as exc:
            if exc.exit_code < 128 or test_maps is None:   # only a stop signal leaves a partial record
                raise
            per_epoch[f"R_{mode}"] = _last_per_epoch(rows)
            raise RefineStopped(str(exc), exc.exit_code, {
                **_record_head(args, prepared, run, cfgs, dev_name, asr_epochs),
                "status": f"stopped by a signal in refine {mode} after ASR epoch {_checkpoint_epoch(ckpt)} of "
                          f"{asr_epochs}; A_* are the ensembles' final test scores, R_* only the per-epoch "
                          "analysis AUC",
                "epoch_auc_every": args.epoch_auc_every,
                **_ensemble_test_metrics(*test_maps[1:]), "timings_s": timings,
                "per_epoch_test_auc_analysis_only": per_epoch,
            }) from None
        if test_maps is not None:
            per_epoch[f"R_{mode}"] = _last_per_epoch(rows)
    timed("score", lambda: score(run, cfgs["score"]))
    metrics = timed("evaluate", lambda: evaluate(run, cfgs["evaluate"]))
    timings["total"] = round(sum(timings.values()), 2)
    return {
        **_record_head(args, prepared, run, cfgs, dev_name, asr_epochs),
        "auc": {k: round(100 * v["auc"], 2) for k, v in metrics["scores"].items()},
        "ap": {k: round(100 * v["ap"], 2) for k, v in metrics["scores"].items()},
        "metrics": metrics["scores"], "timings_s": timings, "peak_rss_mb": round(peak_rss_mb(), 1),
        "per_epoch_test_auc_analysis_only": per_epoch, "epoch_auc_every": args.epoch_auc_every,
        "ensemble_seconds_per_epoch": _ensemble_epoch_times(run),
    }


def _ensemble_test_metrics(labels, scores: dict) -> dict:
    """AUC/AP (%) of the ensembles' image scores (A_rec, A_intra, A_inter) on the test split."""
    from cxrad.metrics import auc, average_precision

    return {"auc": {k: round(100 * auc(labels, v), 2) for k, v in scores.items()},
            "ap": {k: round(100 * average_precision(labels, v), 2) for k, v in scores.items()}}


def _record_head(args, prepared: Path, run: Path, cfgs: dict, dev_name: str, asr_epochs: int) -> dict:
    """What a record says about the run itself: settings, data, machine, provenance."""
    return {
        "benchmark": f"ZhangLab-OCSSL-{args.size}", "variant": args.variant, "backbone": args.backbone,
        "depth": args.depth,
        "epochs": cfgs["ensemble"].epochs, "asr_epochs": asr_epochs, "members": args.members, "seed": args.seed,
        "refine_inputs": args.refine_inputs, "amp": cfgs["ensemble"].amp,
        "batch_size": cfgs["ensemble"].batch_size, "paired_init": cfgs["ensemble"].paired_init,
        "ensemble_ema_decay": cfgs["ensemble"].ema_decay, "labels": args.labels.name,
        "intensity": cfgs["prepare"].intensity,
        "val_normals": "auto" if args.val_normals is None else args.val_normals,
        "split_sizes": _split_sizes(prepared),
        "device": dev_name, "host": platform.node(), "threads": args.threads, "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": str(run), "prepared": str(prepared),
    }


def _split_sizes(prepared: Path) -> dict:
    """Images per stored split of the prepared data (Dn, Du, test, val)."""
    from cxrad.io.store import SET_NAMES, open_prepared

    with open_prepared(prepared) as h5:
        return {name: int(len(h5[name]["labels"])) for name in SET_NAMES if name in h5}


def _ensemble_epoch_times(run: Path) -> dict:
    """Mean wall seconds per epoch of each module's members, from the ensemble manifest."""
    try:
        m = json.loads((run / "ensemble" / "manifest.json").read_text())
        epochs = m["config"]["epochs"]
        return {mod: round(sum(x["wall_s"] for x in xs) / len(xs) / epochs, 2) for mod, xs in m["members"].items()}
    except Exception:
        return {}


def study(args, run: Path, base_cfg, seeds: list[int], variants: list[str], asr_epochs: int, dev_name: str) -> None:
    from cxrad.devices import resolve_device
    from cxrad.layout import ASR_CHECKPOINT
    from cxrad.methods.ddad.config import SynthConfig
    from cxrad.methods.ddad.refine import refine
    from cxrad.methods.ddad.synthesize import synthesize

    device = resolve_device(args.device)
    test_maps, labels, scores = _test_maps(run, device)
    base = _ensemble_test_metrics(labels, scores)["auc"]
    for seed in seeds:  # seeds outer: a partial study still compares the variants seed by seed
        for variant in variants:
            spec = dict(REFINE_VARIANTS[variant])
            space = spec.pop("space", "auto")
            synth = run / "study" / f"synth-{space}-s{seed}"
            synthesize(run, SynthConfig(epochs=asr_epochs, seed=seed, space=space), out=synth)
            cfg = dataclasses.replace(base_cfg, inputs=args.study_inputs, seed=seed, **spec)
            out = run / "study" / f"refine-{variant}-{args.study_inputs}-s{seed}"
            # a full-budget study outlives a session: continue from the refine checkpoint
            resume = (out / ASR_CHECKPOINT).is_file()
            log, on_epoch = _kept_epoch_log(run / "study" / f"{out.name}.epochs.jsonl", resume, test_maps, labels,
                                            every=args.epoch_auc_every, last=asr_epochs)
            t0 = time.perf_counter()
            refine(run, cfg, synth=synth, out=out, resume=resume, force=not resume, on_epoch=on_epoch)
            log = _last_per_epoch(log)
            final = _final_scores(out, test_maps, labels, device)   # the saved model, however it was reached
            rec = {"benchmark": f"ZhangLab-OCSSL-{args.size}", "labels": args.labels.name, "run": str(run),
                   "variant": variant,
                   "inputs": args.study_inputs,
                   "synth_space": space,
                   "seed": seed, "asr_epochs": asr_epochs, "refine_config": dataclasses.asdict(cfg),
                   "final_auc": round(100 * final["auc"], 2), "final_ap": round(100 * final["ap"], 2),
                   "per_epoch_test_auc_analysis_only": [round(100 * r["auc"], 2) for r in log],
                   "per_epoch_test_auc_epochs": [r["epoch"] for r in log],
                   "baseline_auc": base, "seconds": round(time.perf_counter() - t0, 1), "device": dev_name,
                   "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            append_jsonl(args.results / "zhanglab-stability.jsonl", rec)
            print(json.dumps({k: rec[k] for k in ("variant", "seed", "final_auc", "per_epoch_test_auc_analysis_only")}),
                  flush=True)


if __name__ == "__main__":
    from cxrad.errors import CxradError

    try:
        sys.exit(main())
    except CxradError as exc:   # stopped (SIGTERM: checkpoint saved, same command resumes) or a bad input
        if exc.exit_code >= 128:   # the stage's own resume hint names a cxrad command; here it is this one
            print(f"zhanglab.py: {exc} From this script: start the same command again to resume.", file=sys.stderr)
            sys.exit(exc.exit_code)
        sys.exit(f"zhanglab.py: {exc}")
