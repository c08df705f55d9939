"""benchmarks/score_fusion.py: the fusion scale comes from normal training images only."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from score_fusion import fuse, normal_standardised  # noqa: E402


def test_scores_are_standardised_by_the_normals_alone():
    normal = np.array([1.0, 3.0])                      # mean 2, population sd 1
    np.testing.assert_allclose(normal_standardised(np.array([2.0, 4.0, 0.5]), normal), [0.0, 2.0, -1.5])


def test_fusion_is_the_mean_z_so_a_scale_change_of_one_input_does_not_matter():
    a, a_norm = np.array([0.1, 0.5, 0.9]), np.array([0.1, 0.3])      # z: -1, 3, 7
    b, b_norm = np.array([10.0, 5.0, 30.0]), np.array([0.0, 20.0])   # z: 0, -0.5, 2
    np.testing.assert_allclose(fuse([a, b], [a_norm, b_norm]), [-0.5, 1.25, 4.5])
    np.testing.assert_allclose(fuse([a, 1000 * b], [a_norm, 1000 * b_norm]), [-0.5, 1.25, 4.5])


def test_normals_without_spread_are_refused():
    with pytest.raises(ValueError, match="no spread"):
        normal_standardised(np.array([1.0]), np.array([2.0, 2.0]))
