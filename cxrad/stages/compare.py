"""`cxrad compare RUN... --out DIR`: every score of several evaluated runs on one test set, side by side.

Reads what `cxrad evaluate` stored in each run (RUN/eval/metrics.json for the thresholded metrics
and their threshold source, RUN/eval/scores.csv for the per-image scores) and refuses a run that
was not evaluated, evaluated on another split, whose evaluation is out of date, or whose test
images differ from the first run's (by a digest of the sorted image ids). For every score: AUC
with its DeLong interval, AP with a stratified-bootstrap interval, and the paired DeLong p-value
against the best AUC, all computed here from the stored scores with one setting for every run
(cxrad/metrics_ci.py). What each run saw (Dn, Du, K labelled anomalies) comes from its method
and the prepared data's manifest. Writes compare.md, compare.json, roc.png and the manifest
(kind "compare", inputs: every run's eval manifest digest) atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrad import methods, progress
from cxrad.artifacts import (
    MANIFEST_NAME,
    begin_output,
    finish_output,
    read_manifest,
    remove_stale_temporaries,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_manifest,
)
from cxrad.config import CompareConfig
from cxrad.errors import CxradError
from cxrad.metrics import average_precision
from cxrad.metrics_ci import ap_interval, auc_interval, delong, describe_intervals, paired_delong_p_all
from cxrad.report.comparison import compare_markdown, roc_all
from cxrad.runs import RunInfo, open_run

OUTPUTS = ("compare.md", "compare.json", "roc.png")
THRESHOLDED = ("acc", "f1", "sensitivity", "specificity")
SET_SYMBOL = {"normal": "Dn", "unlabeled": "Du"}


@dataclass(frozen=True)
class CompareRecord:
    """What a compare artifact records as its configuration: the runs, in order, and the options."""

    runs: tuple[str, ...]
    options: CompareConfig


@dataclass
class EvaluatedRun:
    """One run's evaluation as stored: ids (N,) sorted, labels (N,), scores name -> (N,) float64."""

    info: RunInfo
    label: str
    metrics: dict[str, Any]
    ids: list[str]
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    eval_record: dict[str, Any]
    saw: dict[str, Any]
    settings: dict[str, Any]   # configurations without seeds (_settings)

    @property
    def ids_digest(self) -> str:
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# reading and checking the runs
# ---------------------------------------------------------------------------------------------
def _eval_manifest(info: RunInfo, split: str) -> dict[str, Any]:
    """The run's evaluation manifest, refused (with the command that fixes it) when missing, made on
    another split, or out of date."""
    folder, fix = info.layout.eval, f"run `cxrad evaluate {info.root} --split {split}`"
    if not (folder / MANIFEST_NAME).is_file():
        raise CxradError(f"{info.root}: not evaluated (no {folder / MANIFEST_NAME}); {fix} first.")
    manifest = read_manifest(folder, "eval")
    done = (manifest.get("config") or {}).get("split")
    if done != split:
        raise CxradError(f"{info.root}: evaluated on split '{done}', not '{split}'; {fix} --force, or compare "
                         f"with --split {done}.")
    for name, record in (manifest.get("inputs") or {}).items():
        source = Path(record.get("path", "")) / MANIFEST_NAME if isinstance(record, dict) else None
        if source is not None and record.get("manifest_sha256") and (
                not source.is_file() or sha256_file(source) != record["manifest_sha256"]):
            raise CxradError(f"{info.root}: its evaluation is out of date (its input {name} changed since); {fix}.")
    return manifest


def _read_scores(path: Path, names: list[str]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(ids, labels (N,), name -> scores (N,)) of an eval scores.csv, rows sorted by id."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: r["id"])
        ids = [r["id"] for r in rows]
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        scores = {n: np.array([float(r[n]) for r in rows], dtype=np.float64) for n in names}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CxradError(f"{path}: unreadable ({type(exc).__name__}: {exc}); re-run `cxrad evaluate` with "
                         "--force.") from None
    if len(set(ids)) != len(ids):
        raise CxradError(f"{path}: an image id appears twice; re-run `cxrad evaluate` with --force.")
    return ids, labels, scores


def _saw(info: RunInfo) -> dict[str, Any]:
    """What the run was trained on: {"sets": [...], "counts": {set: n}, "text": "Dn 1000 + Du 853"}."""
    try:
        method = methods.get(info.method)
        sets = tuple(method.training_sets(info))
    except (CxradError, ImportError):   # a method of another install, or one whose optional extra is missing
        return {"sets": [], "counts": {}, "text": f"unknown (method {info.method!r} is not installed)"}
    try:
        summary = read_manifest(info.prepared, "prepared").get("summary", {})
    except CxradError:
        summary = {}
    counts = {name: int(summary.get("sets", {}).get(name, {}).get("count", 0)) for name in sets if name != "anomaly"}
    if "anomaly" in sets:
        counts["anomaly"] = method.labelled_anomalies_used(
            info, int(summary.get("labelled_anomalies", {}).get("count", 0)))
    text = " + ".join(f"{SET_SYMBOL[n]} {counts[n]}" if n in SET_SYMBOL else f"{counts[n]} labelled abnormal"
                      for n in sets) if summary else " + ".join(SET_SYMBOL.get(n, n) for n in sets)
    return {"sets": list(sets), "counts": counts, "text": text}


def _labels_of(runs: list[Path]) -> list[str]:
    """A short label per run: the fewest trailing parts of its path that tell it from the others
    (its folder name unless two runs share it)."""
    parts = [p.resolve().parts for p in runs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in runs]


def load_run(path: Path, label: str, split: str) -> EvaluatedRun:
    info = open_run(path)
    manifest = _eval_manifest(info, split)
    try:
        metrics = json.loads((info.layout.eval / "metrics.json").read_text())
        names = list(metrics["scores"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CxradError(f"{info.layout.eval / 'metrics.json'}: unreadable; re-run `cxrad evaluate {info.root} "
                         "--force`.") from None
    ids, labels, scores = _read_scores(info.layout.eval / "scores.csv", names)
    record = {"path": str(info.layout.eval.resolve()), "kind": manifest["kind"],
              "manifest_sha256": sha256_file(info.layout.eval / MANIFEST_NAME)}
    return EvaluatedRun(info, label, metrics, ids, labels, scores, record, _saw(info), _settings(info, manifest))


def check_same_test_set(runs: list[EvaluatedRun]) -> None:
    """Refuse runs whose evaluated images (or their labels) differ from the first run's."""
    first = runs[0]
    for other in runs[1:]:
        if other.ids_digest != first.ids_digest:
            raise CxradError(
                f"{first.info.root} and {other.info.root} were evaluated on different test images "
                f"({len(first.ids)} vs {len(other.ids)} images; id digests {first.ids_digest[:12]} vs "
                f"{other.ids_digest[:12]}); compare only runs evaluated on the same images (prepared with the "
                "same test split).")
        if not np.array_equal(other.labels, first.labels):
            raise CxradError(f"{first.info.root} and {other.info.root} label the same test images differently; "
                             "compare only runs prepared with the same labels.")


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def _group_key(run: EvaluatedRun, score: str) -> str:
    """Runs that differ only in their seeds (and prepared folder) share a key: their rows are one
    configuration repeated, summarised as mean ± sd."""
    return json.dumps([run.info.method, run.saw["text"], score, run.settings], sort_keys=True)


def _without_seeds(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_seeds(v) for k, v in obj.items()
                if k not in ("seed", "seeds", "prepared", "preprocessing", "method")}
    if isinstance(obj, list):
        return [_without_seeds(v) for v in obj]
    return obj


def _settings(info: RunInfo, eval_manifest: dict[str, Any]) -> dict[str, Any]:
    """The configurations of the run and of every training artifact its evaluation read (DDAD-ASR:
    ensemble, refine), without seeds: what makes two runs the same configuration."""
    out = {"run": _without_seeds(info.config)}
    for name, record in (eval_manifest.get("inputs") or {}).items():
        if isinstance(record, dict) and record.get("kind") not in ("run", "maps", "prepared") and record.get("path"):
            try:
                out[name] = _without_seeds(read_manifest(record["path"]).get("config"))
            except CxradError:
                out[name] = record.get("manifest_sha256")
    return out


def rows_of(runs: list[EvaluatedRun], cfg: CompareConfig) -> tuple[list[dict[str, Any]], int]:
    """One row per (run, score) in run order, and the index of the best AUC."""
    labels = runs[0].labels
    entries = [(r, name) for r in runs for name in r.scores]
    matrix = np.stack([r.scores[name] for r, name in entries])
    aucs, cov = delong(labels, matrix)
    best = int(np.argmax(aucs))   # the first of equal AUCs: run order decides
    p_values = paired_delong_p_all(labels, list(matrix), best)
    rows = []
    for i, (r, name) in enumerate(entries):
        m = r.metrics["scores"][name]
        ap_ci = ap_interval(labels, matrix[i], cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        rows.append({
            "run": r.label, "run_path": str(r.info.root.resolve()), "method": r.info.method, "score": name,
            "saw": r.saw["text"], "auc": float(aucs[i]), "auc_se": float(np.sqrt(max(cov[i, i], 0.0))),
            "auc_ci": list(auc_interval(float(aucs[i]), float(cov[i, i]), cfg.ci_level)),
            "ap": average_precision(labels, matrix[i]), "ap_ci": list(ap_ci),
            "p_vs_best": p_values[i], "best": i == best,
            **{k: m[k] for k in THRESHOLDED}, "threshold": m["threshold"],
            "threshold_source": r.metrics.get("threshold_source", ""),
            "threshold_split": r.metrics.get("threshold_split", ""),
            "decision_score": name == r.metrics.get("decision_score"),
            "group": _group_key(r, name),
        })
    return rows, best


def groups_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd (ddof 1) of AUC and AP over the rows of each group with more than one run."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["group"], []).append(row)
    out = []
    for members in by.values():
        if len(members) < 2:
            continue
        auc = np.array([m["auc"] for m in members])
        ap = np.array([m["ap"] for m in members])
        out.append({"method": members[0]["method"], "score": members[0]["score"], "saw": members[0]["saw"],
                    "runs": [m["run"] for m in members], "auc_mean": float(auc.mean()),
                    "auc_sd": float(auc.std(ddof=1)), "ap_mean": float(ap.mean()), "ap_sd": float(ap.std(ddof=1))})
    return out


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def compare(runs: list[Path], out: Path, cfg: CompareConfig, force: bool = False) -> dict[str, Any]:
    """Compare the evaluations of ``runs`` into ``out``; returns compare.json's content."""
    t0 = time.perf_counter()
    cfg.validate()
    if not runs:
        raise CxradError("give at least one run folder to compare.")
    paths = [Path(r) for r in runs]
    resolved = [p.resolve() for p in paths]
    dup = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if dup is not None:
        raise CxradError(f"{dup}: given twice; name each run once.")
    loaded = [load_run(p, label, cfg.split) for p, label in zip(paths, _labels_of(paths))]
    check_same_test_set(loaded)
    labels = loaded[0].labels
    if min(int((labels == 0).sum()), int((labels == 1).sum())) < 2:
        raise CxradError(f"{loaded[0].info.root}: split '{cfg.split}' has fewer than 2 normal or 2 abnormal images; "
                         "intervals and paired tests need both classes.")
    out = Path(out)
    record = CompareRecord(tuple(str(p) for p in resolved), cfg)
    inputs = {f"eval:{r.label}": r.eval_record for r in loaded}
    old = out / MANIFEST_NAME
    if not force and old.is_file():
        try:   # the same runs, re-evaluated since: redo (as `evaluate` does with changed inputs)
            force = json.loads(old.read_text()).get("inputs") != json.loads(json.dumps(inputs))
        except (OSError, ValueError):
            pass
    if not begin_output(out, "compare", record, force=force):
        progress.log(f"cxrad compare: {out} is up to date.")
        return json.loads((out / "compare.json").read_text())
    remove_stale_temporaries(out)

    rows, best = rows_of(loaded, cfg)
    result = {
        "split": cfg.split, "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "test_ids_sha256": loaded[0].ids_digest,
        "intervals": {**describe_intervals(cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed),
                      "paired_test": "DeLong, two-sided, each score against the best AUC on the same images"},
        "best": {"run": rows[best]["run"], "score": rows[best]["score"]},
        "runs": [{"run": r.label, "path": str(r.info.root.resolve()), "method": r.info.method, "saw": r.saw,
                  "threshold_source": r.metrics.get("threshold_source", ""),
                  "eval_manifest_sha256": r.eval_record["manifest_sha256"]} for r in loaded],
        "rows": rows,
        "groups": groups_of(rows),
    }
    write_json_atomic(out / "compare.json", result)
    write_bytes_atomic(out / "compare.md", compare_markdown(result).encode())
    roc_all(labels, [r.scores[name] for r in loaded for name in r.scores], rows, out / "roc.png", cfg.ci_level)
    write_manifest(out, "compare", record, inputs=inputs, outputs=list(OUTPUTS),
                   timings={"total": time.perf_counter() - t0})
    finish_output(out)
    return result

