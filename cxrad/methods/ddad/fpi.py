"""Foreign Patch Interpolation pseudo-anomalies (docs/method.md, "Synthetic anomalies"): recipes and their application.

A *recipe* is everything random about one synthetic sample, drawn once and stored, so training
is reproducible and a preview can be rebuilt from the file. Applying recipes is one vectorised
tensor expression on any device (no per-sample Python).

Geometry scales with the side ``d``: centre per axis uniform integer in
[int(0.1 d), int(0.9 d)), half-width uniform integer in [int(0.05 d), int(0.2 d)) — at 64 px
centres 6..56 and half-widths 3..11 (the reference's ``randint(0.1d, 0.9d)`` / ``randint(0.05d,
0.2d)`` after integer truncation). The patch covers rows [cy − h, cy + h) and columns
[cx − h, cx + h), clipped to the image, so its area is (2h)² when it lies inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RECIPE_FIELDS = ("source", "donor", "cy", "cx", "half", "alpha", "patched")


@dataclass
class Recipes:
    """One epoch of recipes, arrays of length n (one sample per pool image, in training order)."""

    source: np.ndarray   # (n,) int64 index into the pool; a permutation = the epoch's order
    donor: np.ndarray    # (n,) int64, never equal to source
    cy: np.ndarray       # (n,) int64 patch centre row
    cx: np.ndarray       # (n,) int64 patch centre column
    half: np.ndarray     # (n,) int64 half-width
    alpha: np.ndarray    # (n,) float32 interpolation factor in [0, 1)
    patched: np.ndarray  # (n,) bool; False = clean sample with an all-zero mask

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def slice(self, sl: slice) -> "Recipes":
        return Recipes(*(getattr(self, f)[sl] for f in RECIPE_FIELDS))


def geometry_bounds(size: int, centre_range=(0.1, 0.9), half_width_range=(0.05, 0.2)) -> tuple[int, int, int, int]:
    """(centre_lo, centre_hi, half_lo, half_hi), hi exclusive, for an image side ``size``."""
    c_lo, c_hi = int(centre_range[0] * size), int(centre_range[1] * size)
    h_lo, h_hi = max(1, int(half_width_range[0] * size)), int(half_width_range[1] * size)
    return c_lo, max(c_hi, c_lo + 1), h_lo, max(h_hi, h_lo + 1)


def draw_recipes(
    n: int,
    size: int,
    rng: np.random.Generator,
    patch_probability: float = 0.5,
    centre_range: tuple[float, float] = (0.1, 0.9),
    half_width_range: tuple[float, float] = (0.05, 0.2),
    donor_pool_size: int | None = None,
) -> Recipes:
    """Draw one epoch of recipes for a pool of ``n`` ≥ 2 images of side ``size``.

    Donors come from the same pool (never the source itself), or, with ``donor_pool_size``, uniformly
    from a separate pool of that many images (index into that pool).
    """
    if n < 2 and donor_pool_size is None:
        raise ValueError("FPI needs at least 2 pool images (a donor must differ from its source)")
    if donor_pool_size is not None and donor_pool_size < 1:
        raise ValueError("the donor pool is empty")
    c_lo, c_hi, h_lo, h_hi = geometry_bounds(size, centre_range, half_width_range)
    source = rng.permutation(n).astype(np.int64)
    if donor_pool_size is None:
        # offset in 1..n-1 makes donor ≠ source and uniform over the other images
        donor = (source + rng.integers(1, n, size=n)) % n
    else:
        donor = rng.integers(0, donor_pool_size, size=n)
    return Recipes(
        source=source,
        donor=donor.astype(np.int64),
        cy=rng.integers(c_lo, c_hi, size=n).astype(np.int64),
        cx=rng.integers(c_lo, c_hi, size=n).astype(np.int64),
        half=rng.integers(h_lo, h_hi, size=n).astype(np.int64),
        alpha=rng.uniform(0.0, 1.0, size=n).astype(np.float32),
        patched=rng.random(n) < patch_probability,
    )


def recipe_masks(recipes: Recipes, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Binary patch masks (B, H, W) float32; all-zero for clean samples, whatever α is."""
    def t(a):
        return torch.as_tensor(a, device=device)

    coords = torch.arange(size, device=device)
    cy, cx, h = t(recipes.cy)[:, None], t(recipes.cx)[:, None], t(recipes.half)[:, None]
    rows = (coords[None] >= cy - h) & (coords[None] < cy + h)  # (B, H)
    cols = (coords[None] >= cx - h) & (coords[None] < cx + h)  # (B, W)
    mask = rows[:, :, None] & cols[:, None, :] & t(recipes.patched)[:, None, None]
    return mask.float()


def apply_recipes(pool: torch.Tensor, recipes: Recipes,
                  donor_pool: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a batch of synthetic samples.

    ``pool``: (N, H, W) images — or (N, C, H, W) discrepancy maps — on the target device, in the
    space the blend happens in (images: the network's [-1, 1], as the reference). Donors are taken
    from ``donor_pool`` (same trailing shape) when given, else from ``pool``. Returns
    (x_s (B, …), mask (B, H, W) float32) with x_s = (1 − α)·x + α·x_f inside the patch (every
    channel alike) and x elsewhere.
    """
    dev = pool.device
    donors = pool if donor_pool is None else donor_pool
    idx_s = torch.as_tensor(recipes.source, device=dev)
    idx_d = torch.as_tensor(recipes.donor, device=dev)
    x, xf = pool[idx_s], donors[idx_d]
    mask = recipe_masks(recipes, pool.shape[-1], dev)
    a = torch.as_tensor(recipes.alpha, device=dev, dtype=pool.dtype)[:, None, None] * mask.to(pool.dtype)
    if x.ndim == 4:
        a = a[:, None]
    return (1 - a) * x + a * xf, mask
