"""DDAD-ASR behind the method interface (cxrad/methods/base.py).

Scores, in report order: A_rec (NDM reconstruction error), A_intra (spread of the NDM members),
A_inter (difference between the UDM and NDM mean reconstructions), and R_intra / R_dual, ASR-Net's
anomaly probability computed from [A_intra] / [A_inter, A_intra]. The refined scores decide when
present (R_dual first); a run is ready for `predict` once its ensembles and at least one ASR-Net
are trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cxrad import progress
from cxrad.errors import CxradError
from cxrad.methods.base import Method, PipelineStep, Scorer
from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig
from cxrad.runs import RunInfo
from cxrad.scores import ScoredImages, ScoreSpec, image_score, in_report_order

REFINE_INPUTS = ("dual", "intra")
SPECS = (
    ScoreSpec("A_rec", "reconstruction error of the NDM mean, (x - mu_NDM)^2", priority=4),
    ScoreSpec("A_intra", "intra-discrepancy: std over the NDM members", priority=3),
    ScoreSpec("A_inter", "inter-discrepancy: |mu_UDM - mu_NDM|", priority=2),
    ScoreSpec("R_intra", "ASR-Net anomaly probability from [A_intra]", priority=1, refined=True, probability=True),
    ScoreSpec("R_dual", "ASR-Net anomaly probability from [A_inter, A_intra]", priority=0, refined=True,
              probability=True),
)


def refiners(run: RunInfo) -> dict[str, Path]:
    """Finished ASR-Nets of the run: score name -> refine folder."""
    return {f"R_{m}": run.layout.refine(m) for m in REFINE_INPUTS if run.has_artifact(run.layout.refine(m), "refine")}


def _digest(manifest: dict[str, Any], name: str) -> str | None:
    """The sha256 a manifest records for one of its output files (None when it records none)."""
    return manifest.get("outputs", {}).get(name, {}).get("sha256")


class DDADScorer(Scorer):
    """The run's frozen ensembles and ASR-Nets: images -> A_* and R_* maps in one pass."""

    def __init__(self, ensembles, asrs: dict[str, dict[str, Any]]):
        self.ensembles, self.asrs = ensembles, asrs
        names = ["A_rec", "A_intra"] + (["A_inter"] if ensembles.udm is not None else []) + list(asrs)
        self.names = tuple(in_report_order(SPECS, names))

    @torch.no_grad()
    def score(self, images01: np.ndarray, *, batch_size: int = 64, label: Optional[str] = None) -> ScoredImages:
        from cxrad.methods.ddad.ensembles import to_network_space
        from cxrad.methods.ddad.refinement import asr_probability

        parts: list[ScoredImages] = []
        device = self.ensembles.device
        with progress.task(label or "scoring", len(images01), quiet=label is None) as bar:
            for s in range(0, len(images01), batch_size):
                x = to_network_space(torch.as_tensor(np.asarray(images01[s:s + batch_size], np.float32),
                                                     device=device))
                maps = self.ensembles.maps(x)
                maps.update({name: asr_probability(asr, maps) for name, asr in self.asrs.items()})
                parts.append(ScoredImages({k: maps[k].float().cpu().numpy() for k in self.names},
                                          {k: image_score(maps[k]).float().cpu().numpy() for k in self.names}))
                bar.advance(len(x))
        return ScoredImages.concatenate(parts) if parts else ScoredImages.empty(self.names, images01)


class DDADASR(Method):
    name = "ddad"
    title = "DDAD-ASR (dual-distribution discrepancy + anomaly score refinement)"
    specs = SPECS
    overlay_maps = ("A_inter", "R_dual", "A_intra", "R_intra")
    config_tables = {"ensemble": EnsembleConfig, "synthesize": SynthConfig, "refine": RefineConfig}

    @property
    def summarizers(self):  # type: ignore[override]
        from cxrad.methods.ddad.refine import summarize_refine
        from cxrad.methods.ddad.synthesize import summarize_synth

        return {"synth": summarize_synth, "refine": summarize_refine}

    def check_ready(self, run: RunInfo, *, for_command: str) -> None:
        from cxrad.methods.ddad.ensembles import read_ensemble

        read_ensemble(run, command=for_command)
        if for_command == "cxrad predict" and not refiners(run):
            raise CxradError(f"{run.root}: no trained ASR-Net (no valid {run.root / 'refine'}/dual or intra); "
                             "run `cxrad refine` first.")

    def training_sets(self, run: RunInfo) -> tuple[str, ...]:
        """Dn, and Du when the run trained the UDM ensemble (on Dn ∪ Du)."""
        return ("normal", "unlabeled") if "udm" in run.config.get("modules", ("ndm", "udm")) else ("normal",)

    def artifacts(self, run: RunInfo) -> dict[str, tuple[Path, str]]:
        return {"ensemble": (run.layout.ensemble, "ensemble"),
                **{name: (folder, "refine") for name, folder in refiners(run).items()}}

    def load_scorer(self, run: RunInfo, device: torch.device) -> DDADScorer:
        from cxrad.methods.ddad.ensembles import open_ensembles
        from cxrad.methods.ddad.refinement import load_asr

        ens = open_ensembles(run, device)
        asrs = {name: load_asr(folder, device, _digest(run.artifact(folder, "refine"), "asr.pt"))
                for name, folder in refiners(run).items()}
        return DDADScorer(ens, asrs)

    def validate_tables(self, tables: dict[str, Any], run_options: dict[str, Any]) -> dict[str, Any]:
        """Adds ``refine_inputs`` (from ``[run]``): which ASR-Nets `cxrad run` trains."""
        from cxrad.config import toml_value

        options = dict(run_options)
        refine_inputs = options.pop("refine_inputs", list(REFINE_INPUTS))
        if not isinstance(refine_inputs, list):
            raise CxradError(f"[run] refine_inputs = {toml_value(refine_inputs)}: must be a list, e.g. "
                             "[\"dual\"] or [\"dual\", \"intra\"].")
        for mode in refine_inputs:
            if mode not in REFINE_INPUTS:
                raise CxradError(f"[run] refine_inputs = {toml_value(refine_inputs)}: holds {toml_value(mode)}; "
                                 "use \"dual\" and/or \"intra\".")
        if len(set(refine_inputs)) < len(refine_inputs):
            raise CxradError(f"[run] refine_inputs = {toml_value(refine_inputs)}: names an input twice.")
        validated = super().validate_tables(tables, options)
        synth_epochs, refine_epochs = validated["synthesize"].epochs, validated["refine"].epochs
        if refine_inputs and refine_epochs > synth_epochs:
            raise CxradError(f"[refine] epochs = {refine_epochs}: refine reads FPI recipes for every epoch, but "
                             f"[synthesize] epochs = {synth_epochs}; set [synthesize] epochs to at least "
                             f"{refine_epochs}.")
        return {**validated, "refine_inputs": refine_inputs}

    def default_run_suffix(self, tables: dict[str, Any]) -> str:
        return tables["ensemble"].backbone

    def pipeline_steps(self, *, prepared: Path, run_dir: Path, tables: dict[str, Any],
                       force: bool) -> list[PipelineStep]:
        from cxrad.layout import RunLayout
        from cxrad.methods.ddad.refine import refine
        from cxrad.methods.ddad.synthesize import synthesize
        from cxrad.methods.ddad.train_ensemble import expected_run_config, has_checkpoints, train_ensemble

        layout = RunLayout(run_dir)
        ens_cfg, synth_cfg, refine_cfg = tables["ensemble"], tables["synthesize"], tables["refine"]
        steps = [
            PipelineStep("train-ensemble", layout.ensemble, "ensemble",
                         lambda r: train_ensemble(prepared, run_dir, ens_cfg, resume=r, force=force and not r),
                         lambda: has_checkpoints(run_dir, ens_cfg), lambda: expected_run_config(ens_cfg, prepared)),
            PipelineStep("synthesize", layout.synth, "synth", lambda _r: synthesize(run_dir, synth_cfg, force=force),
                         config=lambda: synth_cfg),
        ]
        for mode in tables.get("refine_inputs", REFINE_INPUTS):
            rcfg = dataclasses.replace(refine_cfg, inputs=mode)
            steps.append(PipelineStep(
                f"refine ({mode})", layout.refine(mode), "refine",
                lambda r, rcfg=rcfg: refine(run_dir, rcfg, resume=r, force=force and not r),
                lambda mode=mode: any(layout.refine(mode).glob("*.ckpt")), lambda rcfg=rcfg: rcfg))
        return steps


DDAD_ASR = DDADASR()
