"""Anomaly feature mining (WSCXR paper, Sec. II-B, Eqs. 3-4).

An image labelled abnormal is mostly normal lung, ribs and background; only its lesion patches
carry what the discriminator should learn. Mining keeps the abnormal images' patch features that
lie farthest from the normal patch set: S(m) = distance of m to its nearest normal patch features
(k = 1 is the paper's Eq. 3; k > 1 averages the k nearest, the official code's scorer), and the
floor(r * |M_a|) patches with the largest S form M'_a (r = 0.2 in the paper and the code).
The selection is over the patches of all K images together, not per image, as in the code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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


def mine_anomaly_features(abnormal: torch.Tensor, normal: torch.Tensor, *, fraction: float = 0.2,
                          k: int = 1, chunk: int = 4096) -> Mined:
    """Keep the ``fraction`` of ``abnormal`` (M, D) patch features farthest from ``normal`` (N, D).

    Distances are Euclidean; the score of a row is the mean of its ``k`` smallest distances to
    ``normal`` (k = 1: the nearest neighbour). Ties are broken by row order (torch.topk on CPU).
    """
    if abnormal.ndim != 2 or normal.ndim != 2 or abnormal.shape[1] != normal.shape[1]:
        raise ValueError(f"mining needs (M, D) and (N, D) features; got {tuple(abnormal.shape)} and "
                         f"{tuple(normal.shape)}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} must lie in (0, 1]")
    if not 1 <= k <= len(normal):
        raise ValueError(f"k = {k} needs 1 <= k <= {len(normal)} normal features")
    distance = knn_distance(abnormal, normal, k=k, chunk=chunk)
    keep = kept_count(len(abnormal), fraction)
    index = torch.topk(distance, keep, largest=True, sorted=True).indices
    return Mined(abnormal[index], index, distance)


def knn_distance(query: torch.Tensor, bank: torch.Tensor, *, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    """Mean Euclidean distance of each ``query`` row (M, D) to its ``k`` nearest ``bank`` rows (N, D)
    -> (M,). Computed ``chunk`` query rows at a time, so memory is chunk x N, not M x N."""
    out = torch.empty(len(query), dtype=query.dtype, device=query.device)
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk]
        # cdist's matmul path loses precision for nearby points; the direct path does not, and
        # mining ranks by these values
        d = torch.cdist(q, bank, compute_mode="donot_use_mm_for_euclid_dist")
        out[start:start + chunk] = torch.topk(d, k, dim=1, largest=False).values.mean(dim=1)
    return out
