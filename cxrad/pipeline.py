"""`cxrad run`: the whole chain from one TOML file, skipping what is already done.

prepare → the method's training steps (DDAD-ASR: train-ensemble → synthesize → refine per input
mode) → score → evaluate. A step is skipped when its output folder holds a valid artifact made with
the same configuration (the manifests decide); an interrupted step with a checkpoint is resumed.
Each step calls the same function as its command. This module orchestrates the stages; it is not
a stage itself, and it reaches the method only through cxrad/methods/base.py.

Config file layout (every table optional except ``[data]``; keys are the fields of the stage
config dataclasses; docs/cli.md lists them)::

    [data]
    source = "sample_data"          # folder, .tar, or folder with the split file; relative to the TOML
    labels = "sample_data/labels.csv"   # optional: CSV path,label[,split][,patient_id]
    split_file = "data.json"        # optional: authors' split format
    anomalies = "fewshot.csv"       # optional: labelled abnormal training images ([prepare] anomaly_shots)
    name = "sample"                 # prepared folder name under <workdir>/prepared/

    [method]
    name = "ddad"                   # the method that trains the run (default: ddad)

    [run]
    name = "sample-ae"              # run folder name under <workdir>/runs/
    refine_inputs = ["dual", "intra"]   # method options (DDAD-ASR: which ASR-Nets to train)

    [prepare] ... [score] ... [evaluate]     generic stages
    [ensemble] ... [synthesize] ... [refine] DDAD-ASR's stages
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxrad import methods, progress
from cxrad.artifacts import MANIFEST_NAME, is_valid, read_manifest, same_identity, sha256_file, to_jsonable
from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig, replace_known, toml_value
from cxrad.errors import CxradError
from cxrad.layout import RunLayout
from cxrad.stages.evaluate import evaluate, has_intervals
from cxrad.stages.prepare import _record as prepare_record
from cxrad.stages.prepare import prepare
from cxrad.stages.score import score

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG = Path(__file__).resolve().parent / "defaults" / "sample.toml"
GENERIC_TABLES = ("data", "method", "run", "prepare", "score", "evaluate")


@dataclass
class PipelineConfig:
    """A resolved pipeline: paths made absolute, every stage config filled from the defaults."""

    source: Path
    labels: Path | None
    split_file: Path | None
    data_name: str
    run_name: str
    method: str = "ddad"
    method_tables: dict[str, Any] = field(default_factory=dict)   # the method's validated configs
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    config_path: Path | None = None
    anomalies: Path | None = None   # [data] anomalies: labelled abnormal training images (CSV)


@dataclass
class Step:
    name: str
    output: Path
    action: str            # "run", "resume" or "skip"
    reason: str
    call: Callable[[], Any] = field(repr=False, default=lambda: None)


def default_workdir() -> Path:
    return Path(os.environ.get("CXRAD_HOME") or Path.cwd() / "cxrad-work")


def _resolve_sample_root(config_dir: Path) -> Path:
    """The embedded default names `sample_data`: look beside the TOML's repo, then in the CWD."""
    for cand in (config_dir.parents[1] / "sample_data", Path.cwd() / "sample_data"):
        if cand.is_dir():
            return cand
    raise CxradError(
        "sample_data/ not found (it ships with the source checkout); run `cxrad run` from the cxrad "
        "checkout or pass a config file: cxrad run CONFIG.toml."
    )


def _expand(key: str, value: str) -> str:
    """``${VAR}``/``$VAR`` in a [data] path (e.g. ``${CXRAD_DATA}``, where benchmark data lives)."""
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
        raise CxradError(f"[data] {key} uses ${{{missing[0] if missing else '?'}}}, which is not set; "
                         "export it (e.g. CXRAD_DATA=/path/to/data) or write the path out.")
    return expanded


def _string(value: Any, key: str, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise CxradError(f"{key} = {toml_value(value)}: must be {what} in double quotes.")
    return value


def folder_name(value: Any, key: str) -> str:
    """A data or run name: one folder under <workdir>/prepared/ or <workdir>/runs/, never a path that
    leads elsewhere (``../x``, ``/abs``) or a hidden or empty name."""
    name = _string(value, key, "a folder name")
    if (not name or name.startswith(".") or name != name.strip() or any(c in name for c in "/\\")
            or any(ord(c) < 32 for c in name)):
        raise CxradError(f"{key} = {toml_value(name)}: must be one folder name (not empty, no '/' or '\\', not "
                         "starting with '.', no control characters), e.g. \"sample-ae\".")
    return name


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read a pipeline TOML (or the embedded sample default when ``path`` is None).

    Every table is checked here, before any stage runs (and by ``--dry-run``): unknown tables and
    keys, each value's type and range, the data and run names. Errors name the file and the key.
    """
    embedded = path is None
    cfg_path = DEFAULT_CONFIG if embedded else Path(path)
    if not cfg_path.is_file():
        raise CxradError(f"{cfg_path}: no such config file; pass a TOML file (see workflows/configs/).")
    try:
        raw = tomllib.loads(cfg_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CxradError(f"{cfg_path}: not valid TOML ({exc}); fix the file.") from None
    try:
        return _parse(raw, cfg_path, embedded)
    except CxradError as exc:
        raise CxradError(f"{cfg_path}: {exc}") from None


def _parse(raw: dict[str, Any], cfg_path: Path, embedded: bool) -> PipelineConfig:
    """The resolved pipeline of a parsed TOML file; errors name the table and key (not the file)."""
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise CxradError(f"{name} = {toml_value(table)} is not a table; write [{name}] and its keys below it.")
    method_options = dict(raw.get("method", {}))
    method = methods.get(_string(method_options.pop("name", "ddad"), "[method] name"))
    tables = set(GENERIC_TABLES) | set(method.config_tables)
    unknown = sorted(set(raw) - tables)
    if unknown:
        raise CxradError(f"unknown table(s) [{'], ['.join(unknown)}]; known: {', '.join(sorted(tables))}.")
    if method_options:
        raise CxradError("[method] takes only `name`; method options go in the method's own tables.")
    data, run = dict(raw.get("data", {})), dict(raw.get("run", {}))
    if "source" not in data:
        raise CxradError("[data] needs `source = \"...\"` (a folder or .tar of images).")
    base = _resolve_sample_root(cfg_path.parent).parent if embedded else cfg_path.parent.resolve()

    def _path(key: str) -> Path | None:
        value = data.pop(key, None)
        if value is None:
            return None
        return (base / _expand(key, _string(value, f"[data] {key}", "a path"))).resolve()

    source, labels, split_file = _path("source"), _path("labels"), _path("split_file")
    anomalies = _path("anomalies")
    name_key = "[data] name" if "name" in data else f"[data] name (default: the stem of {source})"
    data_name = folder_name(data.pop("name", source.stem), name_key)
    if data:
        raise CxradError(f"unknown key(s) in [data]: {', '.join(sorted(data))}.")
    run_name = folder_name(run.pop("name"), "[run] name") if "name" in run else None
    method_tables = method.validate_tables({k: raw[k] for k in method.config_tables if k in raw}, run)
    return PipelineConfig(
        source=source, labels=labels, split_file=split_file, data_name=data_name,
        run_name=folder_name(run_name or f"{data_name}-{method.default_run_suffix(method_tables)}", "[run] name"),
        method=method.name, method_tables=method_tables,
        prepare=replace_known(PrepareConfig(), raw.get("prepare", {}), "prepare"),
        score=replace_known(ScoreConfig(), raw.get("score", {}), "score"),
        evaluate=replace_known(EvaluateConfig(), raw.get("evaluate", {}), "evaluate"),
        config_path=cfg_path.resolve(), anomalies=anomalies,
    )


def _status(folder: Path, kind: str, has_checkpoint: Callable[[], bool] | None = None,
            config: Callable[[], Any] | None = None) -> tuple[str, str]:
    """("skip"|"resume"|"run", why) for one stage output; "skip" only when the stage itself would
    find the output up to date (made with ``config()``, from unchanged inputs)."""
    if is_valid(folder, kind):
        stale = _out_of_date(folder, kind, config)
        return ("skip", "valid output exists") if stale is None else ("run", stale)
    if (folder / MANIFEST_NAME).exists():
        try:
            read_manifest(folder, kind)
        except CxradError as exc:
            return "run", f"existing output not usable ({exc})"
    if has_checkpoint is not None and has_checkpoint():
        return "resume", "interrupted: checkpoint found"
    return "run", "no output yet" if not folder.exists() else "unfinished output"


def _out_of_date(folder: Path, kind: str, config: Callable[[], Any] | None) -> str | None:
    """Why a valid output is not what its stage would make now (None: it is): made with another
    configuration (the stage refuses it without --force), or — maps and evaluations, which their
    stages redo by themselves — made from inputs that changed since."""
    try:
        manifest = read_manifest(folder, kind)
        if config is not None and not same_identity(manifest, config()):
            return "output made with another configuration (the stage replaces it only with --force)"
        if kind not in ("maps", "eval"):
            return None
        for name, record in manifest.get("inputs", {}).items():
            if isinstance(record, dict) and record.get("path") and record.get("manifest_sha256"):
                source = Path(record["path"]) / MANIFEST_NAME
                if not source.is_file() or sha256_file(source) != record["manifest_sha256"]:
                    return f"its input {name} changed since"
        if kind == "eval" and not has_intervals(folder):
            return "made before evaluate reported confidence intervals"
    except CxradError as exc:
        return f"cannot tell whether it is current ({exc})"
    return None


def plan(cfg: PipelineConfig, workdir: Path, force: bool = False) -> list[Step]:
    """The steps in order, each with what will happen and why.

    Once a step runs, every later step is called too: it may depend on what the earlier one
    writes, and its stage decides by itself whether its output is still up to date.
    """
    prepared = workdir / "prepared" / cfg.data_name
    run = workdir / "runs" / cfg.run_name
    layout = RunLayout(run)
    steps: list[Step] = []

    def add(name: str, output: Path, kind: str, call: Callable[[bool], Any], ckpt: Callable[[], bool] | None = None,
            config: Callable[[], Any] | None = None):
        action, why = _status(output, kind, ckpt, config)
        if force and action == "skip":
            action, why = "run", "--force"
        elif action == "skip" and any(s.action != "skip" for s in steps):
            action, why = "run", "an earlier step runs: this one checks its output again"
        steps.append(Step(name, output, action, why, lambda: call(action == "resume")))

    add("prepare", prepared, "prepared",
        lambda _r: prepare(cfg.source, prepared, cfg.prepare, labels=cfg.labels,
                           split_file=cfg.split_file, force=force, anomalies=cfg.anomalies),
        config=lambda: prepare_record(cfg.prepare, cfg.source, cfg.labels, cfg.split_file, cfg.anomalies))
    method = methods.get(cfg.method)
    for step in method.pipeline_steps(prepared=prepared, run_dir=run, tables=cfg.method_tables, force=force):
        add(step.name, step.output, step.kind, step.call, step.has_checkpoint, step.config)
    add("score", layout.maps, "maps", lambda _r: score(run, cfg.score, force=force), config=lambda: cfg.score)
    add("evaluate", layout.eval, "eval", lambda _r: evaluate(run, cfg.evaluate, force=force),
        config=lambda: cfg.evaluate)
    return steps


def stage_names(cfg: PipelineConfig) -> tuple[str, ...]:
    """Names `--stage` accepts for this pipeline: prepare, the method's steps, score, evaluate."""
    method_steps = [t.split(" ")[0] for t in methods.get(cfg.method).step_names(cfg.method_tables)]
    return ("prepare", *dict.fromkeys(method_steps), "score", "evaluate")


def run_pipeline(config: str | Path | None = None, workdir: str | Path | None = None, *,
                 dry_run: bool = False, force: bool = False,
                 stages: list[str] | None = None) -> dict[str, Any]:
    """Run (or, with ``dry_run``, only list) the stages; returns paths, timings and metrics.

    ``stages`` limits the run to those stage names (e.g. one SLURM job per stage); the others
    are reported but not touched.
    """
    cfg = load_config(config)
    workdir = Path(workdir) if workdir else default_workdir()
    known = stage_names(cfg)
    for name in stages or []:
        if name not in known:
            raise CxradError(f"--stage {name}: unknown stage; choose from {', '.join(known)}.")
    steps = plan(cfg, workdir, force=force)
    if stages:
        steps = [s for s in steps if s.name.split(" ")[0] in stages]
    result: dict[str, Any] = {
        "config": str(cfg.config_path), "workdir": str(workdir.resolve()),
        "prepared": str((workdir / "prepared" / cfg.data_name).resolve()),
        "run": str((workdir / "runs" / cfg.run_name).resolve()),
        "steps": [{"name": s.name, "action": s.action, "reason": s.reason, "output": str(s.output)} for s in steps],
        "timings_s": {}, "metrics": None,
        "config_resolved": to_jsonable(cfg),
    }
    if dry_run:
        return result
    if all(s.action == "skip" for s in steps):
        progress.log("cxrad run: every stage is up to date; nothing to do (use --force to redo).")
    for s in steps:
        if s.action == "skip":
            progress.log(f"[skip] {s.name}: {s.reason} ({s.output})")
            continue
        progress.log(f"[{s.action}] {s.name} → {s.output}")
        t0 = time.perf_counter()
        out = s.call()
        result["timings_s"][s.name] = round(time.perf_counter() - t0, 2)
        if s.name == "evaluate":
            result["metrics"] = out
    metrics_file = RunLayout(Path(result["run"])).metrics
    if result["metrics"] is None and metrics_file.is_file():
        result["metrics"] = json.loads(metrics_file.read_text())
    return result
