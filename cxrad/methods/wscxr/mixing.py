"""Linear mixing augmentation (WSCXR paper, Sec. II-C, Eq. 5).

The mined abnormal patch features M'_a — the official code calls them *prototypes* — are far too
few to balance the normal patches. Each normal patch feature m_n of a training batch gets one
synthetic abnormal partner m'_a = (1 - w) m_n + w m_a, with m_a drawn uniformly (with replacement)
from the prototypes and w ~ U[w_min, 1) (w_min = 0.1 in the paper and the code), so the fake set
is exactly as large as the normal batch and spans the segment from each normal patch to a lesion.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Mixed(NamedTuple):
    """``fake`` (B, D) synthetic abnormal features; ``weight`` (B, 1) the w of each row;
    ``index`` (B,) the prototype row mixed into each."""

    fake: torch.Tensor
    weight: torch.Tensor
    index: torch.Tensor


def draw_mixing(count: int, prototypes: int, *, w_min: float = 0.1,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (count, 1) uniform in [w_min, 1), index (count,) uniform in [0, prototypes)), drawn
    on the CPU from ``generator`` (weights first, then indices) so a run repeats on any device."""
    if prototypes < 1:
        raise ValueError("linear mixing needs at least one prototype")
    weight = torch.rand((count, 1), generator=generator) * (1.0 - w_min) + w_min
    index = torch.randint(0, prototypes, (count,), generator=generator)
    return weight, index


def mix(normal: torch.Tensor, prototypes: torch.Tensor, weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(1 - w) * normal + w * prototypes[index]: normal (B, D), prototypes (M, D), weight (B, 1),
    index (B,) -> (B, D)."""
    return normal * (1.0 - weight) + prototypes[index] * weight


def linear_mixing(normal: torch.Tensor, prototypes: torch.Tensor, *, w_min: float = 0.1,
                  generator: Optional[torch.Generator] = None) -> Mixed:
    """One synthetic abnormal feature per row of ``normal`` (B, D), from ``prototypes`` (M, D)."""
    weight, index = draw_mixing(len(normal), len(prototypes), w_min=w_min, generator=generator)
    weight, index = weight.to(normal.device, normal.dtype), index.to(normal.device)
    return Mixed(mix(normal, prototypes, weight, index), weight, index)
