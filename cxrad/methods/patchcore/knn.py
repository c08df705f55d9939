"""Exact k-nearest-neighbour distances of query features to a memory bank, in bounded memory."""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 24   # query rows × bank rows per distance block (64 MB in float32)


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, *, k: int = 1,
                 chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Mean Euclidean distance of each query to its ``k`` nearest bank rows.

    queries (M, D), bank (K, D) -> (M,) in the queries' dtype. Exact: the candidates are ranked by
    the matrix-product form ||q||² − 2 q·b + ||b||² (fast, but it loses precision for nearby
    points by cancellation), and the distances of the k chosen rows are then recomputed directly
    as ||q − b||. Queries are processed in blocks of ``chunk_elements // K`` rows, so no
    M × K matrix larger than ``chunk_elements`` entries is ever held.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"knn_distance needs (M, D) and (K, D); got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k = {k} needs 1 <= k <= {len(bank)} bank rows")
    bank = bank.to(queries.dtype)
    bank_sq = (bank * bank).sum(1)
    rows = max(1, chunk_elements // max(1, len(bank)))
    out = torch.empty(len(queries), dtype=queries.dtype, device=queries.device)
    for s in range(0, len(queries), rows):
        q = queries[s:s + rows]
        d2 = torch.addmm(bank_sq.unsqueeze(0), q, bank.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        idx = d2.topk(k, dim=1, largest=False).indices                  # (m, k)
        exact = (q.unsqueeze(1) - bank[idx]).norm(dim=2)                # (m, k, D) -> (m, k)
        out[s:s + len(q)] = exact.mean(1)
    return out
