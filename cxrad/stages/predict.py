"""`cxrad predict`: score new studies with a finished run.

Files are read exactly as `prepare` read the run's training data (same reader, rejects and
preprocessing, rebuilt from the parameters the run recorded), passed through the frozen
ensembles and ASR-Nets, and written as ``predictions.csv`` (one row per image: every score and
the threshold decision), ``rejects.csv`` and one PNG overlay per image.

The decision threshold is the run's (cxrad/thresholds.py) unless ``calibration`` names files or
folders of known-normal studies from the archive being scored: then it is the same percentile of
*their* scores. Scanners, exposure and patient mix shift every score, so a threshold learnt at one
site flags far more (or fewer) than 5 % of another site's normals; local normals fix that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrad import progress
from cxrad.artifacts import (atomic_path, begin_output, finish_output, input_record, is_valid, read_manifest,
                             sha256_file, write_bytes_atomic, write_manifest)
from cxrad.config import EvaluateConfig, PredictConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.preprocess import config_from_parameters
from cxrad.io.sources import Entry, Locator
from cxrad.metrics import is_abnormal

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ""}
PRIMARY = ("R_dual", "R_intra", "A_inter", "A_intra", "A_rec")   # which score makes the decision


@dataclass
class PredictResult:
    out: Path
    predicted: int
    rejected: list[tuple[str, str]] = field(default_factory=list)
    decision_score: str = ""
    threshold: float = float("nan")
    threshold_source: str = ""


def collect_inputs(inputs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively: DICOM/PNG/JPEG and extension-less files) in a stable order.

    A path that does not exist is a reject, not an error: the rest of the archive is still scored.
    """
    files: list[Path] = []
    rejects: list[tuple[str, str]] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                rejects.append((str(p), "folder holds no DICOM/PNG/JPEG files"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            rejects.append((str(p), "no such file or folder"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, rejects


def shard(files: list[Path], num_shards: int, shard_id: int) -> list[Path]:
    """Round-robin share ``shard_id`` of ``num_shards`` (files already in a stable order)."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise CxradError(f"--num-shards {num_shards} --shard-id {shard_id}: need 0 <= shard-id < num-shards.")
    return files[shard_id::num_shards]


def _check_run_complete(run: Path) -> dict[str, Path]:
    """The run's ASR folders; refuse a run whose stages are missing, naming the step."""
    read_manifest(run, "run")
    if not is_valid(run / "ensemble", "ensemble"):
        raise CxradError(f"{run}: ensembles not trained (no valid {run / 'ensemble'}); run `cxrad train-ensemble` first.")
    refiners = {f"R_{m}": run / "refine" / m for m in ("dual", "intra") if is_valid(run / "refine" / m, "refine")}
    if not refiners:
        raise CxradError(f"{run}: no trained ASR-Net (no valid {run / 'refine'}/dual or intra); run `cxrad refine` first.")
    return refiners


def _thresholds(run: Path, ens, refiners: dict[str, Any], device) -> tuple[dict[str, float], str]:
    """Per-score decision thresholds: from `cxrad evaluate` when it ran, else computed now by the
    same rule (95th percentile of the held-out normals, or of the training normals when the data
    hold none: cxrad/thresholds.py) — never from test labels."""
    metrics_file = run / "eval" / "metrics.json"
    if is_valid(run / "eval", "eval") and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        return ({k: float(v["threshold"]) for k, v in metrics["scores"].items()},
                f"cxrad evaluate: {metrics['threshold_source']}")
    from cxrad.ensemble_maps import maps_of_images
    from cxrad.io.store import load_split
    from cxrad.metrics import normal_threshold
    from cxrad.stages.refine import refined_maps
    from cxrad.thresholds import describe, normal_rows, threshold_split

    pct = EvaluateConfig().threshold_percentile
    split = threshold_split(ens.prepared)
    data = load_split(ens.prepared, split)
    normal = data.images[normal_rows(split, data.labels)]
    maps = maps_of_images(ens, normal)
    thr = {k[6:]: normal_threshold(v, pct) for k, v in maps.items() if k.startswith("score/")}
    for name, asr in refiners.items():
        thr[name] = normal_threshold(refined_maps(asr, maps, device).reshape(len(normal), -1).mean(1), pct)
    return thr, describe(split, len(normal), pct)


def score_images(ens, asrs: dict[str, Any], pixels: np.ndarray, device, label: str
                 ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Image-level scores and heat maps of preprocessed images.

    ``pixels``: (N, H, W) float32 in [0, 1] as `prepare` stores them. Returns ({score name: (N,)
    mean of its map}, N heat maps (H, W) of R_dual, else R_intra), computed in batches of 64.
    """
    from cxrad.ensemble_maps import to_network_space
    from cxrad.stages.refine import refined_maps

    scores: dict[str, list[float]] = {}
    heat: list[np.ndarray] = []
    batch = 64
    with progress.task(label, len(pixels)) as bar:
        for s in range(0, len(pixels), batch):
            x = to_network_space(torch.as_tensor(pixels[s:s + batch], device=device))
            maps = {k: v.float().cpu().numpy() for k, v in ens.maps(x).items()}
            for name in ("A_rec", "A_intra", "A_inter"):
                if name in maps:
                    scores.setdefault(name, []).extend(maps[name].reshape(len(x), -1).mean(1).tolist())
            refined = {name: refined_maps(asr, maps, device) for name, asr in asrs.items()}
            for name, r in refined.items():
                scores.setdefault(name, []).extend(r.reshape(len(x), -1).mean(1).tolist())
            key = "R_dual" if "R_dual" in refined else "R_intra"
            heat.extend(refined[key])
            bar.advance(len(x))
    return {k: np.asarray(v, np.float64) for k, v in scores.items()}, heat


def calibration_files(calibration: list[Path]) -> tuple[list[Path], str]:
    """The known-normal files behind ``--calibrate-on`` and one digest of their contents.

    The digest (sha256 over the files' own sha256 digests, in the listed order) goes into the
    predictions' config, so editing the calibration set invalidates earlier predictions.
    """
    files, missing = collect_inputs(calibration)
    if missing:
        path, why = missing[0]
        raise CxradError(f"--calibrate-on {path}: {why}; pass a folder of known-normal studies from this archive.")
    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    return files, digest


def read_calibration(files: list[Path], prep_cfg, workers: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode the known-normal ``files`` as `prepare` would: ((N, H, W) float32 pixels, rejects).

    Fewer than :data:`cxrad.thresholds.MIN_HELD_OUT_NORMALS` readable files is a user error: their
    95th percentile would be the maximum of a handful of scores.
    """
    from cxrad.stages.prepare import _decode_all
    from cxrad.thresholds import MIN_HELD_OUT_NORMALS

    entries = [Entry(id=str(f), loc=Locator(str(f)), label=0, split="") for f in files]
    images, info = _decode_all(entries, prep_cfg, workers, "predict: reading calibration normals")
    ok = [i for i, im in enumerate(images) if im is not None]
    if len(ok) < MIN_HELD_OUT_NORMALS:
        folders = " ".join(sorted({str(f.parent) for f in files}))
        raise CxradError(f"--calibrate-on {folders}: {len(ok)} readable normal image(s), need at least "
                         f"{MIN_HELD_OUT_NORMALS}; add known-normal studies from this archive.")
    rejects = [(entries[i].id, str(info[i])) for i, im in enumerate(images) if im is None]
    return np.stack([np.asarray(images[i], np.float32) for i in ok]), rejects


def calibrated_thresholds(ens, asrs: dict[str, Any], pixels: np.ndarray, device, percentile: float
                          ) -> tuple[dict[str, float], str]:
    """Per-score thresholds = ``percentile`` of the scores of known-normal images ``pixels`` (N, H, W)."""
    from cxrad.metrics import normal_threshold

    scores, _ = score_images(ens, asrs, pixels, device, "predict: calibrating")
    return ({k: normal_threshold(v, percentile) for k, v in scores.items()},
            f"{percentile:g}th percentile of the scores of the {len(pixels)} local normal images (--calibrate-on)")


def _overlay_png(image01: np.ndarray, heat01: np.ndarray, path: Path, scale: int = 4) -> None:
    """Image and its heat map blended side by side, upsampled ``scale``× (nearest) for viewing."""
    from matplotlib import colormaps
    from PIL import Image

    gray = np.repeat((np.clip(image01, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    colour = (colormaps["jet"](np.clip(heat01, 0, 1))[..., :3] * 255).astype(np.uint8)
    blend = (0.55 * gray + 0.45 * colour).astype(np.uint8)
    both = np.concatenate([gray, np.full((gray.shape[0], 2, 3), 255, np.uint8), blend], axis=1)
    im = Image.fromarray(both).resize((both.shape[1] * scale, both.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _safe_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.strip("/"))[-150:] or "image"


def predict(run: Path, inputs: list[Path], out: Path, cfg: PredictConfig, force: bool = False,
            workers: int | None = None, calibration: list[Path] | None = None) -> PredictResult:
    """Score files/folders ``inputs`` with finished run ``run`` and write the results to ``out``.

    With ``cfg.num_shards > 1`` this process handles share ``cfg.shard_id`` and writes to
    ``out/shard-<k>-of-<n>/``. ``calibration``: files/folders of known-normal studies whose
    score percentile becomes the threshold (every shard computes the same one).
    """
    from cxrad.ensemble_maps import open_run
    from cxrad.stages.prepare import _decode_all, default_workers
    from cxrad.stages.refine import load_asr

    run, out = Path(run), Path(out)
    refiner_dirs = _check_run_complete(run)
    if not inputs:
        raise CxradError("cxrad predict: no INPUT given; pass DICOM/PNG/JPEG files or folders.")
    if cfg.num_shards > 1:
        out = out / f"shard-{cfg.shard_id}-of-{cfg.num_shards}"
    files, rejects = collect_inputs(inputs)
    for path, why in rejects:
        progress.log(f"rejected {path}: {why}")
    files = shard(files, cfg.num_shards, cfg.shard_id)
    config = {"run": input_record(run), "inputs": [str(Path(p).resolve()) for p in inputs],
              "predict": cfg}
    run_manifest = read_manifest(run, "run")
    prep_cfg = config_from_parameters(run_manifest["config"]["preprocessing"])
    workers = workers or default_workers()
    calib_pixels, calib_rejects = None, []
    if calibration:
        # read (and refuse) the calibration set before the output folder is touched
        calib_files, digest = calibration_files(calibration)
        config["calibration"] = {"inputs": [str(Path(p).resolve()) for p in calibration],
                                 "files": len(calib_files), "sha256": digest}
        calib_pixels, calib_rejects = read_calibration(calib_files, prep_cfg, workers)
    if not begin_output(out, "predictions", config, force=force):
        progress.log(f"cxrad predict: {out} is up to date; nothing to do (use --force to redo).")
        m = read_manifest(out, "predictions")
        s = m["summary"]
        return PredictResult(out, s["predicted"], [tuple(r) for r in s["rejects"]], s["decision_score"],
                             s["threshold"], s.get("threshold_source", ""))

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    entries = [Entry(id=str(f), loc=Locator(str(f)), label=-1, split="") for f in files]
    images, info = _decode_all(entries, prep_cfg, workers, "predict: decoding")
    ok = [i for i, im in enumerate(images) if im is not None]
    rejects += [(entries[i].id, str(info[i])) for i, im in enumerate(images) if im is None]  # logged by the decoder

    ens = open_run(run, device, command="cxrad predict")
    asrs = {name: load_asr(folder, device) for name, folder in refiner_dirs.items()}
    if calib_pixels is not None:
        thresholds, threshold_source = calibrated_thresholds(ens, asrs, calib_pixels, device,
                                                             EvaluateConfig().threshold_percentile)
    else:
        thresholds, threshold_source = _thresholds(run, ens, asrs, device)
    decision = next(k for k in PRIMARY if k in thresholds and (k in asrs or k.startswith("A_")))

    pixels = np.stack([np.asarray(images[i], np.float32) for i in ok]) if ok else np.zeros((0, 1, 1), np.float32)
    scores, heat = score_images(ens, asrs, pixels, device, "predict: scoring")

    names = [k for k in ("A_rec", "A_intra", "A_inter", "R_intra", "R_dual") if k in scores]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", *names, "decision_score", "threshold", "abnormal", "overlay"])
    overlay_dir = out / "overlays"
    if cfg.overlays and ok:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    outputs = ["predictions.csv", "rejects.csv"]
    for j, i in enumerate(ok):
        value = scores[decision][j]
        overlay = ""
        if cfg.overlays:
            overlay = f"overlays/{j:06d}_{_safe_name(entries[i].id)}.png"
            _overlay_png(pixels[j], heat[j], out / overlay)
        w.writerow([entries[i].id, *(repr(float(scores[n][j])) for n in names), decision,
                    repr(thresholds[decision]), int(is_abnormal(value, thresholds[decision])), overlay])
    write_bytes_atomic(out / "predictions.csv", buf.getvalue().encode())
    rbuf = io.StringIO()
    rw = csv.writer(rbuf)
    rw.writerow(["path", "reason"])
    rw.writerows(rejects)
    write_bytes_atomic(out / "rejects.csv", rbuf.getvalue().encode())
    summary = {"predicted": len(ok), "rejects": rejects, "decision_score": decision,
               "threshold": thresholds[decision], "threshold_source": threshold_source,
               "thresholds": thresholds, "calibration_rejects": calib_rejects}
    write_manifest(out, "predictions", config, inputs={"run": input_record(run)}, outputs=outputs,
                   timings={"total": time.perf_counter() - t0}, device=device_name(device),
                   extra={"summary": summary})
    finish_output(out)
    return PredictResult(out, len(ok), rejects, decision, thresholds[decision], threshold_source)


def summarize_predictions(folder: Path) -> dict[str, Any]:
    s = read_manifest(folder, "predictions")["summary"]
    return {"predicted": s["predicted"], "rejected": len(s["rejects"]), "decision_score": s["decision_score"],
            "threshold": s["threshold"], "threshold_source": s.get("threshold_source", "")}
