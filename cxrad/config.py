"""Stage configuration: one dataclass per stage, the single source of every default.

The CLI builds its option defaults from these, `cxrad run` TOML tables override them field by
field, and the resolved dataclass is what each stage records in its manifest. Every config
validates itself (:meth:`StageConfig.validate`) before any work starts: the CLI, TOML loading and
``cxrad run --dry-run`` all call it.

Two kinds of field:

* **identity** fields change what a stage computes; two artifacts made with the same identity are
  the same artifact (a re-run is a no-op);
* **operational** fields (:func:`operational`) only change how the work runs — device, worker
  processes, checkpoint cadence. They are recorded in the manifest but never make a
  configuration "different": a re-run on another device reuses the artifact.

The method-specific configs (DDAD-ASR's ensemble, synthesis and refinement) live with their
method in ``cxrad/methods/<name>/config.py`` and use the same base.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from cxrad.errors import CxradError

Device = str   # "auto" | "cpu" | "cuda" | "cuda:N": the spelling checked by validate(), the GPU by
               # cxrad.devices.resolve_device
DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def operational(default: Any) -> Any:
    """A dataclass field that changes how a stage runs, not what it computes."""
    return field(default=default, metadata={"operational": True})


_SAME_AS_DEFAULT = object()


def added_field(default: Any, made_with: Any = _SAME_AS_DEFAULT) -> Any:
    """An identity field added after artifacts were made by its stage: left out of the identity while
    it holds ``made_with`` (what those artifacts were made with; by default ``default``), so they keep
    their identity and a re-run stays a no-op; any other value makes a different artifact. A default
    that changes when the field is added passes the old behaviour as ``made_with``: the new default
    then shows in the identity, and old artifacts are redone rather than mistaken for new ones."""
    omit = default if made_with is _SAME_AS_DEFAULT else made_with
    return field(default=default, metadata={"omit_at_default": True, "omit_at": omit})


def operational_fields(cfg_or_type: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cfg_or_type) if f.metadata.get("operational"))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy/torch scalars -> plain JSON types."""
    import os

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def identity(obj: Any) -> Any:
    """The part of a configuration that decides an artifact's content, as plain JSON types.

    Like :func:`to_jsonable`, but every operational field of every dataclass inside ``obj`` is left
    out, and so is an :func:`added_field` that holds its default. This is the one place that decides
    whether two configurations are "the same".
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: identity(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("operational")
                and not (f.metadata.get("omit_at_default") and getattr(obj, f.name) == f.metadata["omit_at"])}
    if isinstance(obj, dict):
        return {str(k): identity(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [identity(v) for v in obj]
    return to_jsonable(obj)


def identity_digest(obj: Any) -> str:
    """sha256 of :func:`identity` (canonical JSON): what manifests and checkpoints compare."""
    return hashlib.sha256(json.dumps(identity(obj), sort_keys=True).encode()).hexdigest()


class ConfigValueError(CxradError):
    """A field value that :meth:`StageConfig.validate` refuses. It knows the field, so the message
    names the command-line option (``--members 1: ...``) and a TOML loader can name the key instead
    (``cfg.toml: [ensemble] members = 1: ...``, :func:`replace_known`)."""

    def __init__(self, name: str, value: Any, reason: str, *, shown: str | None = None, label: str | None = None):
        self.name, self.value, self.reason = name, value, reason
        super().__init__(f"{label or _option(name)} {value if shown is None else shown}: {reason}")


class StageConfig:
    """Base of every stage config. :meth:`validate` checks every field against its annotation
    (int, float, bool, str, Optional, tuples of a fixed or any length, Literal choices; a bool is not
    an int, an int is a fine float and becomes one, a list becomes a tuple; floats must be finite;
    ``device`` must be spelled auto, cpu, cuda or cuda:N), then the subclass's range checks in
    :meth:`check`. Errors are one line naming the option (:class:`ConfigValueError`)."""

    def validate(self) -> "StageConfig":
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            tp, value = hints.get(f.name, Any), getattr(self, f.name)
            choices = _literal_choices(tp)
            if choices:
                if isinstance(value, bool) or value not in choices:
                    raise ConfigValueError(f.name, value, f"use one of {', '.join(map(str, choices))}.",
                                           shown=repr(value))
                continue
            ok, fixed = _conform(tp, value)
            if not ok:
                raise ConfigValueError(f.name, value, f"must be {_describe(tp)}.", shown=repr(value))
            if f.name == "device" and isinstance(fixed, str) and not DEVICE_SPEC.match(fixed.strip().lower()):
                raise ConfigValueError(f.name, value, "not understood; use auto, cpu, cuda or cuda:N.")
            object.__setattr__(self, f.name, fixed)   # an int in a float field -> float, a list -> tuple
        self.check()
        return self

    def check(self) -> None:
        """Range and consistency checks of the subclass (raise :class:`ConfigValueError`)."""


def _literal_choices(tp: Any) -> tuple:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return ()


def _optional_inner(tp: Any) -> Any:
    """X of Optional[X] (or X | None); None when ``tp`` is not optional."""
    args = typing.get_args(tp)
    if type(None) in args and len(args) == 2:
        return args[0] if args[1] is type(None) else args[1]
    return None


def _conform(tp: Any, value: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits the annotation ``tp``, the value normalised: int -> float in a float
    field, list -> tuple)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return (True, None) if value is None else _conform(inner, value)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            return False, value
        fixed = [_conform(t, v) for t, v in zip(items, value)]
        return all(ok for ok, _ in fixed), tuple(v for _, v in fixed)
    return True, value


_NOUNS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
          float: ("a finite number", "finite numbers"), str: ("a string", "strings")}


def _describe(tp: Any) -> str:
    """What a value of annotation ``tp`` must be, for the error message."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _describe(inner)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_NOUNS.get(args[0], ('', 'values'))[1]}"
        return f"a list of {len(args)} {_NOUNS.get(args[0], ('', 'values'))[1]}"
    return _NOUNS.get(tp, (str(tp), ""))[0]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def toml_value(value: Any) -> str:
    """``value`` as it would be written in a TOML file (for messages about one)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def at_least(cfg: Any, minimum: float, *names: str) -> None:
    """Refuse any of ``names`` below ``minimum`` with the option's name."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise ConfigValueError(name, value, f"must be at least {minimum:g}.")


def in_range(cfg: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None:
        return
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigValueError(name, value, f"must lie in {left}{lo:g}, {hi:g}{right}.")


# ---------------------------------------------------------------------------------------------
# generic stages
# ---------------------------------------------------------------------------------------------
# confidence intervals of `evaluate` and `compare` (cxrad/metrics_ci.py, docs/compare.md)
CI_LEVEL = 0.95                 # two-sided level of every interval
BOOTSTRAP_RESAMPLES = 2000      # stratified bootstrap resamples for the AP interval
BOOTSTRAP_SEED = 0

@dataclass
class PrepareConfig(StageConfig):
    """`cxrad prepare`: image decoding, preprocessing and split building."""

    size: int = 64                      # output side in pixels (square)
    intensity: Literal["minmax", "percentile"] = "percentile"  # per image; decided on the dev split
                                        # (docs/method.md, "Reading images"); was minmax until 2026-12
    percentiles: tuple[float, float] = (0.5, 99.5)  # used when intensity == "percentile"
    crop: Literal["none", "center"] = "none"        # centre crop to a square before resizing
    voi_lut: bool = True                # apply a DICOM VOI LUT / window when present
    allow_modality: tuple[str, ...] = ()  # extra DICOM modalities accepted besides CR/DX/DR/RG/XA
    store_dtype: Literal["float16", "uint8"] = "float16"  # uint8: scale 1/255 recorded
    workers: Optional[int] = operational(None)  # decoding processes; None = CPUs this process may use
    max_megapixels: float = operational(50.0)  # bound on decoded pixels per file (memory): larger JPEGs are
                                        # decoded at 1/2, 1/4 or 1/8 scale, other files rejected; files
                                        # within it decode the same whatever its value
    # split building (used when the input does not name Dn/Du directly)
    normal_count: Optional[int] = None
    unlabeled_count: Optional[int] = None
    anomaly_rate: Optional[float] = None
    test_fraction: float = 0.2          # hold-out when the input has no test split
    val_normals: Optional[int] = None   # normal images held out of training as the `val` split: the
                                        # decision threshold comes from their scores (training normals
                                        # score lower than unseen ones: docs/method.md, "Thresholds");
                                        # unset = 10 % of Dn, at most 200, none when Dn < 200; 0 = none
    seed: int = 0
    anomaly_shots: int = added_field(0)  # labelled abnormal training images kept (split `anomaly`, first K
                                        # rows in file order); only weakly supervised methods read them

    def check(self) -> None:
        if self.size < 8 or self.size > 4096:
            raise CxradError(f"--size {self.size}: use a side between 8 and 4096 pixels.")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise CxradError(f"--percentiles {lo} {hi}: need 0 <= low < high <= 100.")
        at_least(self, 1, "workers")
        in_range(self, "max_megapixels", 0.0, 10_000.0, lo_open=True)
        at_least(self, 0, "normal_count", "unlabeled_count", "val_normals", "anomaly_shots")
        in_range(self, "anomaly_rate", 0.0, 1.0)
        in_range(self, "test_fraction", 0.0, 1.0, hi_open=True)


@dataclass
class ScoreConfig(StageConfig):
    """`cxrad score`: every map and image score of a split, with the run's method."""

    split: Literal["test", "val", "normal", "unlabeled", "all"] = "test"
    batch_size: int = operational(256)
    device: Device = operational("auto")

    def check(self) -> None:
        at_least(self, 1, "batch_size")


@dataclass
class EvaluateConfig(StageConfig):
    """`cxrad evaluate`: metrics and report on a labelled split."""

    split: Literal["test", "val", "normal", "unlabeled"] = "test"
    threshold_percentile: float = 95.0  # of the calibration normals' scores
    threshold_from: Literal["auto", "val", "normal"] = "auto"
    # "auto": held-out normals (val split, >= 20) when present, else the normal training images;
    # "val" or "normal" to force one (docs/method.md, "Thresholds", says why held-out is better)
    overlay_count: int = 8              # highest and lowest scored images shown
    device: Device = operational("auto")
    ci_level: float = added_field(CI_LEVEL)          # confidence intervals of AUC (DeLong) and AP (bootstrap)
    bootstrap_resamples: int = added_field(BOOTSTRAP_RESAMPLES)   # stratified resamples for the AP interval
    bootstrap_seed: int = added_field(BOOTSTRAP_SEED)

    def check(self) -> None:
        in_range(self, "threshold_percentile", 0.0, 100.0, lo_open=True, hi_open=True)
        at_least(self, 0, "overlay_count")
        _check_intervals(self)


def _check_intervals(cfg: Any) -> None:
    in_range(cfg, "ci_level", 0.0, 1.0, lo_open=True, hi_open=True)
    at_least(cfg, 100, "bootstrap_resamples")


@dataclass
class CompareConfig(StageConfig):
    """`cxrad compare`: every score of several evaluated runs on one test set, side by side."""

    split: Literal["test", "val", "normal", "unlabeled"] = "test"   # the split each run was evaluated on
    ci_level: float = CI_LEVEL
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED

    def check(self) -> None:
        _check_intervals(self)


@dataclass
class PredictConfig(StageConfig):
    """`cxrad predict`: scores and overlays for new images with a finished run."""

    num_shards: int = operational(1)
    shard_id: int = operational(0)
    overlays: bool = True
    device: Device = operational("auto")
    chunk_size: int = operational(256)  # images decoded, scored and written at a time: memory grows with
                                        # it, not with the number of inputs; a multiple of the scorer's
                                        # batch (64) scores exactly the batches of a single pass

    def check(self) -> None:
        if self.num_shards < 1 or not 0 <= self.shard_id < self.num_shards:
            raise CxradError(f"--num-shards {self.num_shards} --shard-id {self.shard_id}: "
                             "need 0 <= shard-id < num-shards.")
        at_least(self, 1, "chunk_size")


def replace_known(cfg: Any, overrides: dict[str, Any], table: str | None = None) -> Any:
    """``cfg`` with ``overrides`` applied and validated; unknown keys are a user error (typo guard).

    ``table``: the TOML table the overrides come from; errors then name its key and the value as
    written (``[ensemble] members = 2.5: must be an integer.``) instead of a command-line option.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    where = f"[{table}] " if table else ""
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CxradError(
            f"{where}unknown {type(cfg).__name__} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )
    out = dataclasses.replace(cfg, **overrides)
    if not isinstance(out, StageConfig):
        return out
    try:
        return out.validate()
    except CxradError as exc:
        if table is None:
            raise
        name, reason = _field_of(exc, names)
        if name is None:
            raise CxradError(f"{where}{exc}") from None
        value = overrides.get(name, getattr(cfg, name))
        raise CxradError(f"{where}{name} = {toml_value(value)}: {reason}") from None


def _field_of(exc: CxradError, names: set[str]) -> tuple[str | None, str]:
    """(field, reason) of a validation error: a :class:`ConfigValueError` says so; a plain
    CxradError of a subclass's check that starts with ``--option VALUE: reason`` (or ``field VALUE:``)
    is read back; otherwise (None, message)."""
    if isinstance(exc, ConfigValueError):
        return exc.name, exc.reason
    message = str(exc)
    for name in sorted(names, key=len, reverse=True):
        for label in (_option(name) + " ", name + " "):
            if message.startswith(label) and ": " in message:
                return name, message.split(": ", 1)[1]
    return None, message
