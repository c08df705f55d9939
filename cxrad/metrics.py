"""Image-level evaluation metrics (docs/method.md, "Evaluation"). Abnormal = positive class (label 1)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn)."""
    return float(roc_auc_score(labels, scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(average_precision_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds of the PR curve -> (f1, threshold). An oracle: uses test labels."""
    prec, rec, thr = precision_recall_curve(labels, scores)
    f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
    i = int(np.argmax(f1[:-1])) if len(thr) else 0  # the last PR point has no threshold
    return float(f1[i]), float(thr[i]) if len(thr) else float("nan")


def normal_threshold(normal_scores: np.ndarray, percentile: float = 95.0) -> float:
    """Threshold fixed without test labels: a percentile of the normal training images' scores."""
    return float(np.percentile(np.asarray(normal_scores, dtype=np.float64), percentile))


def is_abnormal(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """The decision rule shared by `evaluate` and `predict`: abnormal when score > threshold.

    Strictly above, because the threshold is a percentile of normal scores: with ties (duplicate
    studies are common in real archives) "≥" would flag every normal that shares the percentile's
    value, so more than 5 % of the calibration normals.
    """
    return np.asarray(scores) > threshold


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ACC, F1, sensitivity, specificity when score > threshold means abnormal (:func:`is_abnormal`)."""
    labels = np.asarray(labels).astype(bool)
    pred = is_abnormal(scores, threshold)
    tp = float(np.sum(pred & labels))
    tn = float(np.sum(~pred & ~labels))
    fp = float(np.sum(pred & ~labels))
    fn = float(np.sum(~pred & labels))
    sens = tp / max(tp + fn, 1.0)
    prec = tp / max(tp + fp, 1.0)
    return {
        "acc": (tp + tn) / max(len(labels), 1),
        "f1": 2 * prec * sens / max(prec + sens, 1e-12),
        "sensitivity": sens,
        "specificity": tn / max(tn + fp, 1.0),
    }


def chi2_distance(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """χ² distance between the normalised histograms of two score samples on a shared range.

    ½ Σ (p − q)² / (p + q) over bins with p + q > 0; 0 = identical, 1 = disjoint.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if hi <= lo:
        return 0.0
    p, _ = np.histogram(a, bins=bins, range=(lo, hi))
    q, _ = np.histogram(b, bins=bins, range=(lo, hi))
    p, q = p / max(p.sum(), 1), q / max(q.sum(), 1)
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


def curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and PR (precision, recall) points for plotting."""
    fpr, tpr, _ = roc_curve(labels, scores)
    prec, rec, _ = precision_recall_curve(labels, scores)
    return {"fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec}


def score_metrics(labels: np.ndarray, scores: np.ndarray, normal_scores: np.ndarray,
                  percentile: float = 95.0) -> dict[str, float]:
    """All metrics of one score: AUC, AP, F1-max (oracle), and ACC/F1/sens/spec at the normal threshold."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    thr = normal_threshold(normal_scores, percentile)
    f1m, f1thr = f1_max(labels, scores)
    out = {"auc": auc(labels, scores), "ap": average_precision(labels, scores),
           "f1_max": f1m, "f1_max_threshold_oracle": f1thr, "threshold": thr,
           "threshold_percentile": percentile}
    out.update(at_threshold(labels, scores, thr))
    out["chi2"] = chi2_distance(scores[labels == 0], scores[labels == 1])
    return out
