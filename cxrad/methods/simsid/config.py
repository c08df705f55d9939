"""SimSID's one training stage config (`cxrad fit --method simsid`, TOML table ``[simsid]``).

The defaults are the **official code's** values (github MrGiovanni/SimSID, configs/zhang_dev.py
on top of configs/base.py, main.py, alert.py), which is the reference; where the paper (Xiang et
al., TPAMI 2024) says something else, the comment beside the field says what. docs/simsid.md
lists every departure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxrad.config import ConfigValueError, Device, StageConfig, at_least, in_range, operational

LEVELS = 4          # encoder down blocks / decoder up blocks (official `level = 4`)
REDUCE = 4          # the in-painting block's 1x1 conv keeps 1/4 of the bottleneck channels (512 -> 128)


@dataclass
class SimSIDConfig(StageConfig):
    """Model, loss, optimiser and augmentation of SimSID; see docs/simsid.md."""

    size: int = 128                     # input side; the prepared data must have this size. 64 is supported:
                                        # the patches, the bottleneck and the memory width scale with it
    grid: int = 2                       # patches per side (official num_patch = 2; paper: 4 x 4)
    width: int = 32                     # channels after the input conv; x2 per level (32..512)
    memory_slots: int = 200             # items per memory region, in-painting queue and decoder memories
                                        # (paper's best: 100)
    memory_topk: int = 5                # items kept by the "Gumbel shrinkage". Official code: the threshold is
                                        # the k-th largest weight and hard_shrink_relu zeroes values equal to it,
                                        # so k - 1 = 4 items are read (paper: top 5); cxrad does the same
    heads: int = 8                      # multi-head attention heads of the in-painting block
    recon_weight: float = 10.0          # lambda_s, student reconstruction MSE
    teacher_weight: float = 0.01        # lambda_t, teacher reconstruction MSE
    dist_weight: float = 0.001          # lambda_dist, sum over 4 decoder levels of MSE(student, teacher)
    gen_weight: float = 0.005           # lambda_gen, BCE(D(student recon), 1); paper: both generators get it,
                                        # code: the student only
    disc_weight: float = 0.005          # lambda_dis, BCE(D(x), 1) + BCE(D(recon), 0)
    lr: float = 1e-4                    # generator (encoder, in-painting, both decoders)
    disc_lr: float = 1e-4               # discriminator
    betas: tuple[float, float] = (0.5, 0.999)   # both optimisers
    weight_decay: float = 1e-5          # generator only (the discriminator's Adam has none)
    adam_eps: float = 1e-7              # generator's Adam eps (official; the discriminator uses torch's 1e-8)
    cosine_period: int = 300            # CosineAnnealingLR T_max in epochs, generator only; past T_max the
                                        # schedule rises again (torch's periodic cosine), as in the official
                                        # 1000-epoch run. Paper: decays to 2e-5 over 200 epochs, D scheduled too
    lr_min: float = 1e-5                # eta_min (official lr * 0.1)
    batch_size: int = 16
    critic_steps: int = 2               # discriminator every batch, generator every critic_steps-th batch
    epochs: int = 1000                  # official; paper: 200. The kept model is always the last epoch (the
                                        # official code keeps the epoch with the best AUC on a labelled
                                        # validation set: not done here, docs/simsid.md "Protocol")
    translate: float = 0.05             # RandomAffine: shift up to this fraction of the side (whole pixels)
    scale_range: tuple[float, float] = (0.95, 1.05)   # RandomAffine scale; nearest-neighbour, zero fill
    score_norm: Literal["image", "running"] = "image"  # discriminator batch norm at scoring time. "image": each
                                        # image normalised by its own statistics, as the official code does (its
                                        # discriminator never leaves train mode and scores one image per batch);
                                        # "running": the running statistics (eval mode)
    seed: int = 0
    device: Device = operational("auto")
    score_batch_size: int = operational(64)   # most images per forward pass when scoring and computing the
                                        # score statistics (a 256-image batch at 128 px needs ~5 GB)
    checkpoint_every: int = operational(10)   # epochs between resume checkpoints

    def check(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "critic_steps", "cosine_period", "heads", "score_batch_size",
                 "checkpoint_every")
        at_least(self, 2, "memory_slots")
        at_least(self, 1, "grid", "width", "memory_topk")
        if self.memory_topk > self.memory_slots:
            raise ConfigValueError("memory_topk", self.memory_topk, f"must not exceed memory_slots "
                                   f"({self.memory_slots}).")
        patch = self.size // self.grid if self.grid else 0
        if self.size % self.grid or patch % (2 ** LEVELS) or patch < 2 ** LEVELS:
            raise ConfigValueError("size", self.size, f"the patches (size / grid = {self.size}/{self.grid}) must "
                                   f"be a multiple of {2 ** LEVELS} pixels (the encoder halves them {LEVELS} "
                                   f"times); e.g. 64 or 128 with grid 2.")
        if (patch // 2 ** (LEVELS - 1)) % self.grid:
            raise ConfigValueError("grid", self.grid, "the decoder memories cut each patch's inner feature map "
                                   "into grid x grid windows; use a grid that divides size / grid / 8.")
        if self.size < 32:
            raise ConfigValueError("size", self.size, "the discriminator halves the image 5 times; use at least 32.")
        width_bottleneck = self.width * 2 ** LEVELS // REDUCE * (patch // 2 ** LEVELS) ** 2
        if width_bottleneck % self.heads:
            raise ConfigValueError("heads", self.heads, f"must divide the in-painting width {width_bottleneck}.")
        for name in ("lr", "disc_lr", "adam_eps"):
            in_range(self, name, 0.0, float("inf"), lo_open=True)
        at_least(self, 0, "recon_weight", "teacher_weight", "dist_weight", "gen_weight", "disc_weight",
                 "weight_decay", "lr_min", "translate")
        in_range(self, "translate", 0.0, 0.5)
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise ConfigValueError("betas", list(self.betas), f"beta{i + 1} must lie in [0, 1).")
        lo, hi = self.scale_range
        if not 0.0 < lo <= hi:
            raise ConfigValueError("scale_range", list(self.scale_range), "need 0 < low <= high.")
