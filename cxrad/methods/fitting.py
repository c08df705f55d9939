"""Training stage and run folder for methods with one trained model (`cxrad fit`).

SimSID, PatchCore and WSCXR each train one model from the prepared data. What is common to them —
creating or joining the run, refusing a run of another configuration, checkpoints every few
epochs, SIGTERM/SIGUSR1 (SLURM's walltime warning) turned into a checkpoint and a clean stop,
``--resume`` continuing bit for bit, ``--force`` starting over, the model file and its manifest —
lives here once. A method supplies a :class:`ModelTrainer` (one epoch at a time, its resume state,
the state to keep) and a scorer for the kept state; :class:`SingleModelMethod` turns that into the
full method interface of cxrad/methods/base.py.

Files::

    RUN/manifest.json        kind "run": method, config identity, prepared input, preprocessing
    RUN/model/model.pt       the kept state (loaded with torch.load(weights_only=True))
    RUN/model/log.json       one record per epoch: losses, seconds
    RUN/model/checkpoint.ckpt  resume state while training (removed once model.pt is written)
    RUN/model/manifest.json  kind "model"
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cxrad import locks, progress
from cxrad.artifacts import (
    MANIFEST_NAME,
    begin_output,
    finish_output,
    input_record,
    load_torch,
    read_manifest,
    remove_stale_temporaries,
    save_torch_atomic,
    write_json_atomic,
    write_manifest,
)
from cxrad.config import identity, identity_digest
from cxrad.errors import CxradError
from cxrad.layout import MODEL_CHECKPOINT, MODEL_LOG, MODEL_WEIGHTS, PARTIAL_MARKER, RunLayout
from cxrad.methods.base import Method, PipelineStep, Scorer
from cxrad.runs import check_run_folder

if TYPE_CHECKING:
    import torch

    from cxrad.runs import RunInfo

RUN_LOCK_WAIT_S = 300.0   # the run lock is held only while its manifest is checked or written
DEFAULT_CHECKPOINT_EVERY = 10


class ModelTrainer(Protocol):
    """One method's training, driven epoch by epoch by :func:`fit`."""

    epoch: int   # epochs finished

    def run_epoch(self) -> list[float]:
        """Train one epoch; its mean loss(es). A non-finite value stops training (nothing saved)."""

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`restore` needs to continue bit for bit (weights, optimiser, RNG states)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint`."""

    def final_state(self) -> dict[str, Any]:
        """What RUN/model/model.pt keeps: tensors, numbers, strings, lists and dicts only (it is
        loaded with ``weights_only=True``)."""

    def summary(self) -> dict[str, Any]:
        """Extra fields for the model manifest (what was kept, how many images were seen...)."""


@dataclass
class FitContext:
    """What a method's trainer is built from. ``prepared`` was checked (a prepared artifact whose
    image side matches the run); ``cfg`` is the method's validated config."""

    prepared: Path
    run: Path
    device: "torch.device"
    cfg: Any


class SingleModelMethod(Method):
    """A method whose run holds one trained model in RUN/model/ (see module docstring).

    Subclasses set ``name``, ``title``, ``specs``, ``overlay_maps``, ``config_cls`` and ``table``
    and implement :meth:`epochs`, :meth:`make_trainer` and :meth:`make_scorer`.
    """

    config_cls: type = object
    table: str = ""

    @property
    def config_tables(self) -> dict[str, type]:  # type: ignore[override]
        return {self.table: self.config_cls}

    @property
    def summarizers(self):  # type: ignore[override]
        return {"model": summarize_model}

    # -- what a subclass provides -------------------------------------------------------------
    def epochs(self, cfg: Any) -> int:
        """How many times :func:`fit` calls ``run_epoch`` (a one-pass method: 1)."""
        raise NotImplementedError

    def make_trainer(self, ctx: FitContext) -> ModelTrainer:
        """A fresh trainer (load the data it needs; refuse missing data with a CxradError)."""
        raise NotImplementedError

    def make_scorer(self, state: dict[str, Any], run: "RunInfo", device: "torch.device") -> Scorer:
        """A scorer from the kept state (the contents of model.pt)."""
        raise NotImplementedError

    # -- the interface of cxrad/methods/base.py -----------------------------------------------------
    def check_ready(self, run: "RunInfo", *, for_command: str) -> None:
        folder = run.layout.model
        try:
            run.artifact(folder, "model")
        except CxradError:
            raise CxradError(f"{run.root}: the {self.name} model is not trained (no valid {folder}); run "
                             f"`cxrad fit {run.prepared} --run {run.root} --method {self.name}` before "
                             f"`{for_command}`.") from None

    def artifacts(self, run: "RunInfo") -> dict[str, tuple[Path, str]]:
        return {"model": (run.layout.model, "model")}

    def load_scorer(self, run: "RunInfo", device: "torch.device") -> Scorer:
        folder = run.layout.model
        manifest = run.artifact(folder, "model")
        digest = manifest.get("outputs", {}).get(MODEL_WEIGHTS, {}).get("sha256")
        state = load_torch(folder / MODEL_WEIGHTS, map_location=device, sha256=digest,
                           fix=f"retrain it with `cxrad fit {run.prepared} --run {run.root} --method {self.name} "
                               "--force`.")
        return self.make_scorer(state, run, device)

    def pipeline_steps(self, *, prepared: Path, run_dir: Path, tables: dict[str, Any],
                       force: bool) -> list[PipelineStep]:
        cfg, layout = tables[self.table], RunLayout(run_dir)
        return [PipelineStep(
            "fit", layout.model, "model",
            lambda r: fit(prepared, run_dir, self.name, cfg, resume=r, force=force and not r),
            lambda: (layout.model / MODEL_CHECKPOINT).is_file(), lambda: cfg)]

    def step_names(self, tables: dict[str, Any]) -> list[str]:
        return ["fit"]


def single_model_method(name: str) -> SingleModelMethod:
    """The registered method ``name``, refused when it is not trained by `cxrad fit`."""
    from cxrad import methods

    method = methods.get(name)
    if not isinstance(method, SingleModelMethod):
        raise CxradError(f"--method {name}: {method.title} is trained by its own commands, not `cxrad fit` "
                         "(DDAD-ASR: `cxrad train-ensemble`, `synthesize`, `refine`, or `cxrad run`); "
                         f"methods for `cxrad fit`: {', '.join(fit_method_names())}.")
    return method


def fit_method_names() -> list[str]:
    from cxrad import methods

    return [n for n in methods.names() if isinstance(methods.get(n), SingleModelMethod)]


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def run_config(method: SingleModelMethod, cfg: Any, prepared: Path) -> dict[str, Any]:
    """What RUN/manifest.json records as the run's configuration (compared on re-runs)."""
    from cxrad.io.store import preprocessing_of

    preprocessing = preprocessing_of(prepared)
    return {"method": method.name, method.table: identity(cfg), "image_size": int(preprocessing["size"]),
            "prepared": input_record(prepared), "preprocessing": preprocessing}


def fit(prepared: str | Path, run: str | Path, method: str, cfg: Any, *, resume: bool = False,
        force: bool = False) -> Path:
    """Train ``method``'s model with ``cfg`` on ``prepared`` into ``run``; returns ``run``.

    Idempotent: a run that already holds this model (same configuration, same prepared data) is
    left alone. ``resume`` continues from RUN/model/checkpoint.ckpt; ``force`` retrains, replacing
    a run of another configuration. Everything is checked before anything is written.
    """
    from cxrad.devices import device_name, resolve_device

    prepared, run = Path(prepared), Path(run)
    if resume and force:
        raise CxradError("--resume and --force exclude each other: --resume continues a run, --force restarts it.")
    m = single_model_method(method)
    if not isinstance(cfg, m.config_cls):
        raise CxradError(f"{method}: expected a {m.config_cls.__name__}, got {type(cfg).__name__}.")
    cfg.validate()
    device = resolve_device(getattr(cfg, "device", "auto"))
    read_manifest(prepared, "prepared")
    config = run_config(m, cfg, prepared)
    digest = identity_digest(config)
    layout = RunLayout(run)
    out, ckpt = layout.model, layout.model / MODEL_CHECKPOINT

    with locks.holding(run, "set up", min_wait=RUN_LOCK_WAIT_S):
        new_run = check_run_folder(run, config, force=force, resume=resume)
        state = _resume_state(ckpt, digest, run, m.name) if resume else None
        if not resume and not force and ckpt.is_file() and not new_run:
            raise CxradError(f"{ckpt}: an unfinished training is there; continue it with --resume or start over "
                             "with --force.")
        if new_run:
            run.mkdir(parents=True, exist_ok=True)
            write_manifest(run, "run", config, inputs={"prepared": config["prepared"]}, device=device_name(device),
                           extra={"method": m.name})
    if resume:
        locks.acquire(out)  # as begin_output does; finish_output releases it
        (out / MANIFEST_NAME).unlink(missing_ok=True)   # the old manifest must not describe rewritten files
        (out / PARTIAL_MARKER).touch()
    elif not begin_output(out, "model", cfg, force=force or new_run):
        progress.log(f"cxrad fit: {out} is up to date ({m.name}, same configuration); use --force to retrain.")
        return run
    else:
        ckpt.unlink(missing_ok=True)   # a fresh start never mixes with an old checkpoint
    remove_stale_temporaries(out)

    try:
        _train(m, cfg, prepared, run, device, digest, state)
    except BaseException:
        locks.release(out)
        raise
    return run


def _resume_state(ckpt: Path, digest: str, run: Path, method: str) -> dict[str, Any]:
    fix = f"start over with `cxrad fit ... --run {run} --method {method} --force`."
    if not ckpt.is_file():
        raise CxradError(f"{ckpt.parent}: nothing to resume (no {ckpt.name}); run without --resume.")
    state = load_torch(ckpt, fix=fix)
    if not isinstance(state, dict) or not isinstance(state.get("trainer"), dict):
        raise CxradError(f"{ckpt}: not a cxrad checkpoint; {fix}")
    if state.get("config_sha256") != digest:
        raise CxradError(f"{ckpt}: was written with another configuration; resume with the same options or use "
                         "--force.")
    return state


def _train(m: SingleModelMethod, cfg: Any, prepared: Path, run: Path, device, digest: str,
           state: dict[str, Any] | None) -> None:
    import torch

    from cxrad.devices import device_name
    from cxrad.training_loop import Diverged, Interrupted
    from cxrad.training_loop import fit as fit_epochs

    out = RunLayout(run).model
    t0 = time.perf_counter()
    trainer = m.make_trainer(FitContext(prepared, run, device, cfg))
    log: list[dict[str, Any]] = []
    if state is not None:
        trainer.restore(state["trainer"])
        log = json.loads(state["log"])
        progress.log(f"cxrad fit: resuming {out} after epoch {trainer.epoch}")

    def save(_trainer) -> None:
        save_torch_atomic({"trainer": trainer.checkpoint(), "log": json.dumps(log), "config_sha256": digest},
                          out / MODEL_CHECKPOINT, checksum=True)

    def on_epoch(epoch: int, losses: list[float], seconds: float) -> None:
        log.append({"epoch": epoch, "losses": [float(v) for v in losses], "seconds": round(seconds, 4)})

    resume_cmd = f"`cxrad fit {prepared} --run {run} --method {m.name} --resume`"
    try:
        fit_epochs(trainer, epochs=m.epochs(cfg), checkpoint_every=getattr(cfg, "checkpoint_every",
                                                                             DEFAULT_CHECKPOINT_EVERY),
                   save=save, on_epoch=on_epoch, label=f"fit {m.name}")
    except Diverged as exc:
        raise CxradError(f"{out}: {m.name} {exc}; training stopped, the last checkpoint is intact; lower the learning "
                         f"rate or check the prepared images, then continue with {resume_cmd}.", exit_code=3) from None
    except Interrupted as exc:
        raise CxradError(f"{out}: {m.name} training {exc}; checkpoint saved; continue with {resume_cmd}.",
                         exit_code=128 + exc.signum) from None

    final = trainer.final_state()
    save_torch_atomic(final, out / MODEL_WEIGHTS)
    try:  # the contract of final_state: model.pt must load without unpickling code
        torch.load(out / MODEL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # pragma: no cover - a method bug, not a user error
        raise RuntimeError(f"{m.name}: final_state() holds objects weights_only loading refuses: {exc}") from exc
    write_json_atomic(out / MODEL_LOG, log)
    seconds = [r["seconds"] for r in log]
    write_manifest(
        out, "model", cfg,
        inputs={"run": input_record(run), "prepared": input_record(prepared)},
        outputs=[MODEL_WEIGHTS, MODEL_LOG],
        timings={"total": time.perf_counter() - t0,
                 "per_epoch": sum(seconds) / len(seconds) if seconds else 0.0},
        device=device_name(device),
        extra={"method": m.name, "epochs": trainer.epoch,
               "final_losses": log[-1]["losses"] if log else [], **trainer.summary()},
    )
    (out / MODEL_CHECKPOINT).unlink(missing_ok=True)
    finish_output(out)
    progress.log(f"cxrad fit: {m.name}: {trainer.epoch} epoch(s) -> {out}")


def summarize_model(folder: Path) -> dict[str, Any]:
    """`cxrad inspect` summary of a RUN/model folder."""
    m = read_manifest(folder, "model")
    return {"method": m.get("method"), "epochs": m.get("epochs"), "final_losses": m.get("final_losses"),
            "kept": m.get("kept"), "seconds": round(float(m.get("timings_s", {}).get("total", 0.0)), 1)}


def _toml():
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def _table_of(config_file: Path, m: SingleModelMethod) -> dict[str, Any]:
    """The method's ``[<table>]`` of a TOML file (empty when absent)."""
    tomllib = _toml()
    try:
        tables = tomllib.loads(Path(config_file).read_text())
    except OSError as exc:
        raise CxradError(f"{config_file}: cannot be read ({exc.strerror}); check --config.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CxradError(f"{config_file}: not valid TOML ({exc}); fix the file.") from None
    table = tables.get(m.table, {})
    if not isinstance(table, dict):
        raise CxradError(f"{config_file}: [{m.table}] must be a table of {m.config_cls.__name__} options.")
    return table


def _assignments(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> {key: value}; values in TOML syntax, a bare word is a string."""
    tomllib = _toml()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CxradError(f"--set {item}: expected key=value, e.g. --set epochs=10.")
        try:
            out[key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text.strip()   # e.g. backbone=lite0
    return out


def method_config(method: str, *, config_file: Path | None = None, assignments: list[str] = (),
                  device: str | None = None) -> Any:
    """The config of ``method`` for `cxrad fit`: defaults, then the ``[<table>]`` of ``config_file``,
    then ``key=value`` ``assignments`` (TOML value syntax; a bare word is a string), then ``device``.
    Validated; errors name the file and key or the ``--set`` item."""
    import dataclasses

    from cxrad.config import ConfigValueError, replace_known

    m = single_model_method(method)
    cfg = m.config_cls()
    if config_file is not None:
        table = _table_of(config_file, m)
        try:
            cfg = replace_known(cfg, table, m.table)
        except CxradError as exc:
            raise CxradError(f"{config_file}: {exc}") from None
    overrides = _assignments(list(assignments))
    if device is not None:
        overrides["device"] = device
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CxradError(f"--set {unknown[0]}: not an option of {method}; known: {', '.join(sorted(names))}.")
    try:
        return replace_known(cfg, overrides)
    except ConfigValueError as exc:
        if exc.name == "device" and device is not None:
            raise CxradError(f"--device {device}: {exc.reason}") from None
        raise CxradError(f"--set {exc.name}={overrides.get(exc.name, exc.value)}: {exc.reason}") from None
