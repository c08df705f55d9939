"""Metrics: scikit-learn AUC/AP, F1-max, label-free threshold, χ² distance."""

import numpy as np
import pytest

from cxrad.metrics import at_threshold, chi2_distance, f1_max, normal_threshold, score_metrics


def test_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    m = score_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), normal_scores=np.array([0.1, 0.2, 0.3]))
    assert m["auc"] == 1.0 and m["ap"] == 1.0 and m["f1_max"] == 1.0
    assert score_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), np.array([0.5]))["auc"] == 0.0


def test_threshold_from_normals():
    normals = np.arange(101, dtype=float)
    assert normal_threshold(normals, 95) == pytest.approx(95.0)
    r = at_threshold(np.array([0, 0, 1, 1]), np.array([0.0, 2.0, 1.0, 3.0]), threshold=1.5)
    # preds: 0 1 0 1 -> tp 1, tn 1, fp 1, fn 1
    assert r == pytest.approx({"acc": 0.5, "f1": 0.5, "sensitivity": 0.5, "specificity": 0.5})


def test_ties_at_the_threshold_count_as_normal():
    """Duplicated normal studies share the percentile's value; "≥" flagged all of them (spec 0)."""
    normals = np.full(40, 0.25)
    thr = normal_threshold(normals, 95)
    assert thr == 0.25
    r = at_threshold(np.r_[np.zeros(40), np.ones(2)], np.r_[normals, [0.25, 0.3]], thr)
    # preds: 40 normals -> normal, abnormal 0.25 -> normal (fn), 0.3 -> abnormal (tp)
    assert r["specificity"] == 1.0 and r["sensitivity"] == 0.5


def test_f1_max_hand():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    # best: threshold 0.35 -> predicted {0.35,0.4,0.8,0.9}: tp 3 fp 1 -> P .75 R 1 -> F1 6/7
    f1, thr = f1_max(y, s)
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.35)


def test_chi2():
    a = np.random.default_rng(0).normal(size=500)
    assert chi2_distance(a, a) == 0.0
    assert chi2_distance(np.zeros(10), np.ones(10), bins=10) == pytest.approx(1.0)
    assert 0 < chi2_distance(a, a + 1) < 1
