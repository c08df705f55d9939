"""benchmarks/map_shift.py: group means are divided by the Dn mean, per map."""

from __future__ import annotations

import sys

import numpy as np
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from map_shift import group_means  # noqa: E402


def test_group_means_are_relative_to_dn_per_map():
    scores = {"Dn": {"A_inter": np.array([1.0, 3.0]), "A_intra": np.array([4.0])},
              "test normal": {"A_inter": np.array([3.0, 5.0]), "A_intra": np.array([2.0, 4.0])}}
    rel = group_means(scores)
    assert rel["Dn"] == {"A_inter": 1.0, "A_intra": 1.0}
    assert rel["test normal"] == {"A_inter": 2.0, "A_intra": 0.75}


def test_groups_of_a_real_run_cover_every_image(tiny_run):
    from map_shift import run_groups

    from cxrad.io.store import load_split

    groups = run_groups(tiny_run["run"], 0.5)
    prepared = tiny_run["prepared"]
    n_dn, n_du = len(load_split(prepared, "normal").images), len(load_split(prepared, "unlabeled").images)
    test = load_split(prepared, "test")
    sizes = {g: len(v["A_inter"]) for g, v in groups.items()}
    assert sizes["Dn"] == n_dn and sizes["Du donors"] + sizes["Du other"] == n_du
    assert sizes["Du donors"] == -(-n_du // 2)                       # the upper half, rounded up
    assert sizes["test normal"] == int((test.labels == 0).sum())
    assert sizes["test abnormal"] == int((test.labels == 1).sum())
    rel = group_means(groups)
    assert rel["Du donors"]["A_inter"] > rel["Du other"]["A_inter"]  # the donors are the high-map half
