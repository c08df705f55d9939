"""Locally aggregated mid-level patch features (PatchCore, Roth et al. CVPR 2022, section 3.1).

PatchCore takes the outputs of two mid-level stages of an ImageNet network (WRN-50 layer2 and
layer3: strides 8 and 16) — generic enough to transfer to a new domain, less biased towards
ImageNet classes than the last stage. For EfficientNet-Lite these are the ends of the stride-8
and stride-16 stages (Lite0: block 4, 40 channels, and block 10, 112 channels; 28×28 and 14×14
at 224 px). Per image (:meth:`PatchFeatureExtractor.forward`):

1. grey (N, H, W) in [0, 1] -> bilinear resize to ``input_size`` (antialiased when shrinking) ->
   the grey value on all three channels -> ImageNet mean/std normalisation;
2. each stage's map is aggregated over its 3×3 neighbourhood (average pooling, stride 1, zero
   padding counted — what the official code's unfold + mean amounts to per channel), so a patch
   feature sees a slightly larger receptive field without losing resolution;
3. the stride-16 map is upsampled bilinearly to the stride-8 grid;
4. each stage's channels are adaptive-average-pooled to ``feature_dim / 2`` (the official code
   pools every layer to one common size, so both stages weigh the same in Euclidean distances
   whatever their channel counts) and the two are concatenated: D = ``feature_dim``.

Result: (N, P, D) with P = grid_h × grid_w patches in row-major order (784 at 224 px).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrad.features.backbones import Backbone, StageTrunk, trunk_from_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # the normalisation the Lite weights were converted with
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_network_input(images01: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) grey in [0, 1] -> (N, 3, size, size) ImageNet-normalised."""
    x = images01.float().unsqueeze(1)
    if tuple(x.shape[-2:]) != (size, size):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


class PatchFeatureExtractor(nn.Module):
    """Frozen trunk -> patch features. ``feature_dim`` even (half per stage)."""

    def __init__(self, trunk: StageTrunk, *, input_size: int = 224, feature_dim: int = 256):
        super().__init__()
        if feature_dim < 2 or feature_dim % 2:
            raise ValueError(f"feature_dim must be even and >= 2, got {feature_dim}")
        if len(trunk.stages) != 2:
            raise ValueError("the extractor takes exactly two stages")
        self.trunk, self.input_size, self.feature_dim = trunk, int(input_size), int(feature_dim)

    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid: the stride-8 map's size at ``input_size``."""
        side = -(-self.input_size // 8)   # TensorFlow 'SAME' convolutions: ceil(size / stride)
        return side, side

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """images01 (N, H, W) float in [0, 1] -> features (N, P, D) float32."""
        shallow, deep = self.trunk(to_network_input(images01, self.input_size))
        shallow = F.avg_pool2d(shallow, 3, stride=1, padding=1)
        deep = F.avg_pool2d(deep, 3, stride=1, padding=1)
        deep = F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        half = self.feature_dim // 2
        parts = [_pool_channels(f, half) for f in (shallow, deep)]
        return torch.cat(parts, dim=-1)

    def extract(self, images01: np.ndarray | torch.Tensor, *, batch_size: int = 32,
                device: Optional[torch.device] = None, out: Optional[torch.Tensor] = None,
                on_batch=None) -> torch.Tensor:
        """All of ``images01`` (N, H, W) in batches -> (N, P, D) float32 on the CPU (or in ``out``).
        ``on_batch(n)`` is called after each batch (progress)."""
        device = device or next(self.trunk.parameters()).device
        n, (gh, gw) = len(images01), self.grid()
        if out is None:
            out = torch.empty((n, gh * gw, self.feature_dim), dtype=torch.float32)
        for s in range(0, n, batch_size):
            batch = torch.as_tensor(np.asarray(images01[s:s + batch_size], np.float32), device=device)
            out[s:s + len(batch)] = self(batch).cpu()
            if on_batch is not None:
                on_batch(len(batch))
        return out


def _pool_channels(fmap: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, h·w, dim): adaptive average pooling over the channel axis."""
    n, c, h, w = fmap.shape
    flat = fmap.permute(0, 2, 3, 1).reshape(n * h * w, 1, c)
    return F.adaptive_avg_pool1d(flat, dim).reshape(n, h * w, dim)


def extractor_state(backbone: Backbone, input_size: int, feature_dim: int) -> dict[str, Any]:
    """What a model file keeps of its frozen feature extractor: the trunk's own weights (so scoring
    never depends on the weights file still being there), their provenance and the extractor's sizes.
    :func:`extractor_from_state` rebuilds the extractor from it."""
    trunk = backbone.trunk
    return {"backbone": backbone.arch, "stages": list(trunk.stages),
            "trunk": {k: v.detach().cpu() for k, v in trunk.state_dict().items()},
            "weights": backbone.source, "weights_sha256": backbone.sha256 or "",
            "input_size": int(input_size), "feature_dim": int(feature_dim)}


def extractor_from_state(state: dict[str, Any], device: torch.device) -> PatchFeatureExtractor:
    """The extractor an :func:`extractor_state` dict describes, on ``device``, in eval mode."""
    trunk = trunk_from_state(state["backbone"], state["stages"], state["trunk"])
    return PatchFeatureExtractor(trunk.to(device), input_size=int(state["input_size"]),
                                 feature_dim=int(state["feature_dim"]))
