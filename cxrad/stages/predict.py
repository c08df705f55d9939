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

import csv
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
    remove_stale_temporaries,
    sha256_file,
    write_csv_atomic,
    write_manifest,
)
from cxrad.config import EvaluateConfig, PredictConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.decode import DecodePool, default_workers
from cxrad.io.preprocess import config_from_parameters
from cxrad.io.sources import Entry, Locator, file_problem, is_image_name
from cxrad.methods.base import Method, Scorer
from cxrad.metrics import is_abnormal, normal_threshold
from cxrad.runs import RunInfo, open_run
from cxrad.scores import decision_score, spec_of
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


def read_calibration(files: list[Path], pool: DecodePool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode the known-normal ``files`` as `prepare` would: ((N, H, W) float32 pixels, rejects).

    Fewer than :data:`cxrad.thresholds.MIN_HELD_OUT_NORMALS` readable files is a user error: their
    95th percentile would be the maximum of a handful of scores.
    """
    entries = [Entry(id=str(f), loc=Locator(str(f)), label=0, split="") for f in files]
    _, images, info = pool.decode(entries, "predict: reading calibration normals")
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
    calib_files: list[Path] | None


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
    calib_files = None
    if calibration:
        calib_files, digest = calibration_files(calibration)
        config["calibration"] = {"inputs": [str(Path(p).resolve()) for p in calibration],
                                 "files": len(calib_files), "sha256": digest}
    return _Inputs(info, method, files, rejects, config, config_from_parameters(info.preprocessing),
                   workers or default_workers(), calib_files)


class _RowWriter:
    """Scores images a chunk at a time and appends their rows to the open predictions.csv (and
    their overlays): rows and overlay numbers continue across chunks, in input order."""

    def __init__(self, fh, out: Path, scorer: Scorer, names: list[str], decision: str, threshold: float,
                 probability: bool, overlays: bool):
        self.fh, self.csv, self.out, self.scorer = fh, csv.writer(fh), out, scorer
        self.names, self.decision, self.threshold = names, decision, threshold
        self.probability, self.overlays = probability, overlays
        self.count = 0
        self.csv.writerow(["path", *names, "decision_score", "threshold", "abnormal", "overlay"])

    def write(self, ids: list[str], images: list[np.ndarray]) -> None:
        if not ids:
            return
        pixels = np.stack([np.asarray(im, np.float32) for im in images])
        scored = self.scorer.score(pixels, label=None)
        if self.overlays:
            (self.out / "overlays").mkdir(parents=True, exist_ok=True)
        rows = []
        for j, id_ in enumerate(ids):
            overlay = ""
            if self.overlays:
                overlay = f"overlays/{self.count + j:06d}_{_safe_name(id_)}.png"
                _overlay_png(pixels[j], _heat01(scored.maps[self.decision][j], self.probability), self.out / overlay)
            value = float(scored.scores[self.decision][j])
            rows.append([id_, *(repr(float(scored.scores[n][j])) for n in self.names), self.decision,
                         repr(self.threshold), int(is_abnormal(value, self.threshold)), overlay])
        self.csv.writerows(rows)
        self.fh.flush()  # finished chunks are on disk (in the temporary file) while the next is scored
        self.count += len(ids)


def _stream(pool: DecodePool, files: list[Path], writer: _RowWriter, chunk: int) -> list[tuple[str, str]]:
    """Decode ``files`` ``chunk`` at a time and hand every ``chunk`` readable images to ``writer``.

    Readable images are re-batched across rejects, so the scorer always sees ``chunk`` images (the
    last call fewer): the same batches as one pass over all of them when ``chunk`` is a multiple of
    the scorer's batch size. Returns the rejects, in input order.
    """
    rejects: list[tuple[str, str]] = []
    ids: list[str] = []
    images: list[np.ndarray] = []
    entries = (Entry(id=str(f), loc=Locator(str(f)), label=-1, split="") for f in files)
    with progress.task("predict", len(files)) as bar:
        for got in pool.chunks(entries, chunk):
            for entry, image, what in zip(*got):
                if image is None:
                    rejects.append((entry.id, str(what)))
                else:
                    ids.append(entry.id)
                    images.append(image)
            while len(ids) >= chunk:
                writer.write(ids[:chunk], images[:chunk])
                del ids[:chunk], images[:chunk]
            bar.advance(len(got.entries), f"{len(rejects)} rejected")
        writer.write(ids, images)
    return rejects


def predict(run: Path, inputs: list[Path], out: Path, cfg: PredictConfig, force: bool = False,
            workers: int | None = None, calibration: list[Path] | None = None) -> PredictResult:
    """Score files/folders ``inputs`` with finished run ``run`` and write the results to ``out``.

    With ``cfg.num_shards > 1`` this process handles share ``cfg.shard_id`` and writes to
    ``out/shard-<k>-of-<n>/``. ``calibration``: files/folders of known-normal studies whose
    score percentile becomes the threshold (every shard computes the same one).

    The inputs stream through in chunks of ``cfg.chunk_size`` images (decode, score, append rows
    and overlays), so memory does not grow with their number. One pool of decoding processes
    serves the calibration set and every chunk. predictions.csv is written to a temporary file in
    ``out`` and renamed when every row is in; the manifest comes last.
    """
    cfg.validate()
    out = Path(out)
    if cfg.num_shards > 1:
        out = out / f"shard-{cfg.shard_id}-of-{cfg.num_shards}"
    got = _read_inputs(Path(run), inputs, cfg, workers, calibration)
    # fork the decoding processes now, before torch or a progress bar starts a thread
    with DecodePool(got.prep_cfg, got.workers) as pool:
        calib = read_calibration(got.calib_files, pool) if got.calib_files is not None else None
        if force:
            # the models and thresholds first: damaged weights must not cost the old predictions
            setup = _decision_setup(got, cfg, calib)
            begin_output(out, "predictions", got.config, force=True)
        else:
            if not begin_output(out, "predictions", got.config, force=False):
                progress.log(f"cxrad predict: {out} is up to date; nothing to do (use --force to redo).")
                s = read_manifest(out, "predictions")["summary"]
                return PredictResult(out, s["predicted"], [tuple(r) for r in s["rejects"]], s["decision_score"],
                                     s["threshold"], s.get("threshold_source", ""))
            setup = _decision_setup(got, cfg, calib)
        return _predict_into(out, got, cfg, pool, calib, setup)


@dataclass
class _Decision:
    device: Any
    scorer: Any
    thresholds: dict[str, float]
    threshold_source: str
    names: list[str]
    decision: str


def _decision_setup(got: _Inputs, cfg: PredictConfig,
                    calib: tuple[np.ndarray, list[tuple[str, str]]] | None) -> _Decision:
    """The run's scorer and the thresholds every chunk is decided against."""
    device = resolve_device(cfg.device)
    scorer = got.method.load_scorer(got.run, device)
    if calib is not None:
        thresholds, threshold_source = calibrated_thresholds(scorer, calib[0], EvaluateConfig().threshold_percentile)
    else:
        thresholds, threshold_source = run_thresholds(got.run, got.method, scorer,
                                                      artifact_records(got.run, got.method))
    names = [n for n in scorer.names if n in thresholds]
    return _Decision(device, scorer, thresholds, threshold_source, names, decision_score(got.method.specs, names))


def _predict_into(out: Path, got: _Inputs, cfg: PredictConfig, pool: DecodePool,
                  calib: tuple[np.ndarray, list[tuple[str, str]]] | None, setup: _Decision) -> PredictResult:
    t0 = time.perf_counter()
    device, scorer, thresholds, threshold_source = setup.device, setup.scorer, setup.thresholds, setup.threshold_source
    names, decision = setup.names, setup.decision
    for folder in (out, out / "overlays"):  # what a killed earlier attempt left half-written
        remove_stale_temporaries(folder)
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = _RowWriter(fh, out, scorer, names, decision, thresholds[decision],
                            spec_of(got.method.specs, decision).probability, cfg.overlays)
        rejects = got.rejects + _stream(pool, got.files, writer, cfg.chunk_size)
    write_csv_atomic(out / "rejects.csv", ["path", "reason"], rejects)
    summary = {"predicted": writer.count, "rejects": rejects, "decision_score": decision, "method": got.run.method,
               "threshold": thresholds[decision], "threshold_source": threshold_source,
               "thresholds": thresholds, "calibration_rejects": calib[1] if calib is not None else []}
    write_manifest(out, "predictions", got.config, inputs={"run": got.config["run"]},
                   outputs=["predictions.csv", "rejects.csv"], timings={"total": time.perf_counter() - t0},
                   device=device_name(device), extra={"summary": summary})
    finish_output(out)
    return PredictResult(out, writer.count, rejects, decision, thresholds[decision], threshold_source)
