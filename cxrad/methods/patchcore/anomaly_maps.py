"""Patch distances -> pixel anomaly maps: bilinear upsampling, then Gaussian smoothing.

As the official PatchCore code (RescaleSegmentor): the patch-score grid is upsampled bilinearly to
the image size and smoothed with a Gaussian (scipy.ndimage.gaussian_filter, sigma 4 at 224 px,
'reflect' boundary, kernel truncated at 4 sigma). Done here in torch on the scorer's device, as
two small matrix products per map: a (H, H) and a (W, W) blur matrix whose rows hold the Gaussian
weights with the boundary folded back the way scipy's 'reflect' mode does (d c b a | a b c d |
d c b a), so the result equals scipy's for any sigma and size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Fold indices outside [0, n) back into it, mirroring about the edges (scipy 'reflect')."""
    index = index % (2 * n)
    return torch.where(index >= n, 2 * n - 1 - index, index)


def blur_matrix(n: int, sigma: float, *, truncate: float = 4.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, n) matrix B with (B @ x) = 1-D Gaussian smoothing of x along its first axis."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device)
    weights = torch.exp(-0.5 * (offsets.to(torch.float64) / sigma) ** 2)
    weights = (weights / weights.sum()).to(dtype)
    rows = torch.arange(n, device=device).unsqueeze(1).expand(n, len(offsets))
    cols = _reflect(rows + offsets, n)
    out = torch.zeros(n, n, device=device, dtype=dtype)
    out.index_put_((rows.reshape(-1), cols.reshape(-1)), weights.repeat(n), accumulate=True)
    return out


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """maps (N, H, W) -> (N, H, W) smoothed with an isotropic Gaussian of ``sigma`` pixels."""
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    bh = blur_matrix(h, sigma, device=maps.device, dtype=maps.dtype)
    bw = blur_matrix(w, sigma, device=maps.device, dtype=maps.dtype)
    return bh @ maps @ bw.T


def patch_maps(distances: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """distances (N, h, w) patch scores -> (N, H, W) maps at ``size`` = (H, W): bilinear
    upsampling, then Gaussian smoothing with ``sigma`` in output pixels."""
    up = F.interpolate(distances.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return gaussian_smooth(up, sigma)


def sigma_at(size: int, input_size: int, sigma_input: float) -> float:
    """The smoothing sigma in pixels of a ``size``-pixel map, for ``sigma_input`` pixels at the
    network input size (the official code smooths maps at its 224-px input size)."""
    return sigma_input * size / input_size
