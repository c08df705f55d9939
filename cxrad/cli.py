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
from cxrad.config import (
    EnsembleConfig,
    EvaluateConfig,
    PrepareConfig,
    PredictConfig,
    RefineConfig,
    ScoreConfig,
    SynthConfig,
)
from cxrad.errors import CxradError

app = typer.Typer(
    name="cxrad",
    help="Abnormal chest X-ray detection by dual-distribution discrepancy (DDAD) with ASR-Net.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P, E, S, Y, R, V, D = (PrepareConfig(), EnsembleConfig(), ScoreConfig(), SynthConfig(),
                       RefineConfig(), EvaluateConfig(), PredictConfig())


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
    from cxrad.stages.pipeline import run_pipeline

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


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point: user errors -> one line on stderr, exit code from the error."""
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
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("cxrad: aborted", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
