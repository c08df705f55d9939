"""DeLong (co)variance, AUC/AP intervals and the paired DeLong test (cxrad/metrics_ci.py): against a
hand-computed example, the O(m·n) definition, scikit-learn, a bootstrap, and coverage on simulated data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrad.errors import CxradError
from cxrad.metrics_ci import (
    ap_interval,
    ap_rows,
    auc_interval,
    auc_rows,
    delong,
    paired_delong_p,
    paired_delong_p_all,
    score_intervals,
    stratified_resamples,
)

# abnormal (label 1) first: X = positives, Y = negatives
LABELS = np.array([1, 1, 1, 0, 0])
A = np.array([0.9, 0.6, 0.4, 0.6, 0.3])    # one tie between a positive and a negative (0.6)
B = np.array([0.2, 0.8, 0.7, 0.1, 0.75])


def test_delong_hand_computed_example():
    """By hand, with psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise:
    score A: V10 (per positive, mean over negatives) = [1, 3/4, 1/2], V01 (per negative, mean over
    positives) = [1/2, 1]; AUC = 3/4; S10 = var([1, .75, .5]) = 1/16, S01 = var([.5, 1]) = 1/8;
    Var = S10/3 + S01/2 = 1/48 + 1/16 = 1/12.
    score B: V10 = [1/2, 1, 1/2], V01 = [1, 1/3]; AUC = 2/3; Var = (1/6)/3 + (2/9)/2 = 5/36.
    Cov(A, B) = cov10/3 + cov01/2 = 0/3 + (-1/6)/2 = -1/12.
    Paired: z = (3/4 - 2/3) / sqrt(1/12 + 5/36 + 2/12) = (1/12) / sqrt(7/18)."""
    aucs, cov = delong(LABELS, np.stack([A, B]))
    np.testing.assert_allclose(aucs, [3 / 4, 2 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cov, [[1 / 12, -1 / 12], [-1 / 12, 5 / 36]], rtol=0, atol=1e-15)
    z = (1 / 12) / np.sqrt(7 / 18)
    assert paired_delong_p(LABELS, A, B) == pytest.approx(2 * norm.sf(z), abs=1e-12)
    assert paired_delong_p(LABELS, A, B) == pytest.approx(0.8937, abs=1e-4)


def _delong_by_definition(labels, scores):
    """The O(m·n) pair kernel of DeLong et al. 1988, for comparison."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])   # (k, m, n)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


def test_fast_delong_equals_the_pair_definition_with_ties():
    rng = np.random.default_rng(1)
    labels = (rng.random(157) < 0.4).astype(int)
    scores = np.round(rng.normal(size=(3, 157)) + labels * np.array([[0.3], [1.0], [2.0]]), 1)  # many ties
    aucs, cov = delong(labels, scores)
    want_aucs, want_cov = _delong_by_definition(labels, scores)
    np.testing.assert_allclose(aucs, want_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, want_cov, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(labels, s) for s in scores], atol=1e-12)
    np.testing.assert_allclose(auc_rows(labels, scores), aucs, atol=1e-12)


def test_delong_variance_agrees_with_a_stratified_bootstrap():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(150, int), np.zeros(250, int)]
    scores = rng.normal(size=400) + 1.2 * labels
    _, cov = delong(labels, scores)
    boot = np.concatenate([auc_rows(labels, np.concatenate([scores[p], scores[n]], axis=1))
                           for p, n in stratified_resamples(labels, 2000, seed=0, block=500)])
    # bootstrap variance has a relative standard error of about sqrt(2/2000) = 3 %
    assert np.var(boot, ddof=1) == pytest.approx(cov[0, 0], rel=0.12)


def test_paired_test_sanity():
    rng = np.random.default_rng(3)
    labels = (rng.random(200) < 0.5).astype(int)
    s = rng.normal(size=200) + labels
    assert paired_delong_p(labels, s, s) == 1.0
    assert paired_delong_p(labels, s, np.exp(3 * s)) == 1.0          # same ordering, same AUC
    weak = rng.normal(size=200) + 0.1 * labels
    p = paired_delong_p(labels, s, weak)
    assert p < 1e-4 and p == pytest.approx(paired_delong_p(labels, weak, s), abs=1e-15)
    assert paired_delong_p_all(labels, [s, weak, s], reference=0) == [1.0, p, 1.0]


def test_auc_interval_logit():
    lo, hi = auc_interval(0.95, 0.02 ** 2)
    assert 0.0 < lo < 0.95 < hi < 1.0 and (hi - 0.95) < (0.95 - lo)   # asymmetric near 1, inside [0, 1]
    assert auc_interval(1.0, 0.0) == (1.0, 1.0) and auc_interval(0.7, 0.0) == (0.7, 0.7)
    with pytest.raises(CxradError, match="confidence level"):
        auc_interval(0.8, 0.01, level=1.5)
    with pytest.raises(CxradError, match="at least 2 normal and 2 abnormal"):
        delong(np.array([1, 0, 0]), np.array([0.3, 0.2, 0.1]))


def test_vectorised_ap_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(30):
        labels = (rng.random(60) < rng.uniform(0.2, 0.8)).astype(int)
        labels[:2] = [0, 1]
        s = np.round(rng.normal(size=60) + labels, int(rng.integers(0, 2)))
        assert ap_rows(s[labels == 1], s[labels == 0])[0] == pytest.approx(average_precision_score(labels, s),
                                                                          abs=1e-12)


def test_ap_interval_is_seeded_and_covers_the_point_estimate():
    rng = np.random.default_rng(5)
    labels = (rng.random(300) < 0.6).astype(int)
    s = rng.normal(size=300) + labels
    lo, hi = ap_interval(labels, s, n_resamples=2000, seed=0)
    assert lo < average_precision_score(labels, s) < hi
    assert (lo, hi) == ap_interval(labels, s, n_resamples=2000, seed=0)
    assert (lo, hi) != ap_interval(labels, s, n_resamples=2000, seed=1)
    # blocks of resamples give the same draws as one block
    assert score_intervals(labels, s)["ap_ci"] == [lo, hi]


def test_interval_coverage_on_simulated_binormal_data():
    """95 % intervals on 200 simulated test sets (60 abnormal ~ N(1.5, 1), 40 normal ~ N(0, 1)):
    the AUC interval covers the true AUC Φ(1.5/√2) about 95 % of the time, the AP interval the
    population AP (from one very large sample) at least 85 % (bootstrap percentile intervals of
    a biased small-sample statistic cover less than nominal)."""
    rng = np.random.default_rng(6)
    true_auc = norm.cdf(1.5 / np.sqrt(2))
    big = np.r_[rng.normal(1.5, 1, 600_000), rng.normal(0, 1, 400_000)]
    true_ap = average_precision_score(np.r_[np.ones(600_000), np.zeros(400_000)], big)
    labels = np.r_[np.ones(60, int), np.zeros(40, int)]
    hit_auc = hit_ap = 0
    for i in range(200):
        s = np.r_[rng.normal(1.5, 1, 60), rng.normal(0, 1, 40)]
        out = score_intervals(labels, s, n_resamples=500, seed=i)
        hit_auc += out["auc_ci"][0] <= true_auc <= out["auc_ci"][1]
        hit_ap += out["ap_ci"][0] <= true_ap <= out["ap_ci"][1]
    assert 0.91 <= hit_auc / 200 <= 0.99
    assert hit_ap / 200 >= 0.85
