"""Uncertainty of image-level metrics: DeLong's AUC (co)variance, AUC and AP confidence intervals,
and the paired DeLong test between two scores of the same images (docs/compare.md).

Abnormal = positive class (label 1), as in :mod:`cxrad.metrics`.

* **DeLong** (DeLong, DeLong & Clarke-Pearson 1988) estimates the variance of the empirical AUC
  (the Mann-Whitney statistic) and the covariance of the AUCs of several scores on the same images
  from their structural components; computed with midranks in O(n log n) (Sun & Xu 2014) instead
  of the O(m·n) pair kernel. Ties count one half, as in the AUC itself.
* **AUC interval**: DeLong's standard error on the logit scale, back-transformed. The logit keeps the
  interval inside [0, 1] and asymmetric near 1, where the plain AUC ± z·SE overshoots 1 for the
  AUCs anomaly detectors reach.
* **AP interval**: no closed form exists; percentile interval of a stratified bootstrap (positives
  and negatives resampled separately, so every resample keeps the test set's class counts and AP
  its meaning), seeded, vectorised over resamples.
* **Paired test**: two-sided p of z = (AUC_a − AUC_b) / sqrt(Var_a + Var_b − 2 Cov_ab): the scores
  are computed on the same images, so their AUCs are correlated and an unpaired comparison of two
  intervals would be far too conservative.

Why not a library: scikit-learn and SciPy have no DeLong; the PyPI packages that do (pauc,
confidenceinterval, MLstatkit, rocauc-comparison) are small single-maintainer releases that would
add dependencies for about thirty lines that the tests check against a hand-computed example, the
O(m·n) definition and a bootstrap.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from cxrad.errors import CxradError


def _split_by_class(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives (k, m), negatives (k, n)) of ``scores`` (k, N) or (N,) by ``labels`` (N,) in {0, 1}."""
    labels = np.asarray(labels)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.shape[0]:
        raise CxradError(f"{scores.shape[1]} scores for {labels.shape[0]} labels.")
    if not np.isin(labels, (0, 1)).all():
        raise CxradError("labels must be 0 (normal) or 1 (abnormal) for AUC intervals.")
    return scores[:, labels == 1], scores[:, labels == 0]


def auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (k, N) against the same ``labels`` (N,): (k,) (ties count 1/2)."""
    pos, neg = _split_by_class(labels, scores)
    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k) for ``scores`` (k, N) or (N,) on the same
    images with ``labels`` (N,). Needs at least 2 images of each class.

    Structural components, from midranks (Sun & Xu 2014): for positive i, V10_i = the share of
    negatives it outscores (ties 1/2) = (rank of i among all − rank of i among positives) / n; for
    negative j, V01_j = the share of positives that outscore it = 1 − (rank among all − rank among
    negatives) / m. Cov = S10 / m + S01 / n, S the sample covariances (ddof 1) of the components.
    """
    pos, neg = _split_by_class(labels, scores)
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise CxradError(f"DeLong's variance needs at least 2 normal and 2 abnormal images (have {n} and {m}).")
    tx = rankdata(pos, method="average", axis=1)
    ty = rankdata(neg, method="average", axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise CxradError(f"confidence level {level}: must lie in (0, 1).")
    return float(norm.ppf(0.5 + level / 2.0))


def auc_interval(auc: float, variance: float, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of an AUC from its DeLong variance, on the logit scale.

    At AUC 0 or 1 (or zero variance) the interval is the point itself: every pair is ordered the
    same way, and DeLong's variance is 0 there too.
    """
    z = _z(level)
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0 or auc <= 0.0 or auc >= 1.0:
        return float(auc), float(auc)
    half = z * se / (auc * (1.0 - auc))   # delta method: d logit(a) / da = 1 / (a (1 - a))
    centre = float(logit(auc))
    return float(expit(centre - half)), float(expit(centre + half))


def paired_delong_p(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of DeLong's test that scores ``a`` and ``b`` (N,) of the same images have the
    same AUC. 1.0 when they order every normal/abnormal pair the same way (identical scores, or one a
    monotone transform of the other)."""
    aucs, cov = delong(labels, np.stack([np.asarray(a, np.float64), np.asarray(b, np.float64)]))
    return _paired_p(aucs[0] - aucs[1], cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1], cov[0, 0] + cov[1, 1])


def _paired_p(diff: float, var: float, scale: float) -> float:
    # the variance of the difference is a difference of nearly equal terms when the scores are
    # nearly identical: below rounding level it is zero
    if var <= 1e-12 * max(scale, 1e-300):
        return 1.0 if abs(diff) <= 1e-12 else 0.0
    return float(2.0 * norm.sf(abs(diff) / np.sqrt(var)))


def paired_delong_p_all(labels: np.ndarray, scores: Sequence[np.ndarray], reference: int) -> list[float]:
    """The paired DeLong p-value of every score against ``scores[reference]`` (itself: 1.0), from one
    joint covariance matrix."""
    aucs, cov = delong(labels, np.stack([np.asarray(s, np.float64) for s in scores]))
    r = reference
    return [1.0 if i == r else _paired_p(aucs[i] - aucs[r], cov[i, i] + cov[r, r] - 2.0 * cov[i, r],
                                         cov[i, i] + cov[r, r])
            for i in range(len(aucs))]


# ---------------------------------------------------------------------------------------------
# average precision: stratified bootstrap
# ---------------------------------------------------------------------------------------------
def ap_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision of each row: ``pos`` (B, m) scores of abnormal images, ``neg`` (B, n) of
    normal ones -> (B,). The same step-wise definition as scikit-learn's ``average_precision_score``:
    Σ over distinct thresholds (decreasing) of (recall gain) × precision, tied scores one threshold."""
    pos, neg = np.atleast_2d(pos), np.atleast_2d(neg)
    m = pos.shape[1]
    s = np.concatenate([pos, neg], axis=1)
    y = np.concatenate([np.ones(m), np.zeros(neg.shape[1])])
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    tp = np.cumsum(y[order], axis=1)
    precision = tp / np.arange(1, s.shape[1] + 1)
    # the last image of each group of tied scores closes a threshold
    closes = np.ones_like(s_sorted, dtype=bool)
    closes[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    tp_closed = np.where(closes, tp, 0.0)
    before = np.zeros_like(tp)
    before[:, 1:] = np.maximum.accumulate(tp_closed, axis=1)[:, :-1]   # tp at the previous threshold
    return np.where(closes, (tp - before) * precision, 0.0).sum(axis=1) / m


def stratified_resamples(labels: np.ndarray, n_resamples: int, seed: int, block: int
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of (positive indices (b, m), negative indices (b, n)) into the positives and negatives
    of ``labels``, drawn with replacement within each class; ``n_resamples`` rows in all."""
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(block, n_resamples - done)
        yield pos[rng.integers(0, len(pos), (b, len(pos)))], neg[rng.integers(0, len(neg), (b, len(neg)))]
        done += b


def ap_interval(labels: np.ndarray, scores: np.ndarray, level: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the AP of ``scores`` (N,) over a stratified bootstrap of the images."""
    _z(level)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if n_resamples < 1:
        raise CxradError(f"bootstrap resamples {n_resamples}: need at least 1.")
    block = max(1, 4_000_000 // max(len(scores), 1))   # bounds memory to a few tens of MB
    values = np.concatenate([ap_rows(scores[p], scores[n])
                             for p, n in stratified_resamples(labels, n_resamples, seed, block)])
    lo, hi = np.quantile(values, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(lo), float(hi)


def score_intervals(labels: np.ndarray, scores: np.ndarray, level: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> dict[str, object]:
    """What `evaluate` and `compare` report per score: the DeLong SE and interval of the AUC and the
    bootstrap interval of the AP (None each when a class has fewer than 2 images)."""
    labels = np.asarray(labels)
    if min(int((labels == 0).sum()), int((labels == 1).sum())) < 2:
        return {"auc_se": None, "auc_ci": None, "ap_ci": None}
    aucs, cov = delong(labels, scores)
    auc, var = float(aucs[0]), float(cov[0, 0])
    return {"auc_se": float(np.sqrt(max(var, 0.0))), "auc_ci": list(auc_interval(auc, var, level)),
            "ap_ci": list(ap_interval(labels, scores, level, n_resamples, seed))}


def describe_intervals(level: float, n_resamples: int, seed: int) -> dict[str, object]:
    """How the intervals were computed, for metrics.json / compare.json."""
    return {"level": level,
            "auc": "DeLong variance (midranks, Sun & Xu 2014), interval on the logit scale",
            "ap": f"stratified bootstrap percentile interval, {n_resamples} resamples, seed {seed}"}

