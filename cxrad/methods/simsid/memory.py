"""SimSID's memories: the in-painting block's FIFO queue and the decoder's learned matrices.

Both read the same way (:func:`sparse_read`): dot-product similarity of a query with every item,
softmax, all but the strongest items shrunk to zero ("Gumbel shrinkage" in the paper; no Gumbel
noise in the code), re-normalised, and a straight-through gradient: the forward pass uses the
sparse weights, the backward pass the dense softmax. One memory region per patch position
("space-aware"); all regions are read in one batched matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def topk_shrink(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Sparse attention weights over the last dim of ``logits`` (..., M) -> (..., M).

    As the official ``gumbel_softmax``: the threshold is the k-th largest softmax weight and
    ``relu(y - t) * y / (|y - t| + 1e-12)`` keeps only weights strictly above it, so k - 1 items
    survive (ties aside); they are L1-normalised. Gradient: that of the dense softmax.
    """
    y = torch.softmax(logits, dim=-1)
    thres = torch.topk(y, k, dim=-1, sorted=True).values[..., -1:]
    hard = y.detach()
    hard = F.relu(hard - thres) * hard / ((hard - thres).abs() + 1e-12)
    hard = F.normalize(hard, p=1, dim=-1)
    return (hard - y).detach() + y


def sparse_read(query: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """query (B, P, C), items (P, M, C) -> read-out (B, P, C): per region p, the sparse
    weighted sum of its M items."""
    logits = torch.einsum("bpc,pmc->bpm", query, items)
    return torch.einsum("bpm,pmc->bpc", topk_shrink(logits, k), items)


class MemoryQueue(nn.Module):
    """P FIFO queues of M detached past features each (the official ``MemoryQueue``, one per patch
    position, here stacked). ``items`` (P, M, C) starts uniform in +-1/sqrt(C) as in the code and is
    overwritten from ``ptr`` on, wrapping around; ``ptr`` is a buffer so checkpoints keep it (the
    official pointer is a plain tensor attribute, lost on save)."""

    def __init__(self, positions: int, slots: int, dim: int, topk: int):
        super().__init__()
        self.topk = topk
        bound = 1.0 / math.sqrt(dim)
        self.register_buffer("items", torch.empty(positions, slots, dim).uniform_(-bound, bound))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def read(self, query: torch.Tensor) -> torch.Tensor:
        """query (B, P, C) -> (B, P, C); the items are constants (no gradient reaches them)."""
        return sparse_read(query, self.items, self.topk)

    @torch.no_grad()
    def push(self, values: torch.Tensor) -> None:
        """Enqueue values (B, P, C), oldest first, overwriting the oldest items; B may exceed M
        (then only the last M values stay, in order)."""
        values = values.detach()
        slots = self.items.shape[1]
        b = values.shape[0]
        idx = (self.ptr + torch.arange(b, device=values.device)) % slots
        if b > slots:   # later values win: keep the last `slots` of them
            values, idx = values[-slots:], idx[-slots:]
        self.items[:, idx] = values.transpose(0, 1).to(self.items.dtype)
        self.ptr.copy_((self.ptr + b) % slots)


class LearnedMemory(nn.Module):
    """The student decoder's memory block (official ``MemoryMatrixBlock`` 'V1'): each feature map
    (N, C, H, W) is cut into g x g windows; window p of every map queries its own learned matrix
    (M, C * (H/g) * (W/g)); the read-out replaces the window (the official mask ratio 1.0 keeps no
    part of the input)."""

    def __init__(self, grid: int, slots: int, dim: int, topk: int):
        super().__init__()
        self.grid, self.topk = grid, topk
        bound = 1.0 / math.sqrt(dim)
        self.items = nn.Parameter(torch.empty(grid * grid, slots, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        windows = to_patches(x, self.grid)                        # (N * P, C, h, w)
        shape = windows.shape
        out = sparse_read(windows.reshape(n, self.grid ** 2, -1), self.items, self.topk)
        return from_patches(out.reshape(shape), self.grid)


def to_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * g * g, C, H/g, W/g): image-major, patches in row-major order (the
    official ``make_window`` with stride = window)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, grid, h // grid, grid, w // grid)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b * grid * grid, c, h // grid, w // grid)


def from_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: (B * g * g, C, h, w) -> (B, C, g*h, g*w)."""
    n, c, h, w = x.shape
    b = n // (grid * grid)
    x = x.reshape(b, grid, grid, c, h, w)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * h, grid * w)


def neighbours(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The 8 neighbours of every grid position, zero beyond the border.

    x (B, P = g*g, C) -> (B, P, 8, C), neighbours in row-major order of the 3 x 3 window without
    its centre (the official code unfolds the g x g grid with a 3 x 3 window, padding 1, and
    drops the centre; the order does not matter to the attention that reads them).
    """
    b, p, c = x.shape
    padded = F.pad(x.reshape(b, grid, grid, c), (0, 0, 1, 1, 1, 1))     # (B, g+2, g+2, C)
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    out = torch.stack([padded[:, dy:dy + grid, dx:dx + grid] for dy, dx in shifts], dim=3)
    return out.reshape(b, p, 8, c)


def position_code(positions: int) -> torch.Tensor:
    """(P, bits) binary code of each patch index, most significant bit first, with
    bits = floor(log2 P) + 1 (the official ``binarize``)."""
    bits = int(math.log2(positions)) + 1
    idx = torch.arange(positions).unsqueeze(1)
    return ((idx >> torch.arange(bits - 1, -1, -1)) & 1).float()
