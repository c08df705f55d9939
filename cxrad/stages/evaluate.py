"""`cxrad evaluate`: every score of the run on a labelled split -> RUN/eval/.

Scores are whatever the run's method provides (DDAD-ASR: A_rec, A_intra, A_inter, R_intra,
R_dual), read from RUN/maps when `cxrad score` wrote them from the current artifacts, else computed
now. Thresholds come from normal images only: held-out ones (val split) when the data have them,
else the training normals (cxrad/thresholds.py). AUC and AP come with confidence intervals
(cxrad/metrics_ci.py: DeLong for AUC, stratified bootstrap for AP). Writes metrics.json, metrics.md, scores.csv,
roc.png, pr.png, histograms.png, overlays.png and the manifest; returns the metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrad import progress
from cxrad.artifacts import (
    begin_output,
    finish_output,
    is_valid,
    remove_stale_temporaries,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_manifest,
)
from cxrad.config import EvaluateConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.maps_store import ScoredSplit, read_labels
from cxrad.io.store import load_labels, load_split
from cxrad.methods.base import Method
from cxrad.metrics import score_metrics
from cxrad.metrics_ci import describe_intervals, score_intervals
from cxrad.report import plots
from cxrad.report.tables import metrics_markdown
from cxrad.runs import RunInfo, open_run
from cxrad.scores import decision_score, in_report_order, spec_of
from cxrad.scoring import SplitScores, artifact_records, maps_are_current, method_of
from cxrad.thresholds import describe, normal_rows, threshold_split

OUTPUTS = ("metrics.json", "metrics.md", "scores.csv", "roc.png", "pr.png", "histograms.png", "overlays.png")


def _check_labels(run: RunInfo, records: dict, split: str) -> None:
    """Fail before any computation when the split lacks labels of both classes."""
    if maps_are_current(run, records, split):
        labels = read_labels(run.layout.maps_file(split))
    else:
        labels = load_labels(run.prepared_checked, split)
    if np.any(labels < 0) or len(np.unique(labels)) < 2:
        raise CxradError(
            f"{run.root}: split '{split}' has no labels for some images or only one class; evaluate needs normal and "
            "abnormal labels — prepare the data with a labels CSV (label column 0/1) or pick a labelled split with "
            "--split."
        )


def evaluate(run: Path, cfg: EvaluateConfig, force: bool = False) -> dict[str, Any]:
    """Compute and write the evaluation; returns the metrics dict (as in metrics.json)."""
    cfg.validate()
    info = open_run(run)
    method = method_of(info, command="cxrad evaluate")
    device = resolve_device(cfg.device)
    out = info.layout.eval
    t0 = time.perf_counter()
    records = artifact_records(info, method)
    _check_labels(info, records, cfg.split)
    calib = threshold_split(info.prepared_checked, cfg.threshold_from, cfg.split)
    uses_maps = maps_are_current(info, records, cfg.split) and maps_are_current(info, records, calib)
    inputs = {**records, **({"maps": info.input_record(info.layout.maps, "maps")} if uses_maps else {})}
    # a previous evaluation with the same options but other inputs is stale: redo it
    old = out / "manifest.json"
    if not force and old.is_file() and is_valid(out, "eval"):
        if json.loads(old.read_text()).get("inputs") != json.loads(json.dumps(inputs)) or not has_intervals(out):
            force = True
    source = SplitScores(info, method, device, records, "cxrad evaluate")
    if force and not uses_maps:  # the models load before --force deletes the old evaluation: a damaged one
        _ = source.scorer        # is refused with nothing lost
    if not begin_output(out, "eval", cfg, force=force):
        progress.log(f"cxrad evaluate: {out} is up to date.")
        return json.loads((out / "metrics.json").read_text())
    remove_stale_temporaries(out)  # what a killed earlier run left half-written

    test = source.split(cfg.split)
    normal = source.split(calib)
    rows = normal_rows(calib, normal.labels)
    normal_scored = normal.scored.subset(rows)
    labels = np.asarray(test.labels)
    names = in_report_order(method.specs, test.scored.scores)
    scores = {k: np.asarray(test.scored.scores[k], np.float64) for k in names}
    metrics = {
        "method": info.method,
        "split": cfg.split, "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "threshold_source": describe(calib, int(rows.sum()), cfg.threshold_percentile),
        "threshold_split": calib,
        "decision_score": decision_score(method.specs, names),
        "scores": {k: {**score_metrics(labels, s, np.asarray(normal_scored.scores[k], np.float64),
                                       cfg.threshold_percentile),
                       **score_intervals(labels, s, cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed)}
                   for k, s in scores.items()},
        "intervals": describe_intervals(cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed),
    }
    if calib == "normal":
        progress.log("cxrad evaluate: thresholds come from the normal training images, which the models fit more "
                     "tightly than unseen normals, so specificity will fall well below 95 %; prepare with "
                     "--val-normals N (the default when Dn has 200 images or more) for a held-out threshold.")
    write_json_atomic(out / "metrics.json", metrics)
    write_bytes_atomic(out / "metrics.md", metrics_markdown(metrics).encode())
    write_csv_atomic(out / "scores.csv", ["id", "label", *scores],
                     ([id_, int(labels[i]), *(repr(float(s[i])) for s in scores.values())]
                      for i, id_ in enumerate(test.ids)))
    plots.roc_pr(labels, scores, out / "roc.png", out / "pr.png",
                 intervals={k: m for k, m in metrics["scores"].items()})
    plots.histograms(labels, scores, out / "histograms.png")
    _overlays(out / "overlays.png", info, method, cfg, test, scores, metrics["decision_score"])
    write_manifest(out, "eval", cfg, inputs=inputs, outputs=list(OUTPUTS),
                   timings={"total": time.perf_counter() - t0}, device=device_name(device))
    finish_output(out)
    return metrics


def has_intervals(out: Path) -> bool:
    """Whether an earlier evaluation reports confidence intervals (those made before they existed
    are redone, so every metrics.json a reader finds has them)."""
    try:
        scores = json.loads((out / "metrics.json").read_text())["scores"]
        return all("auc_ci" in m for m in scores.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _overlays(path: Path, run: RunInfo, method: Method, cfg: EvaluateConfig, test: ScoredSplit,
              scores: dict[str, np.ndarray], rank_by: str) -> None:
    """Two of the method's overlay maps over the ``overlay_count`` highest and lowest scored images."""
    labels = np.asarray(test.labels)
    order = np.argsort(-scores[rank_by], kind="stable")
    k = min(cfg.overlay_count, len(order) // 2)
    pick = np.concatenate([order[:k], order[-k:]])
    images = load_split(run.prepared_checked, cfg.split).images[pick]
    shown = [n for n in method.overlay_maps if n in test.scored.maps][:2] or [rank_by]
    heat = {name: np.asarray(test.scored.maps[name])[pick] for name in shown}
    titles = [f"{'top' if j < k else 'bottom'} {scores[rank_by][i]:.4g} y={int(labels[i])}"
              for j, i in enumerate(pick)]
    plots.overlays(path, images, heat, titles,
                   vmax={n: 1.0 for n in heat if spec_of(method.specs, n).probability})
