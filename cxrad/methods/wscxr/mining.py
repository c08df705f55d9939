"""Anomaly feature mining (WSCXR paper, Sec. II-B, Eqs. 3-4).

An image labelled abnormal is mostly normal lung, ribs and background; only its lesion patches
carry what the discriminator should learn. Mining keeps the abnormal images' patch features that
lie farthest from the normal patch set: S(m) = Euclidean distance of m to its nearest normal patch
feature (k = 1, the paper's Eq. 3; k > 1 averages the k nearest, the official code's scorer), and
the floor(r * |M_a|) patches with the largest S form M'_a (r = 0.2 in the paper and the code).
The selection is over the patches of all K images together, not per image, as in the code.
Distances come from PatchCore's exact chunked search (cxrad/methods/patchcore/knn.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cxrad.methods.patchcore.knn import knn_distance


class Mined(NamedTuple):
    """``features`` (M', D): the kept abnormal patch features, farthest first; ``index`` (M',) their
    rows in the input; ``distance`` (M,): S(m) of every input row."""

    features: torch.Tensor
    index: torch.Tensor
    distance: torch.Tensor


def kept_count(total: int, fraction: float) -> int:
    """|M'_a| = floor(r * |M_a|), at least one patch when there is any."""
    if total == 0:
        return 0
    return max(1, int(fraction * total))


def mining_distance(abnormal: torch.Tensor, normal: torch.Tensor, *, k: int = 1) -> torch.Tensor:
    """S(m) for each row of ``abnormal`` (M, D): mean distance to its ``k`` nearest rows of
    ``normal`` (N, D) -> (M,)."""
    if abnormal.ndim != 2 or normal.ndim != 2 or abnormal.shape[1] != normal.shape[1]:
        raise ValueError(f"mining needs (M, D) and (N, D) features; got {tuple(abnormal.shape)} and "
                         f"{tuple(normal.shape)}")
    return knn_distance(abnormal, normal, k=k)


def select_farthest(distance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Rows of the ``fraction`` largest of ``distance`` (M,), largest first (ties: torch.topk's
    order) -> (floor(fraction * M),) int64."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} must lie in (0, 1]")
    return torch.topk(distance, kept_count(len(distance), fraction), largest=True, sorted=True).indices


def mine_anomaly_features(abnormal: torch.Tensor, normal: torch.Tensor, *, fraction: float = 0.2,
                          k: int = 1) -> Mined:
    """Keep the ``fraction`` of ``abnormal`` (M, D) patch features farthest from ``normal`` (N, D)."""
    distance = mining_distance(abnormal, normal, k=k)
    index = select_farthest(distance, fraction)
    return Mined(abnormal[index], index, distance)
