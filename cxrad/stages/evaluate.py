"""`cxrad evaluate`: every score of the run on a labelled split -> RUN/eval/.

Scores: A_rec, A_intra, A_inter (from the maps) and R_intra, R_dual (ASR-Nets of RUN/refine/*
applied to the same maps), whichever exist. Thresholds come from normal images only: held-out
ones (val split) when the data have them, else the training normals (cxrad/thresholds.py).
Writes metrics.json, metrics.md, scores.csv, roc.png, pr.png, histograms.png, overlays.png,
manifest.json; prints the table.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cxrad import progress
from cxrad.artifacts import (begin_output, finish_output, input_record, is_valid, read_manifest,
                             write_bytes_atomic, write_json_atomic, write_manifest)
from cxrad.config import EvaluateConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.metrics import score_metrics
from cxrad.report import plots
from cxrad.report.tables import metrics_markdown, print_metrics
from cxrad.stages.refine import load_asr, refined_maps
from cxrad.stages.score import maps_file, read_maps_h5
from cxrad.thresholds import describe, normal_rows, threshold_split

SCORE_ORDER = ("A_rec", "A_intra", "A_inter", "R_intra", "R_dual")
OUTPUTS = ("metrics.json", "metrics.md", "scores.csv", "roc.png", "pr.png", "histograms.png", "overlays.png")


def _load_maps(run: Path, split: str, device) -> tuple[dict[str, Any], dict | None]:
    """Maps of a split: from RUN/maps when `cxrad score` wrote them, else computed now (not stored)."""
    maps_dir = run / "maps"
    if is_valid(maps_dir, "maps") and maps_file(run, split).is_file():
        return read_maps_h5(maps_file(run, split)), input_record(maps_dir)
    from cxrad.ensemble_maps import maps_of_images, open_run
    from cxrad.io.store import load_split

    progress.log(f"cxrad evaluate: no maps of '{split}' in {maps_dir}; computing them now.")
    ens = open_run(run, device, command="cxrad evaluate")
    data = load_split(ens.prepared, split)
    m = maps_of_images(ens, data.images)
    return {"maps": {k: v for k, v in m.items() if not k.startswith("score/")},
            "scores": {k[6:]: v for k, v in m.items() if k.startswith("score/")},
            "ids": data.ids, "labels": data.labels}, None


def _check_labels(run: Path, prepared: Path, split: str) -> None:
    """Fail before any computation when the split lacks labels of both classes."""
    # labels only: the maps themselves are read once, after this check
    if maps_file(run, split).is_file() and is_valid(run / "maps", "maps"):
        with h5py.File(maps_file(run, split), "r") as h5:
            labels = h5["labels"][...]
    else:
        from cxrad.io.store import load_labels

        labels = load_labels(prepared, split)
    if np.any(labels < 0) or len(np.unique(labels)) < 2:
        raise CxradError(
            f"{run}: split '{split}' has no labels for some images or only one class; evaluate needs normal and "
            "abnormal labels — prepare the data with a labels CSV (label column 0/1) or pick a labelled split with --split."
        )


def _refiners(run: Path) -> dict[str, Path]:
    return {f"R_{mode}": run / "refine" / mode for mode in ("intra", "dual")
            if is_valid(run / "refine" / mode, "refine")}


def evaluate(run: Path, cfg: EvaluateConfig, force: bool = False) -> dict[str, Any]:
    """Compute and write the evaluation; returns the metrics dict (as in metrics.json)."""
    from cxrad.ensemble_maps import run_prepared

    run = Path(run)
    prepared = run_prepared(run, read_manifest(run, "run"))
    device = resolve_device(cfg.device)
    out = run / "eval"
    t0 = time.perf_counter()
    _check_labels(run, prepared, cfg.split)
    calib = threshold_split(prepared, cfg.threshold_from, cfg.split)
    test, test_rec = _load_maps(run, cfg.split, device)
    labels = np.asarray(test["labels"])
    normal, _ = _load_maps(run, calib, device)
    rows = normal_rows(calib, normal["labels"])
    normal = {"maps": {k: v[rows] for k, v in normal["maps"].items()},
              "scores": {k: np.asarray(v)[rows] for k, v in normal["scores"].items()}}
    refiners = _refiners(run)
    inputs = {"run": input_record(run), **({"maps": test_rec} if test_rec else {}),
              **{k: input_record(p) for k, p in refiners.items()}}
    # a previous evaluation with the same options but other inputs is stale: redo it
    old = out / "manifest.json"
    if not force and old.is_file() and is_valid(out, "eval"):
        if json.loads(old.read_text()).get("inputs") != json.loads(json.dumps(inputs)):
            force = True
    if not begin_output(out, "eval", cfg, force=force):
        progress.log(f"cxrad evaluate: {out} is up to date.")
        metrics = json.loads((out / "metrics.json").read_text())
        print_metrics(metrics)
        return metrics

    scores = {k: np.asarray(test["scores"][k], np.float64) for k in SCORE_ORDER if k in test["scores"]}
    normal_scores = {k: np.asarray(normal["scores"][k], np.float64) for k in scores}
    prob_maps = {}
    for name, folder in refiners.items():
        asr = load_asr(folder, device)
        prob_maps[name] = refined_maps(asr, test["maps"], device)
        scores[name] = prob_maps[name].reshape(len(labels), -1).mean(1).astype(np.float64)
        normal_scores[name] = refined_maps(asr, normal["maps"], device).reshape(int(rows.sum()), -1).mean(1)
    scores = {k: scores[k] for k in SCORE_ORDER if k in scores}

    metrics = {
        "split": cfg.split, "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "threshold_source": describe(calib, int(rows.sum()), cfg.threshold_percentile),
        "threshold_split": calib,
        "scores": {k: score_metrics(labels, s, normal_scores[k], cfg.threshold_percentile) for k, s in scores.items()},
    }
    write_json_atomic(out / "metrics.json", metrics)
    write_bytes_atomic(out / "metrics.md", metrics_markdown(metrics).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "label", *scores])
    for i, id_ in enumerate(test["ids"]):
        w.writerow([id_, int(labels[i]), *(repr(float(s[i])) for s in scores.values())])
    write_bytes_atomic(out / "scores.csv", buf.getvalue().encode())
    plots.roc_pr(labels, scores, out / "roc.png", out / "pr.png")
    plots.histograms(labels, scores, out / "histograms.png")
    _overlays(out / "overlays.png", prepared, cfg, test, labels, scores, prob_maps)
    write_manifest(out, "eval", cfg, inputs=inputs, outputs=list(OUTPUTS),
                   timings={"total": time.perf_counter() - t0}, device=device_name(device))
    finish_output(out)
    print_metrics(metrics)
    return metrics


def _overlays(path: Path, prepared: Path, cfg: EvaluateConfig, test: dict, labels: np.ndarray,
              scores: dict[str, np.ndarray], prob_maps: dict[str, np.ndarray]) -> None:
    """R_dual / A_inter (whichever exist) over the ``overlay_count`` highest and lowest scored images."""
    from cxrad.io.store import load_split

    rank_by = next(k for k in ("R_dual", "A_inter", "R_intra", "A_intra", "A_rec") if k in scores)
    order = np.argsort(-scores[rank_by], kind="stable")
    k = min(cfg.overlay_count, len(order) // 2)
    pick = np.concatenate([order[:k], order[-k:]])
    images = load_split(prepared, cfg.split).images[pick]
    heat = {}
    for name in ("A_inter", "R_dual", "A_intra", "R_intra"):
        src = prob_maps.get(name) if name.startswith("R_") else test["maps"].get(name)
        if src is not None and len(heat) < 2:
            heat[name] = np.asarray(src)[pick]
    titles = [f"{'top' if j < k else 'bottom'} {scores[rank_by][i]:.4g} y={int(labels[i])}"
              for j, i in enumerate(pick)]
    plots.overlays(path, images, heat, titles, vmax={k: 1.0 for k in heat if k.startswith("R_")})


def summarize_eval(folder: Path) -> dict[str, Any]:
    read_manifest(folder, "eval")
    m = json.loads((Path(folder) / "metrics.json").read_text())
    return {k: {"auc": round(100 * v["auc"], 2), "ap": round(100 * v["ap"], 2)} for k, v in m["scores"].items()}
