"""`cxrad inspect` summaries of the generic artifacts (maps, eval, predictions): files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxrad.artifacts import read_manifest
from cxrad.io.maps_store import score_means


def summarize_maps(folder: Path) -> dict[str, Any]:
    """Per split: count and mean image score of each map."""
    m = read_manifest(folder, "maps")
    return {split: score_means(Path(folder) / f"{split}.h5") for split in m.get("splits", [])}


def summarize_eval(folder: Path) -> dict[str, Any]:
    read_manifest(folder, "eval")
    m = json.loads((Path(folder) / "metrics.json").read_text())
    return {k: {"auc": round(100 * v["auc"], 2), "ap": round(100 * v["ap"], 2),
                **{key: [round(100 * x, 2) for x in v[key]] for key in ("auc_ci", "ap_ci") if v.get(key)}}
            for k, v in m["scores"].items()}


def summarize_predictions(folder: Path) -> dict[str, Any]:
    s = read_manifest(folder, "predictions")["summary"]
    return {"predicted": s["predicted"], "rejected": len(s["rejects"]), "decision_score": s["decision_score"],
            "threshold": s["threshold"], "threshold_source": s.get("threshold_source", "")}


def summarize_compare(folder: Path) -> dict[str, Any]:
    """Per row of a comparison: AUC [CI] and AP in percent and the paired p-value against the best."""
    read_manifest(folder, "compare")
    result = json.loads((Path(folder) / "compare.json").read_text())
    return {f"{r['run']} {r['score']}": {"auc": round(100 * r["auc"], 2),
                                         "auc_ci": [round(100 * v, 2) for v in r["auc_ci"]],
                                         "ap": round(100 * r["ap"], 2), "p_vs_best": r["p_vs_best"]}
            for r in result["rows"]}
