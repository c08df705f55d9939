"""Dn / Du / Dt selection (cxrad.splits): exact counts, rates, patients, infeasible requests."""

from __future__ import annotations

import numpy as np
import pytest

from cxrad.errors import CxradError
from cxrad.splits import SplitRequest, n_abnormal, select

KERMANY_TRAIN = np.array([0] * 1341 + [1] * 3875)


def test_zhanglab_counts_and_seed_reproducibility():
    req = SplitRequest(normal_count=1000, unlabeled_count=853, anomaly_rate=0.6, seed=0)
    a = select(KERMANY_TRAIN, req)
    b = select(KERMANY_TRAIN, req)
    c = select(KERMANY_TRAIN, SplitRequest(1000, 853, 0.6, seed=1))
    assert len(a["normal"]) == 1000 and (KERMANY_TRAIN[a["normal"]] == 0).all()
    du = KERMANY_TRAIN[a["unlabeled"]]
    assert len(du) == 853 and (du == 1).sum() == 512 and (du == 0).sum() == 341
    assert not set(a["normal"]) & set(a["unlabeled"])
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["normal"] == c["normal"]).all()


def test_infeasible_request_names_largest_feasible_counts():
    with pytest.raises(CxradError) as err:
        select(KERMANY_TRAIN, SplitRequest(1000, 900, 0.6))
    msg = str(err.value)
    # 1341 - 1000 = 341 normals left; u - round(0.6 u) <= 341 -> u <= 853
    assert "largest feasible" in msg and "--unlabeled-count 853" in msg and "--normal-count 981" in msg
    with pytest.raises(CxradError, match="largest feasible: --normal-count 1341"):
        select(KERMANY_TRAIN, SplitRequest(normal_count=2000))


def test_rounding_is_half_up():
    assert n_abnormal(853, 0.6) == 512 and n_abnormal(5, 0.5) == 3


def test_patients_stay_together_and_hold_out_when_no_test():
    rng = np.random.default_rng(0)
    pids = [f"p{i // 2}" for i in range(400)]  # two images per patient
    labels = np.repeat(rng.integers(0, 2, 200), 2)
    out = select(labels, SplitRequest(normal_count=40, unlabeled_count=40, anomaly_rate=0.5, seed=3), pids,
                 need_test=True)
    assert len(out["normal"]) == 40 and len(out["unlabeled"]) == 40 and len(out["test"]) >= 80
    owner = {}
    for name, idx in out.items():
        for i in idx:
            assert owner.setdefault(pids[i], name) == name  # never one patient in two sets


def test_patients_indivisible_gap_is_an_error():
    pids = ["a", "a", "a", "b", "b", "b"]
    with pytest.raises(CxradError, match="patients cannot be split"):
        select(np.zeros(6, int), SplitRequest(normal_count=4, unlabeled_count=0), pids)


def test_defaults_semi_supervised_pool_and_fully_labelled_pool():
    labels = np.array([0, 0, 0, -1, -1])
    out = select(labels, SplitRequest())
    assert out["normal"].tolist() == [0, 1, 2] and out["unlabeled"].tolist() == [3, 4]
    with pytest.raises(CxradError, match="say how to split it"):
        select(KERMANY_TRAIN, SplitRequest())


def test_val_normals_are_held_out_before_dn_and_du():
    """--val-normals: exactly N normal images, in no other set; Dn/Du counts unchanged; seeded."""
    req = SplitRequest(normal_count=1000, unlabeled_count=500, anomaly_rate=0.6, seed=0, val_normals=100)
    a, b = select(KERMANY_TRAIN, req), select(KERMANY_TRAIN, req)
    assert len(a["val"]) == 100 and (KERMANY_TRAIN[a["val"]] == 0).all()
    assert len(a["normal"]) == 1000 and len(a["unlabeled"]) == 500 and (KERMANY_TRAIN[a["unlabeled"]] == 1).sum() == 300
    assert not set(a["val"]) & (set(a["normal"]) | set(a["unlabeled"]))
    assert all((a[k] == b[k]).all() for k in a)
    # Dn defaulted: every normal Du does not need, minus the held-out ones
    dflt = select(KERMANY_TRAIN, SplitRequest(unlabeled_count=500, anomaly_rate=0.6, val_normals=100))
    assert len(dflt["normal"]) == 1341 - 200 - 100
    assert "val" not in select(KERMANY_TRAIN, SplitRequest(1000, 500, 0.6))


def test_val_normals_keep_patients_whole_and_come_after_the_test_hold_out():
    pids = [f"p{i // 2}" for i in range(400)]
    labels = np.repeat(np.random.default_rng(0).integers(0, 2, 200), 2)
    out = select(labels, SplitRequest(normal_count=30, unlabeled_count=40, anomaly_rate=0.5, seed=3, val_normals=20),
                 pids, need_test=True)
    assert len(out["val"]) == 20 and (labels[out["val"]] == 0).all()
    owner = {}
    for name, idx in out.items():
        for i in idx:
            assert owner.setdefault(pids[i], name) == name


def test_too_many_val_normals_is_an_error_naming_what_is_left():
    with pytest.raises(CxradError, match=r"--val-normals 2000 .* the 1341 left after the test hold-out"):
        select(KERMANY_TRAIN, SplitRequest(1000, 500, 0.6, val_normals=2000))
    with pytest.raises(CxradError, match="--val-normals"):
        select(KERMANY_TRAIN, SplitRequest(1000, 500, 0.6, val_normals=-1))


@pytest.mark.parametrize("req", [SplitRequest(normal_count=-1), SplitRequest(anomaly_rate=1.5)])
def test_invalid_values(req):
    with pytest.raises(CxradError):
        select(KERMANY_TRAIN, req)


def test_auto_val_count_is_ten_percent_of_dn_between_200_and_2000_images():
    from cxrad.splits import auto_val_count

    assert [auto_val_count(n) for n in (0, 30, 199, 200, 205, 800, 1000, 2000, 60000)] == \
        [0, 0, 0, 20, 21, 80, 100, 200, 200]


def test_carve_val_takes_whole_patients_seeded_and_never_more_than_asked():
    from cxrad.splits import carve_val

    pids = [f"p{i // 3}" for i in range(30)]          # ten patients of three images
    val, kept = carve_val(30, 10, pids, seed=4)
    assert len(val) == 9 and len(kept) == 21          # three whole patients; a fourth would overshoot
    assert sorted(np.concatenate([val, kept]).tolist()) == list(range(30))
    assert not {pids[i] for i in val} & {pids[i] for i in kept}
    again, _ = carve_val(30, 10, pids, seed=4)
    other, _ = carve_val(30, 10, pids, seed=5)
    assert again.tolist() == val.tolist() and other.tolist() != val.tolist()
    plain, rest = carve_val(30, 10, None, seed=4)     # no patient ids: exactly the count
    assert len(plain) == 10 and len(rest) == 20
