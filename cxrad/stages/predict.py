"""`cxrad predict`: score new studies with a finished run.

Files are read exactly as `prepare` read the run's training data (same reader, rejects and
preprocessing, rebuilt from the parameters the run recorded), scored by the run's method, and
written as ``predictions.csv`` (one row per image: every score and the threshold decision),
``rejects.csv`` and one PNG overlay per image (the deciding score's map).

The decision threshold is the run's (cxrad/thresholds.py) unless ``calibration`` names files or
folders of known-normal studies from the archive being scored: then it is the same percentile of
*their* scores. Scanners, exposure and patient mix shift every score, so a threshold learnt at one
site flags far more (or fewer) than 5 % of another site's normals; local normals fix that.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrad import progress
from cxrad.artifacts import (
    atomic_path,
    begin_output,
    finish_output,
    read_manifest,
    sha256_file,
    write_csv_atomic,
    write_manifest,
)
from cxrad.config import EvaluateConfig, PredictConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.decode import decode_all, default_workers
from cxrad.io.preprocess import config_from_parameters
from cxrad.io.sources import Entry, Locator, file_problem, is_image_name
from cxrad.methods.base import Method, Scorer
from cxrad.metrics import is_abnormal, normal_threshold
from cxrad.runs import RunInfo, open_run
from cxrad.scores import ScoredImages, decision_score, spec_of
from cxrad.scoring import artifact_records, method_of, score_split
from cxrad.thresholds import MIN_HELD_OUT_NORMALS, describe, normal_rows, threshold_split


@dataclass
class PredictResult:
    out: Path
    predicted: int
    rejected: list[tuple[str, str]] = field(default_factory=list)
    decision_score: str = ""
    threshold: float = float("nan")
    threshold_source: str = ""


def _scan_folder(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files under ``folder`` (names as `prepare` reads them: cxrad.io.sources.is_image_name),
    and a reject for every dangling link, link loop, FIFO or other non-file among them."""
    found, rejects = [], []
    for f in sorted(folder.rglob("*")):
        if f.name.startswith(".") or f.is_dir():
            continue
        why = file_problem(f)
        if why:
            rejects.append((str(f), why))
        elif is_image_name(f.name):
            found.append(f)
    if not found:
        rejects.append((str(folder), "folder holds no DICOM/PNG/JPEG files"))
    return found, rejects


def collect_inputs(inputs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively: DICOM, PNG, JPEG ... and extension-less files) in a stable order.

    A path that does not exist, or is no regular file (a dangling link, a FIFO ...), is a reject, not an
    error: the rest of the archive is still scored.
    """
    files: list[Path] = []
    rejects: list[tuple[str, str]] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found, odd = _scan_folder(p)
            files.extend(found)
            rejects.extend(odd)
            continue
        why = file_problem(p)
        if why:
            rejects.append((str(p), "no such file or folder" if why == "no such file" else why))
        else:
            files.append(p)
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, rejects


def shard(files: list[Path], num_shards: int, shard_id: int) -> list[Path]:
    """Round-robin share ``shard_id`` of ``num_shards`` (files already in a stable order)."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise CxradError(f"--num-shards {num_shards} --shard-id {shard_id}: need 0 <= shard-id < num-shards.")
    return files[shard_id::num_shards]


def run_thresholds(run: RunInfo, method: Method, scorer: Scorer, records: dict[str, Any]
                   ) -> tuple[dict[str, float], str]:
    """Per-score decision thresholds: from `cxrad evaluate` when it ran on the current artifacts,
    else computed now by the same rule (95th percentile of the held-out normals, or of the training
    normals when the data hold none: cxrad/thresholds.py) — never from test labels."""
    layout = run.layout
    if run.has_artifact(layout.eval, "eval") and layout.metrics.is_file():
        made_from = run.artifact(layout.eval, "eval").get("inputs", {})
        if all(made_from.get(k) == json.loads(json.dumps(v)) for k, v in records.items()):
            metrics = json.loads(layout.metrics.read_text())
            return ({k: float(v["threshold"]) for k, v in metrics["scores"].items()},
                    f"cxrad evaluate: {metrics['threshold_source']}")
    pct = EvaluateConfig().threshold_percentile
    prepared = run.prepared_checked
    split = threshold_split(prepared)
    scored = score_split(scorer, prepared, split)
    normal = scored.scored.subset(normal_rows(split, scored.labels))
    return ({k: normal_threshold(v, pct) for k, v in normal.scores.items()},
            describe(split, len(normal), pct))


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
    entries = [Entry(id=str(f), loc=Locator(str(f)), label=0, split="") for f in files]
    images, info = decode_all(entries, prep_cfg, workers, "predict: reading calibration normals")
    ok = [i for i, im in enumerate(images) if im is not None]
    if len(ok) < MIN_HELD_OUT_NORMALS:
        folders = " ".join(sorted({str(f.parent) for f in files}))
        raise CxradError(f"--calibrate-on {folders}: {len(ok)} readable normal image(s), need at least "
                         f"{MIN_HELD_OUT_NORMALS}; add known-normal studies from this archive.")
    rejects = [(entries[i].id, str(info[i])) for i, im in enumerate(images) if im is None]
    return np.stack([np.asarray(images[i], np.float32) for i in ok]), rejects


def calibrated_thresholds(scorer: Scorer, pixels: np.ndarray, percentile: float) -> tuple[dict[str, float], str]:
    """Per-score thresholds = ``percentile`` of the scores of known-normal images ``pixels`` (N, H, W)."""
    scored = scorer.score(pixels, label="predict: calibrating")
    return ({k: normal_threshold(v, percentile) for k, v in scored.scores.items()},
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


def _heat01(score_map: np.ndarray, probability: bool) -> np.ndarray:
    """A map on [0, 1] for display: probabilities as they are, other maps over their own maximum."""
    return score_map if probability else score_map / max(float(score_map.max()), 1e-12)


@dataclass
class _Inputs:
    """What predict reads before touching the output folder."""

    run: RunInfo
    method: Method
    files: list[Path]
    rejects: list[tuple[str, str]]
    config: dict[str, Any]
    prep_cfg: Any
    workers: int
    calib_pixels: np.ndarray | None
    calib_rejects: list[tuple[str, str]]


def _read_inputs(run: Path, inputs: list[Path], cfg: PredictConfig, workers: int | None,
                 calibration: list[Path] | None) -> _Inputs:
    info = open_run(run)
    method = method_of(info, command="cxrad predict")
    if not inputs:
        raise CxradError("cxrad predict: no INPUT given; pass DICOM/PNG/JPEG files or folders.")
    files, rejects = collect_inputs(inputs)
    for path, why in rejects:
        progress.log(f"rejected {path}: {why}")
    files = shard(files, cfg.num_shards, cfg.shard_id)
    config: dict[str, Any] = {"run": info.input_record(info.root, "run"),
                              "inputs": [str(Path(p).resolve()) for p in inputs], "predict": cfg}
    prep_cfg = config_from_parameters(info.preprocessing)
    workers = workers or default_workers()
    calib_pixels, calib_rejects = None, []
    if calibration:
        # read (and refuse) the calibration set before the output folder is touched
        calib_files, digest = calibration_files(calibration)
        config["calibration"] = {"inputs": [str(Path(p).resolve()) for p in calibration],
                                 "files": len(calib_files), "sha256": digest}
        calib_pixels, calib_rejects = read_calibration(calib_files, prep_cfg, workers)
    return _Inputs(info, method, files, rejects, config, prep_cfg, workers, calib_pixels, calib_rejects)


def _write_rows(out: Path, ids: list[str], pixels: np.ndarray, scored: ScoredImages, names: list[str],
                decision: str, threshold: float, probability: bool, overlays: bool) -> None:
    rows = []
    if overlays and len(ids):
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    for j, id_ in enumerate(ids):
        overlay = ""
        if overlays:
            overlay = f"overlays/{j:06d}_{_safe_name(id_)}.png"
            _overlay_png(pixels[j], _heat01(scored.maps[decision][j], probability), out / overlay)
        value = float(scored.scores[decision][j])
        rows.append([id_, *(repr(float(scored.scores[n][j])) for n in names), decision, repr(threshold),
                     int(is_abnormal(value, threshold)), overlay])
    write_csv_atomic(out / "predictions.csv", ["path", *names, "decision_score", "threshold", "abnormal", "overlay"],
                     rows)


def predict(run: Path, inputs: list[Path], out: Path, cfg: PredictConfig, force: bool = False,
            workers: int | None = None, calibration: list[Path] | None = None) -> PredictResult:
    """Score files/folders ``inputs`` with finished run ``run`` and write the results to ``out``.

    With ``cfg.num_shards > 1`` this process handles share ``cfg.shard_id`` and writes to
    ``out/shard-<k>-of-<n>/``. ``calibration``: files/folders of known-normal studies whose
    score percentile becomes the threshold (every shard computes the same one).
    """
    cfg.validate()
    out = Path(out)
    if cfg.num_shards > 1:
        out = out / f"shard-{cfg.shard_id}-of-{cfg.num_shards}"
    got = _read_inputs(Path(run), inputs, cfg, workers, calibration)
    if not begin_output(out, "predictions", got.config, force=force):
        progress.log(f"cxrad predict: {out} is up to date; nothing to do (use --force to redo).")
        s = read_manifest(out, "predictions")["summary"]
        return PredictResult(out, s["predicted"], [tuple(r) for r in s["rejects"]], s["decision_score"],
                             s["threshold"], s.get("threshold_source", ""))

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    entries = [Entry(id=str(f), loc=Locator(str(f)), label=-1, split="") for f in got.files]
    images, info = decode_all(entries, got.prep_cfg, got.workers, "predict: decoding")
    ok = [i for i, im in enumerate(images) if im is not None]
    rejects = got.rejects + [(entries[i].id, str(info[i])) for i, im in enumerate(images) if im is None]

    scorer = got.method.load_scorer(got.run, device)
    if got.calib_pixels is not None:
        thresholds, threshold_source = calibrated_thresholds(scorer, got.calib_pixels,
                                                             EvaluateConfig().threshold_percentile)
    else:
        thresholds, threshold_source = run_thresholds(got.run, got.method, scorer,
                                                      artifact_records(got.run, got.method))
    names = [n for n in scorer.names if n in thresholds]
    decision = decision_score(got.method.specs, names)

    pixels = (np.stack([np.asarray(images[i], np.float32) for i in ok]) if ok
              else np.zeros((0,) + (got.prep_cfg.size,) * 2, np.float32))
    scored = scorer.score(pixels, label="predict: scoring")
    _write_rows(out, [entries[i].id for i in ok], pixels, scored, names, decision, thresholds[decision],
                spec_of(got.method.specs, decision).probability, cfg.overlays)
    write_csv_atomic(out / "rejects.csv", ["path", "reason"], rejects)
    summary = {"predicted": len(ok), "rejects": rejects, "decision_score": decision, "method": got.run.method,
               "threshold": thresholds[decision], "threshold_source": threshold_source,
               "thresholds": thresholds, "calibration_rejects": got.calib_rejects}
    write_manifest(out, "predictions", got.config, inputs={"run": got.config["run"]},
                   outputs=["predictions.csv", "rejects.csv"], timings={"total": time.perf_counter() - t0},
                   device=device_name(device), extra={"summary": summary})
    finish_output(out)
    return PredictResult(out, len(ok), rejects, decision, thresholds[decision], threshold_source)
