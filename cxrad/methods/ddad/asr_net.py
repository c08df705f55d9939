"""ASR-Net (anomaly score refinement, docs/method.md, "ASR-Net"), its focal loss and its input normalisation.

The network is the reference's three 3×3 convolutions; what it eats is our choice: each input map
channel is divided by a fixed scale measured on the maps of the normal training images (recorded
in the refine artifact), because raw discrepancy maps are ~1e-2 with a run-dependent scale — so
small that BatchNorm's ε dominates the first layer's variance and train/eval statistics disagree.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# channel order of the reference: dual = [A_inter, A_intra]
INPUT_CHANNELS = {"dual": ("A_inter", "A_intra"), "intra": ("A_intra",)}


class ASRNet(nn.Module):
    """Conv3×3(in→c) → BN → ReLU → Conv3×3(c→c) → BN → ReLU → Conv3×3(c→2), padding 1.

    forward: (B, in, H, W) -> logits (B, 2, H, W); channel 1 of the softmax = anomaly probability.

    Weights and activations are kept channels-last (NHWC): the 128→128 convolution is almost all of
    the work, and oneDNN runs it ~1.1× (training) to ~1.4× (inference) faster in that layout on
    CPU (benchmarks/asr_speed.py); cuDNN prefers it too. Only the memory layout changes, not the
    arithmetic: outputs agree with the NCHW layout to float rounding, and state dicts load into
    either layout.
    """

    def __init__(self, in_channels: int, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 3, padding=1),
        )
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))


def anomaly_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) logits -> (B, H, W) probability of the anomaly class."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of −(1 − p_t)^γ log p_t, no class weighting (Lin et al. 2017).

    logits (B, 2, H, W), target (B, H, W) in {0, 1} -> scalar.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = logp.gather(1, target.long()[:, None])[:, 0]
    p_t = logp_t.exp()
    return (-(1 - p_t) ** gamma * logp_t).mean()


def asr_inputs(maps: dict[str, torch.Tensor], inputs: str, scales=None,
               clip: Sequence[float] | None = None) -> torch.Tensor:
    """Stack the maps ASR-Net reads, each clipped at ``clip`` (raw units), then divided by its scale.

    maps: name -> (B, H, W) -> (B, C, H, W). ``scales``: (C,) one per channel, or (C, H, W) per pixel.
    """
    names = INPUT_CHANNELS[inputs]
    return scale_inputs(torch.stack([maps[n].float() for n in names], dim=1), scales, clip)


def scale_inputs(x: torch.Tensor, scales=None, clip: Sequence[float] | None = None) -> torch.Tensor:
    """(B, C, H, W) raw stacked maps -> clipped at ``clip`` (C,), divided by ``scales`` (C,) or (C, H, W)."""
    x = x.float()
    if clip is not None:
        x = torch.minimum(x, torch.as_tensor(list(clip), dtype=x.dtype, device=x.device)[None, :, None, None])
    if scales is not None:
        s = torch.as_tensor(scales, dtype=x.dtype, device=x.device)
        x = x / (s[None, :, None, None] if s.ndim == 1 else s[None])
    return x
