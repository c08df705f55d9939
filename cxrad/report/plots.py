"""Figures of the evaluation report (docs/method.md, "Evaluation") and the FPI preview. matplotlib, Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrad.artifacts import atomic_path  # noqa: E402
from cxrad.metrics import auc, average_precision, chi2_distance, curves  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _with_interval(value: float, interval: Optional[Sequence[float]]) -> str:
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def roc_pr(labels: np.ndarray, scores: dict[str, np.ndarray], roc_path: Path, pr_path: Path,
           intervals: Optional[dict[str, dict]] = None) -> None:
    """Two figures: ROC and PR curves with every score in each; ``intervals``: score name -> its
    metrics with ``auc_ci`` / ``ap_ci`` (shown in the legend)."""
    fig_r, ax_r = plt.subplots(figsize=(5, 5))
    fig_p, ax_p = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        c = curves(labels, s)
        ci = (intervals or {}).get(name, {})
        ax_r.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {_with_interval(auc(labels, s), ci.get('auc_ci'))})")
        ax_p.plot(c["recall"], c["precision"],
                  label=f"{name} (AP {_with_interval(average_precision(labels, s), ci.get('ap_ci'))})")
    ax_r.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_r.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax_p.axhline(float(np.mean(labels)), color="k", ls=":", lw=0.8)
    ax_p.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    for ax in (ax_r, ax_p):
        ax.legend(loc="lower right" if ax is ax_r else "lower left", fontsize=8)
    _save(fig_r, roc_path)
    _save(fig_p, pr_path)


def histograms(labels: np.ndarray, scores: dict[str, np.ndarray], path: Path, bins: int = 50) -> None:
    """Normal vs abnormal score histograms, one panel per score, χ² distance in each title."""
    n = len(scores)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        lo, hi = float(np.min(s)), float(np.max(s))
        kw = dict(bins=bins, range=(lo, hi if hi > lo else lo + 1), alpha=0.55, density=True)
        ax.hist(s[labels == 0], color="tab:blue", label="normal", **kw)
        ax.hist(s[labels == 1], color="tab:red", label="abnormal", **kw)
        ax.set_title(f"{name}  χ²={chi2_distance(s[labels == 0], s[labels == 1], bins):.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def overlays(path: Path, images: np.ndarray, heatmaps: dict[str, np.ndarray], titles: Sequence[str],
             per_row: int = 8, vmax: Optional[dict[str, float]] = None) -> None:
    """Images (N, H, W) in [0, 1] in blocks of ``per_row`` columns; under each block's image row, one
    row per heat map (N, H, W) laid over the same images, one colour scale per map kind."""
    n, kinds = len(images), list(heatmaps)
    blocks = max(1, int(np.ceil(n / per_row)))
    rows = blocks * (1 + len(kinds))
    fig, axes = plt.subplots(rows, per_row, figsize=(1.5 * per_row, 1.55 * rows), squeeze=False)
    # probabilities keep their 0..1 scale; raw maps are shown up to their 99.5th percentile
    vmax = {k: (vmax or {}).get(k) or float(np.percentile(heatmaps[k], 99.5)) or 1.0 for k in kinds}
    for i in range(n):
        b, c = divmod(i, per_row)
        r0 = b * (1 + len(kinds))
        axes[r0][c].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[r0][c].set_title(titles[i], fontsize=5)
        for j, k in enumerate(kinds, start=1):
            ax = axes[r0 + j][c]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            ax.imshow(heatmaps[k][i], cmap="jet", alpha=0.45, vmin=0, vmax=vmax[k])
            if c == 0:
                ax.text(-2, images.shape[1] / 2, k, fontsize=7, rotation=90, ha="right", va="center")
    for ax in axes.flat:
        ax.axis("off")
    _save(fig, path)


def contact_sheet(path: Path, images: np.ndarray, masks: np.ndarray, alphas: Optional[np.ndarray] = None,
                  per_row: int = 8) -> None:
    """FPI preview: each synthetic image with its patch outline; α in the title."""
    n = len(images)
    rows = max(1, int(np.ceil(n / per_row)))
    fig, axes = plt.subplots(rows, per_row, figsize=(1.4 * per_row, 1.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=1)
        if masks[k].any():
            ax.contour(masks[k], levels=[0.5], colors="r", linewidths=0.6)
        if alphas is not None:
            ax.set_title(f"α={float(alphas[k]):.2f}", fontsize=6)
    _save(fig, path)
