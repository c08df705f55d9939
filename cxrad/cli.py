"""The `cxrad` command: a thin layer that parses options and calls one stage function each.

Defaults come from the config dataclasses in :mod:`cxrad.config`; user errors
(:class:`cxrad.errors.CxradError`) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cxrad import __version__, progress
from cxrad.config import CompareConfig, EvaluateConfig, PredictConfig, PrepareConfig, ScoreConfig
from cxrad.errors import CxradError
from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig
from cxrad.thresholds import MIN_HELD_OUT_NORMALS

app = typer.Typer(
    name="cxrad",
    help="Abnormal chest X-ray detection by dual-distribution discrepancy (DDAD) with ASR-Net.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# the defaults every option shows: the config dataclasses are their one source
PREPARE, ENSEMBLE, SCORE, SYNTH = PrepareConfig(), EnsembleConfig(), ScoreConfig(), SynthConfig()
REFINE, EVALUATE, PREDICT = RefineConfig(), EvaluateConfig(), PredictConfig()
COMPARE = CompareConfig()
AMP_HELP = ("bf16 autocast of the training forward pass (off by default; changes results; fast on GPUs and on CPUs "
            "with AMX or AVX512-BF16, slower than fp32 on other CPUs).")


def _version_callback(value: bool) -> None:
    if not value:
        return
    lines = [f"cxrad {__version__}"]
    try:
        import torch

        cuda = torch.version.cuda or "none"
        avail = "available" if torch.cuda.is_available() else "not available"
        lines.append(f"torch {torch.__version__} (CUDA {cuda}, {avail})")
    except Exception as exc:  # pragma: no cover - torch is a hard dependency
        lines.append(f"torch: not importable ({exc})")
    for mod in ("h5py", "pydicom", "numpy"):
        try:
            lines.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            lines.append(f"{mod}: not installed")
    typer.echo("\n".join(lines))
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print cxrad, torch/CUDA, h5py, pydicom versions and exit."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Plain log lines instead of progress bars "
                                     "(also: CXRAD_NO_PROGRESS=1)."),
) -> None:
    if no_progress:
        progress.disable()


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------
@app.command()
def inspect(
    path: Path = typer.Argument(..., help="An artifact folder (prepared data, run, or a stage folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print manifest and summary as one JSON object."),
) -> None:
    """Print an artifact's manifest and a summary (for data: counts per split and label, image size)."""
    from cxrad.stages.inspect import inspect_artifact

    result = inspect_artifact(path)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        from cxrad.stages.inspect import render_text

        typer.echo(render_text(result))


# --------------------------------------------------------------------------------------------
# stage commands are added below, one small function each
# --------------------------------------------------------------------------------------------


# -- prepare -----------------------------------------------------------------------------------
@app.command()
def prepare(
    source: Path = typer.Argument(..., help="Folder or uncompressed .tar of DICOM/PNG/JPEG files "
                                  "(folder layout [top/]{train,test}/{NORMAL,<class>}/ unless --labels/--split-file)."),
    out: Path = typer.Option(..., "--out", help="Output folder for data.h5 + manifest.json."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV path,label[,split][,patient_id]; "
                                          "paths relative to SOURCE; label 0/1/empty; split "
                                          "normal|unlabeled|test|val|train|anomaly."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="Authors' benchmark data.json."),
    anomalies: Optional[Path] = typer.Option(None, "--anomalies", help="CSV path,label[,split][,patient_id] of "
                                             "labelled abnormal training images (label 1, split anomaly or empty) "
                                             "for weakly supervised methods; the first --anomaly-shots rows are kept."),
    anomaly_shots: int = typer.Option(PREPARE.anomaly_shots, "--anomaly-shots",
                                      help="Keep the first K labelled anomalies (--anomalies, or rows with split "
                                           "anomaly in --labels) as the 'anomaly' set; only weakly supervised "
                                           "methods read it."),
    size: int = typer.Option(PREPARE.size, "--size", help="Output side in pixels."),
    intensity: str = typer.Option(PREPARE.intensity, "--intensity",
                                  help="percentile: each image between its --percentiles, then clipped "
                                       "(decided on the dev split) | minmax: between its minimum and maximum."),
    percentiles: tuple[float, float] = typer.Option(PREPARE.percentiles, "--percentiles", help="Low/high for "
                                                                                               "percentile."),
    crop: str = typer.Option(PREPARE.crop, "--crop", help="none | center (square centre crop before resizing)."),
    no_voi_lut: bool = typer.Option(False, "--no-voi-lut", help="Ignore DICOM VOI LUT / window."),
    allow_modality: List[str] = typer.Option([], "--allow-modality", help="Accept this DICOM modality too "
                                                                          "(repeatable)."),
    store_dtype: str = typer.Option(PREPARE.store_dtype, "--store-dtype", help="float16 | uint8"),
    workers: Optional[int] = typer.Option(PREPARE.workers, "--workers", help="Decoding processes [default: usable "
                                                                             "CPUs]."),
    max_megapixels: float = typer.Option(PREPARE.max_megapixels, "--max-megapixels",
                                         help="Largest image decoded, in megapixels (bounds memory): larger JPEGs "
                                              "are decoded at 1/2, 1/4 or 1/8 scale, other files rejected."),
    normal_count: Optional[int] = typer.Option(PREPARE.normal_count, "--normal-count", help="Dn size."),
    unlabeled_count: Optional[int] = typer.Option(PREPARE.unlabeled_count, "--unlabeled-count", help="Du size."),
    anomaly_rate: Optional[float] = typer.Option(PREPARE.anomaly_rate, "--anomaly-rate", help="Share of abnormal "
                                                                                              "images in Du."),
    test_fraction: float = typer.Option(PREPARE.test_fraction, "--test-fraction", help="Hold-out when SOURCE has no "
                                                                                       "test set."),
    val_normals: Optional[int] = typer.Option(PREPARE.val_normals, "--val-normals",
                                              help="Hold this many normal images out of training; the decision "
                                                   "threshold comes from their scores. Default: 10 % of Dn (at "
                                                   "most 200) when Dn has 200 images or more; 0: none."),
    seed: int = typer.Option(PREPARE.seed, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact at --out."),
) -> None:
    """Decode, preprocess and split chest X-rays into OUT/data.h5 (normal, unlabeled, test[, val])."""
    from cxrad.stages.prepare import prepare as run_prepare

    cfg = PrepareConfig(size=size, intensity=intensity, percentiles=tuple(percentiles), crop=crop,
                        voi_lut=not no_voi_lut, allow_modality=tuple(allow_modality), store_dtype=store_dtype,
                        workers=workers, max_megapixels=max_megapixels, normal_count=normal_count,
                        unlabeled_count=unlabeled_count, anomaly_rate=anomaly_rate, test_fraction=test_fraction,
                        val_normals=val_normals, seed=seed, anomaly_shots=anomaly_shots)
    typer.echo(run_prepare(source, out, cfg, labels=labels, split_file=split_file, force=force, anomalies=anomalies))


# -- train-ensemble ----------------------------------------------------------------------------
@app.command("train-ensemble")
def train_ensemble(
    prepared: Path = typer.Argument(..., help="Prepared data folder (`cxrad prepare`)."),
    run: Path = typer.Option(..., "--run", help="Run folder to create or continue."),
    module: str = typer.Option(ENSEMBLE.module, "--module", help="ndm (Dn) | udm (Dn ∪ Du) | both"),
    members: int = typer.Option(ENSEMBLE.members, "--members", help="K members per module (>= 2)."),
    backbone: str = typer.Option(ENSEMBLE.backbone, "--backbone", help="ae | memae | aeu"),
    epochs: int = typer.Option(ENSEMBLE.epochs, "--epochs"),
    batch_size: int = typer.Option(ENSEMBLE.batch_size, "--batch-size"),
    lr: float = typer.Option(ENSEMBLE.lr, "--lr"),
    seed: int = typer.Option(ENSEMBLE.seed, "--seed"),
    depth: int = typer.Option(ENSEMBLE.depth, "--depth", help="Stride-2 stages per network (4 = reference at 64 px; "
                                                              "5 at 128 px keeps the 4 x 4 bottleneck)."),
    paired_init: bool = typer.Option(ENSEMBLE.paired_init, "--paired-init/--independent-init",
                                     help="UDM member i starts like NDM member i (default) or independently "
                                          "(reference)."),
    ema_decay: float = typer.Option(ENSEMBLE.ema_decay, "--ema-decay",
                                    help="Save an exponential moving average of the weights (0 = last step, "
                                         "reference)."),
    checkpoint_every: int = typer.Option(ENSEMBLE.checkpoint_every, "--checkpoint-every", help="Epochs between "
                                                                                               "checkpoints."),
    member: Optional[int] = typer.Option(None, "--member", help="Train only member i (one process per member; "
                                         "default under SLURM: from SLURM_ARRAY_TASK_ID)."),
    device: str = typer.Option(ENSEMBLE.device, "--device", help="auto | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(ENSEMBLE.amp, "--amp/--no-amp", help=AMP_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoints."),
    force: bool = typer.Option(False, "--force", help="Retrain finished members / replace a different run."),
) -> None:
    """Train the NDM and UDM ensembles (DDAD stage 1) -> RUN/ensemble/{ndm,udm}/member-<i>.pt."""
    from cxrad.methods.ddad.train_ensemble import train_ensemble as run_train

    cfg = EnsembleConfig(module=module, members=members, backbone=backbone, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, depth=depth, paired_init=paired_init, ema_decay=ema_decay,
                         checkpoint_every=checkpoint_every, device=device, amp=amp)
    typer.echo(run_train(prepared, run, cfg, member=member, resume=resume, force=force))


# -- fit: methods with one trained model (SimSID, PatchCore, WSCXR) ------------------------------
@app.command()
def fit(
    prepared: Path = typer.Argument(..., help="Prepared data folder (`cxrad prepare`)."),
    run: Path = typer.Option(..., "--run", help="Run folder to create or continue."),
    method: str = typer.Option(..., "--method", help="simsid | patchcore | wscxr (docs/methods.md)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file whose [<method>] table sets options "
                                                                 "(a `cxrad run` config works)."),
    set_: List[str] = typer.Option([], "--set", help="One option as key=value (TOML value syntax), after "
                                                     "--config; repeatable. Keys: docs/cli.md."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/model/checkpoint.ckpt."),
    force: bool = typer.Option(False, "--force", help="Retrain / replace a run of another configuration."),
) -> None:
    """Train a single-model method (SimSID, PatchCore, WSCXR) on prepared data -> RUN/model/."""
    from cxrad.methods.fitting import fit as run_fit
    from cxrad.methods.fitting import method_config

    cfg = method_config(method, config_file=config, assignments=set_, device=device)
    typer.echo(run_fit(prepared, run, method, cfg, resume=resume, force=force))


# -- score / synthesize / refine / evaluate (DDAD stage 2 and evaluation) ----------------------
@app.command()
def score(
    run: Path = typer.Argument(..., help="A run folder with trained ensembles (`cxrad train-ensemble`)."),
    split: str = typer.Option(SCORE.split, "--split", help="test | val | normal | unlabeled | all (normal is always "
                                                           "added)."),
    batch_size: int = typer.Option(SCORE.batch_size, "--batch-size"),
    device: str = typer.Option(SCORE.device, "--device", help="auto | cpu | cuda | cuda:N"),
    force: bool = typer.Option(False, "--force", help="Replace existing maps."),
) -> None:
    """Every map and image score of the run's method on a split (DDAD-ASR: A_* and R_*) -> RUN/maps/<split>.h5."""
    from cxrad.stages.score import score as run_score

    typer.echo(run_score(run, ScoreConfig(split=split, batch_size=batch_size, device=device), force=force))


@app.command()
def synthesize(
    run: Path = typer.Argument(..., help="A run folder (`cxrad train-ensemble`)."),
    epochs: int = typer.Option(SYNTH.epochs, "--epochs", help="ASR training epochs to draw FPI recipes for."),
    seed: int = typer.Option(SYNTH.seed, "--seed"),
    space: str = typer.Option(SYNTH.space, "--space",
                              help="maps (blend discrepancy maps, donors from the unlabelled set), image "
                                   "(the reference: blend images, donors from the normal set), or auto "
                                   "(maps when unlabelled images exist)."),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """FPI pseudo-anomaly recipes for every ASR epoch -> RUN/synth/fpi.h5 + preview.png."""
    from cxrad.methods.ddad.synthesize import synthesize as run_synth

    typer.echo(run_synth(run, SynthConfig(epochs=epochs, seed=seed, space=space), force=force))


@app.command()
def refine(
    run: Path = typer.Argument(..., help="A run with ensembles and FPI recipes (`cxrad synthesize`)."),
    inputs: str = typer.Option(REFINE.inputs, "--inputs", help="dual ([A_inter, A_intra]) or intra (A_intra)."),
    epochs: int = typer.Option(REFINE.epochs, "--epochs"),
    batch_size: int = typer.Option(REFINE.batch_size, "--batch-size"),
    lr: float = typer.Option(REFINE.lr, "--lr"),
    seed: int = typer.Option(REFINE.seed, "--seed"),
    normalize: str = typer.Option(REFINE.normalize, "--normalize",
                                  help="normal-pixel-mean (default: divide by the normal images' mean map), "
                                       "normal-mean (one scalar per channel) or none (reference: raw maps)."),
    ema_decay: float = typer.Option(REFINE.ema_decay, "--ema-decay", help="EMA of the weights; 0 keeps the raw "
                                                                          "final weights."),
    precise_bn: bool = typer.Option(REFINE.precise_bn, "--precise-bn/--no-precise-bn",
                                    help="Recompute BatchNorm statistics of the kept model over one synthetic epoch."),
    donor_fraction: float = typer.Option(REFINE.donor_fraction, "--donor-fraction",
                                         help="Map-space FPI: blend only from this fraction of the unlabelled donor "
                                              "images, those with the highest input maps (1: all)."),
    device: str = typer.Option(REFINE.device, "--device", help="auto | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(REFINE.amp, "--amp/--no-amp", help=AMP_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/refine/<inputs>/checkpoint.ckpt."),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Train ASR-Net on maps of FPI pseudo-anomalies -> RUN/refine/<inputs>/asr.pt."""
    from cxrad.methods.ddad.refine import refine as run_refine

    cfg = RefineConfig(inputs=inputs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, normalize=normalize,
                       ema_decay=ema_decay, precise_bn=precise_bn, donor_fraction=donor_fraction, device=device,
                       amp=amp)
    typer.echo(run_refine(run, cfg, resume=resume, force=force))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run with maps and/or ASR nets."),
    split: str = typer.Option(EVALUATE.split, "--split", help="A labelled split (default: test)."),
    percentile: float = typer.Option(EVALUATE.threshold_percentile, "--threshold-percentile",
                                     help="Threshold = this percentile of the calibration normals' scores."),
    threshold_from: str = typer.Option(EVALUATE.threshold_from, "--threshold-from",
                                       help="auto (held-out val normals when >= 20, else training normals) | val | "
                                            "normal"),
    device: str = typer.Option(EVALUATE.device, "--device"),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """AUC/AP/F1 and thresholded metrics of every score, plots and overlays -> RUN/eval/."""
    from cxrad.report.tables import print_metrics_table
    from cxrad.stages.evaluate import evaluate as run_eval

    metrics = run_eval(run, EvaluateConfig(split=split, threshold_percentile=percentile, threshold_from=threshold_from,
                                           device=device), force=force)
    print_metrics_table(metrics)
    typer.echo(Path(run) / "eval")


# -- compare -----------------------------------------------------------------------------------
@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders, each evaluated (`cxrad evaluate`) on the same images."),
    out: Path = typer.Option(..., "--out", help="Output folder for compare.md, compare.json, roc.png."),
    split: str = typer.Option(COMPARE.split, "--split", help="The split the runs were evaluated on."),
    ci_level: float = typer.Option(COMPARE.ci_level, "--ci-level", help="Level of the AUC and AP intervals."),
    bootstrap_resamples: int = typer.Option(COMPARE.bootstrap_resamples, "--bootstrap-resamples",
                                            help="Stratified bootstrap resamples for the AP intervals."),
    bootstrap_seed: int = typer.Option(COMPARE.bootstrap_seed, "--bootstrap-seed"),
    force: bool = typer.Option(False, "--force", help="Replace an existing comparison at --out."),
) -> None:
    """Every score of every run on one test set: AUC and AP with confidence intervals, paired DeLong test
    against the best, thresholded metrics, one ROC figure -> OUT/compare.md, compare.json, roc.png."""
    from cxrad.stages.compare import compare as run_compare

    cfg = CompareConfig(split=split, ci_level=ci_level, bootstrap_resamples=bootstrap_resamples,
                        bootstrap_seed=bootstrap_seed)
    result = run_compare(runs, out, cfg, force=force)
    best = result["best"]
    typer.echo(f"{len(result['rows'])} score(s) of {len(result['runs'])} run(s) on {result['n_normal']} normal / "
               f"{result['n_abnormal']} abnormal images; best AUC: {best['run']} {best['score']}")
    typer.echo(Path(out) / "compare.md")


# --------------------------------------------------------------------------------------------
# run: the whole pipeline
# --------------------------------------------------------------------------------------------
@app.command("run")
def run_cmd(
    config: Optional[Path] = typer.Argument(None, help="Pipeline TOML (see workflows/configs/). "
                                            "Omitted: the embedded default on sample_data/."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where prepared sets and runs go "
                                           "[default: $CXRAD_HOME, else ./cxrad-work]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would run and why; run nothing."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Run only this stage (repeatable): "
                                              "prepare, train-ensemble, synthesize, refine, score, evaluate."),
    force: bool = typer.Option(False, "--force", help="Redo stages whose output exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (paths, steps, metrics) as JSON."),
) -> None:
    """Run prepare → train-ensemble → synthesize → refine → score → evaluate, skipping finished stages."""
    from cxrad.pipeline import run_pipeline

    result = run_pipeline(config, workdir, dry_run=dry_run, force=force, stages=stage or None)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if dry_run:
        for s in result["steps"]:
            typer.echo(f"{s['action']:>6}  {s['name']:<16} {s['reason']}  ->  {s['output']}")
    elif result["metrics"]:
        from cxrad.report.tables import print_metrics_table

        print_metrics_table(result["metrics"])
        typer.echo(f"report: {Path(result['run']) / 'eval'}")
    typer.echo(f"prepared data: {result['prepared']}")
    typer.echo(f"run: {result['run']}")


# --------------------------------------------------------------------------------------------
# predict: new studies with a finished run
# --------------------------------------------------------------------------------------------
@app.command()
def predict(
    run: Path = typer.Argument(..., help="A finished run folder (ensembles + ASR-Net)."),
    inputs: List[Path] = typer.Argument(..., help="DICOM/PNG/JPEG files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Output folder for predictions.csv, rejects.csv, overlays/."),
    num_shards: int = typer.Option(PREDICT.num_shards, "--num-shards", help="Split the inputs into N shards ..."),
    shard_id: int = typer.Option(PREDICT.shard_id, "--shard-id", help="... and score shard k (0-based)."),
    overlays: bool = typer.Option(PREDICT.overlays, "--overlays/--no-overlays", help="Write one heat-map PNG per "
                                                                                     "image."),
    device: str = typer.Option(PREDICT.device, "--device", help="auto | cpu | cuda | cuda:N"),
    chunk_size: int = typer.Option(PREDICT.chunk_size, "--chunk-size", help="Images decoded and scored at a "
                                                                             "time (memory grows with it)."),
    calibrate_on: Optional[List[Path]] = typer.Option(
        None, "--calibrate-on", help="Folder (or file) of known-normal studies from this archive: the threshold "
                                     "becomes the "
        f"{EVALUATE.threshold_percentile:g}th percentile of their scores. Repeatable; at least "
        f"{MIN_HELD_OUT_NORMALS} images."),
    force: bool = typer.Option(False, "--force", help="Replace existing predictions at --out."),
) -> None:
    """Score new studies; exit code 1 when some inputs were rejected (they are listed in rejects.csv)."""
    from cxrad.stages.predict import predict as run_predict

    cfg = PredictConfig(num_shards=num_shards, shard_id=shard_id, overlays=overlays, device=device,
                        chunk_size=chunk_size)
    result = run_predict(run, inputs, out, cfg, force=force, calibration=calibrate_on or None)
    typer.echo(f"scored {result.predicted} image(s), rejected {len(result.rejected)}; decision by "
               f"{result.decision_score} > {result.threshold:.4g} ({result.threshold_source})")
    typer.echo(f"predictions: {result.out / 'predictions.csv'}")
    if result.rejected:
        raise typer.Exit(1)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point: user errors -> one line on stderr, exit code from the error."""
    try:
        _main(argv)
    finally:
        from cxrad import locks

        locks.release_all()  # a stage that failed mid-write in this process must not keep its folder locked


def _main(argv: Optional[List[str]]) -> None:
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:  # click returns the exit code of --help / ctx.exit in this mode
            sys.exit(rv)
    except CxradError as exc:
        typer.echo(f"cxrad: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("cxrad: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except OSError as exc:
        # a full disk, a read-only file system, a file where a folder should be: one line, not a traceback
        from cxrad.artifacts import os_error

        err = os_error(exc)
        if err is None:
            raise
        typer.echo(f"cxrad: error: {err}", err=True)
        sys.exit(err.exit_code)
    except Exception as exc:
        # Click's usage errors (unknown option, bad value). Matched by shape, not by class:
        # typer < 0.20 raises click's classes, newer typer raises its vendored copies.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            typer.echo("cxrad: aborted", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
