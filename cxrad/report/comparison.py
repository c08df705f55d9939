"""The `cxrad compare` report: compare.md (one table of every score of every run) and roc.png (every
ROC curve in one figure). Reads only the rows `cxrad/stages/compare.py` computed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrad.metrics import curves
from cxrad.report.plots import _save, plt

HEADER = ("run", "method", "score", "trained on", "AUC [{ci}]", "AP [{ci}]", "p vs best", "ACC", "F1", "Sens",
          "Spec", "threshold (source)")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _with_ci(value: float, ci: Sequence[float] | None) -> str:
    return _pct(value) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def _p(row: dict[str, Any]) -> str:
    if row["best"]:
        return "best"
    return "<0.001" if row["p_vs_best"] < 0.001 else f"{row['p_vs_best']:.3f}"


def _threshold(row: dict[str, Any]) -> str:
    where = {"val": "held-out normals", "normal": "Dn"}.get(row["threshold_split"], row["threshold_split"] or "?")
    return f"{row['threshold']:.4g} ({where})"


def compare_markdown(result: dict[str, Any]) -> str:
    """compare.md: the table, what the intervals and p-values mean, each run's threshold source and,
    for configurations repeated over seeds, mean ± sd."""
    level = f"{100 * result['intervals']['level']:g} % CI"
    lines = [f"# cxrad compare — split `{result['split']}`: {result['n_normal']} normal, "
             f"{result['n_abnormal']} abnormal images", "",
             "| " + " | ".join(h.format(ci=level) for h in HEADER) + " |",
             "|" + "---|" * 4 + "---:|" * (len(HEADER) - 4)]
    for r in result["rows"]:
        score = f"**{r['score']}**" if r["decision_score"] else r["score"]
        lines.append(f"| {r['run']} | {r['method']} | {score} | {r['saw']} | {_with_ci(r['auc'], r['auc_ci'])} | "
                     f"{_with_ci(r['ap'], r['ap_ci'])} | {_p(r)} | {_pct(r['acc'])} | {_pct(r['f1'])} | "
                     f"{_pct(r['sensitivity'])} | {_pct(r['specificity'])} | {_threshold(r)} |")
    iv = result["intervals"]
    best = result["best"]
    lines += ["",
              f"All {len(result['runs'])} run(s) were evaluated on the same "
              f"{result['n_normal'] + result['n_abnormal']} images (id digest {result['test_ids_sha256'][:12]}). "
              "Percentages. **Bold**: the run's decision score (the one `cxrad predict` thresholds).",
              f"- AUC: {iv['auc']}. AP: {iv['ap']}.",
              f"- p vs best: {iv['paired_test']} (best: {best['run']} {best['score']}). A small p says the two "
              "AUCs differ by more than the test set's sampling noise explains; it says nothing about other "
              "test sets, and with many scores some small p-values arise by chance.",
              "- ACC/F1/Sens/Spec: at each run's threshold, which no test label chose:"]
    lines += [f"  - {r['run']}: {r['threshold_source']}" for r in result["runs"]]
    lines += ["- Trained on: Dn = labelled normal images, Du = unlabelled images (normal and abnormal), "
              "labelled abnormal = the K labelled anomalies a weakly supervised method saw."]
    if result["groups"]:
        lines += ["", "Configurations run more than once (the same method, data and settings but for the seeds; "
                  "mean ± sd over the runs, the spread training randomness adds to the intervals above):", "",
                  "| method | score | trained on | runs | AUC | AP |", "|---|---|---|---:|---:|---:|"]
        for g in result["groups"]:
            lines.append(f"| {g['method']} | {g['score']} | {g['saw']} | {len(g['runs'])} | "
                         f"{_pct(g['auc_mean'])} ± {_pct(g['auc_sd'])} | {_pct(g['ap_mean'])} ± {_pct(g['ap_sd'])} |")
    return "\n".join(lines) + "\n"


def roc_all(labels: np.ndarray, scores: list[np.ndarray], rows: list[dict[str, Any]], path: Path,
            level: float = 0.95) -> None:
    """Every ROC curve in one figure: ``scores[i]`` (N,) belongs to ``rows[i]``; decision scores solid,
    the others dashed; colours cycle over 20."""
    many = len(rows) > 12
    # many curves: the legend goes beside the axes, where it cannot hide them
    fig, ax = plt.subplots(figsize=(13, 7) if many else (7, 7))
    colours = plt.get_cmap("tab20").colors
    for i, (s, row) in enumerate(zip(scores, rows)):
        c = curves(labels, s)
        ax.plot(c["fpr"], c["tpr"], color=colours[i % len(colours)], lw=1.6 if row["decision_score"] else 1.0,
                ls="-" if row["decision_score"] else "--",
                label=f"{row['run']} {row['score']} ({_with_ci(row['auc'], row['auc_ci'])})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUC [{100 * level:g} % CI])",
           xlim=(0, 1), ylim=(0, 1.01))
    if many:
        ax.set_aspect("equal")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=6, ncol=1 if len(rows) <= 45 else 2)
    else:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
