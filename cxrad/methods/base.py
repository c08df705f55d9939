"""The interface between the generic stages and an anomaly-detection method.

The generic stages (`score`, `evaluate`, `predict`, `inspect`, `run`) know a method only through
this module: they look the method up by the name the run recorded (:func:`cxrad.methods.get`),
ask it whether the run is ready, and load a :class:`Scorer` that maps images to named maps and
image scores. Everything else — how the method trains, what files it keeps — is the method's own.

A new method (see docs/methods.md) is a package ``cxrad/methods/<name>/`` with a :class:`Method`
subclass, registered in ``cxrad/methods/__init__.py``; its training command writes a run folder
whose ``RUN/manifest.json`` records ``"method": "<name>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from cxrad.scores import ScoredImages, ScoreSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cxrad.runs import RunInfo


class Scorer:
    """A finished run's frozen model(s), ready to score images.

    ``names``: the scores this run provides, in report order (a subset of the method's specs:
    e.g. a DDAD run without an ASR-Net has no R_* scores).
    """

    names: tuple[str, ...] = ()

    def score(self, images01: "np.ndarray", *, batch_size: int = 64,
              label: Optional[str] = None) -> ScoredImages:
        """images01 (N, H, W) float32 in [0, 1], preprocessed as the run's prepared data ->
        maps {name: (N, H, W) float32} and image scores {name: (N,) float32} for every name.
        ``label``: progress-bar text (None: no bar)."""
        raise NotImplementedError


@dataclass
class PipelineStep:
    """One method-specific step of `cxrad run`: its name, output folder and artifact kind, the
    call that makes it (argument: resume), how to tell an interrupted step (checkpoint), and the
    configuration its stage records in the manifest (so that `cxrad run` skips the step only when
    the stage would find the output up to date)."""

    name: str
    output: Path
    kind: str
    call: Callable[[bool], Any]
    has_checkpoint: Optional[Callable[[], bool]] = None
    config: Optional[Callable[[], Any]] = None


class Method:
    """What a method provides to the generic stages. Subclasses set the class attributes."""

    name: str = ""
    title: str = ""
    specs: tuple[ScoreSpec, ...] = ()
    overlay_maps: tuple[str, ...] = ()     # preferred heat maps in evaluate's overlay sheet
    config_tables: dict[str, type] = {}    # TOML table -> config dataclass of its training stages
    summarizers: dict[str, Callable[[Path], dict]] = {}   # artifact kind -> `cxrad inspect` summary

    def check_ready(self, run: "RunInfo", *, for_command: str) -> None:
        """Raise CxradError naming the missing step when ``run`` cannot be scored yet."""

    def artifacts(self, run: "RunInfo") -> dict[str, tuple[Path, str]]:
        """The run's method artifacts the scores depend on: name -> (folder, kind). Their manifest
        digests go into every maps/eval manifest, so retraining one makes earlier maps stale."""
        return {}

    def load_scorer(self, run: "RunInfo", device: "torch.device") -> Scorer:
        raise NotImplementedError

    def pipeline_steps(self, *, prepared: Path, run_dir: Path, tables: dict[str, Any],
                       force: bool) -> list[PipelineStep]:
        """The training steps of `cxrad run` between `prepare` and `score`, in order."""
        return []

    def step_names(self, tables: dict[str, Any]) -> list[str]:
        """Names of :meth:`pipeline_steps` (for `cxrad run --stage`), without building them."""
        return [s.name for s in self.pipeline_steps(prepared=Path("."), run_dir=Path("."), tables=tables,
                                                    force=False)]

    def validate_tables(self, tables: dict[str, Any], run_options: dict[str, Any]) -> dict[str, Any]:
        """This method's TOML tables (table name -> dict) filled from the defaults and validated;
        ``run_options``: the keys of ``[run]`` other than ``name``. Unknown keys are errors."""
        from cxrad.config import replace_known
        from cxrad.errors import CxradError

        if run_options:
            raise CxradError(f"unknown key(s) in [run]: {', '.join(sorted(run_options))}.")
        return {name: replace_known(cls(), tables.get(name, {}), name) for name, cls in self.config_tables.items()}

    def default_run_suffix(self, tables: dict[str, Any]) -> str:
        """Run folder name after the data name when ``[run] name`` is not given."""
        return self.name

    def training_sets(self, run: "RunInfo") -> tuple[str, ...]:
        """The prepared sets ``run`` was trained on: "normal" (Dn), "unlabeled" (Du), "anomaly" (the
        K labelled abnormal images; only a method that reads them with ``labelled_anomalies=True``
        says so). `cxrad compare` reports them as what each run was allowed to see."""
        return ("normal",)

    def labelled_anomalies_used(self, run: "RunInfo", available: int) -> int:
        """How many of the prepared data's ``available`` labelled anomalies ``run`` trained on (when
        :meth:`training_sets` names "anomaly"): the first ``shots`` when a table of the run's
        configuration sets that key (e.g. ``[wscxr] shots``), else all of them."""
        for table in run.config.values():
            if isinstance(table, dict) and isinstance(table.get("shots"), int):
                return min(table["shots"], available)
        return available
