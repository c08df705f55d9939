"""A run's scores of a prepared split: from `cxrad score`'s maps when they are current, else live.

Shared by the generic stages (`score` writes what `evaluate` reads; `predict` and `evaluate` score
with the same scorer), so an image gets the same score whichever stage computed it. The method is
reached only through its interface (cxrad/methods/base.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cxrad import methods, progress
from cxrad.io.maps_store import ScoredSplit, read_maps_h5
from cxrad.io.store import load_split
from cxrad.methods.base import Method, Scorer
from cxrad.runs import RunInfo


def method_of(run: RunInfo, *, command: str) -> Method:
    """The run's method, after it confirmed that the run is ready for ``command``."""
    method = methods.get(run.method)
    method.check_ready(run, for_command=command)
    return method


def artifact_records(run: RunInfo, method: Method) -> dict[str, Any]:
    """Input records (path, kind, manifest digest) of the run and of every method artifact the
    scores depend on: stored maps or metrics made from other records are stale."""
    return {"run": run.input_record(run.root, "run"),
            **{name: run.input_record(folder, kind) for name, (folder, kind) in method.artifacts(run).items()}}


def maps_are_current(run: RunInfo, records: dict[str, Any], split: Optional[str] = None) -> bool:
    """Whether RUN/maps holds a valid maps artifact made from ``records`` (and the file of ``split``)."""
    folder = run.layout.maps
    if not run.has_artifact(folder, "maps"):
        return False
    made_from = run.artifact(folder, "maps").get("inputs", {})
    if any(made_from.get(k) != json.loads(json.dumps(v)) for k, v in records.items()):
        return False
    return split is None or run.layout.maps_file(split).is_file()


class SplitScores:
    """Scores of the run's prepared splits, loading the method's scorer at most once."""

    def __init__(self, run: RunInfo, method: Method, device, records: dict[str, Any], command: str):
        self.run, self.method, self.device, self.records, self.command = run, method, device, records, command
        self._scorer: Optional[Scorer] = None

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = self.method.load_scorer(self.run, self.device)
        return self._scorer

    def split(self, split: str, *, batch_size: int = 64) -> ScoredSplit:
        """The split's stored maps when current, else scored now (not stored)."""
        if maps_are_current(self.run, self.records, split):
            return read_maps_h5(self.run.layout.maps_file(split))
        progress.log(f"{self.command}: no current maps of '{split}' in {self.run.layout.maps}; computing them now.")
        return score_split(self.scorer, self.run.prepared_checked, split, batch_size=batch_size)


def score_split(scorer: Scorer, prepared: Path, split: str, *, batch_size: int = 64) -> ScoredSplit:
    """Score every image of a prepared split."""
    data = load_split(prepared, split)
    scored = scorer.score(data.images, batch_size=batch_size, label=f"scoring {split}")
    return ScoredSplit(scored, data.ids, np.asarray(data.labels), {"split": split})
