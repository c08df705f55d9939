"""DDAD-ASR's stage configs: ensemble training, FPI synthesis, ASR-Net refinement.

Defaults are the reference hyper-parameters except the four departures listed in
docs/method.md ("Where cxrad departs from the paper"), each with the setting that restores the
reference. Operational fields (device, checkpoint cadence, which module this process trains)
never change an artifact's identity (:mod:`cxrad.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxrad.config import ConfigValueError, Device, StageConfig, added_field, at_least, in_range, operational

Backbone = Literal["ae", "memae", "aeu"]
RefineInputs = Literal["dual", "intra"]
REFERENCE_DEPTH = 4         # stride-2 stages of the reference autoencoders (autoencoders.py)
DEPTHS = range(3, 8)        # what cxrad builds: a 64-channel bottleneck from depth 3 on


@dataclass
class EnsembleConfig(StageConfig):
    """`cxrad train-ensemble`: K reconstruction networks per module (docs/method.md, "Ensembles")."""

    module: Literal["ndm", "udm", "both"] = operational("both")  # which module(s) this process trains
    members: int = 3                    # K; intra-discrepancy needs K >= 2
    backbone: Backbone = "ae"
    epochs: int = 250
    batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    latent_dim: int = 16
    depth: int = added_field(REFERENCE_DEPTH)  # stride-2 stages per network: 4 (reference) at 64 px; 5 at
                                        # 128 px keeps the 4 x 4 bottleneck (autoencoders.py); the image side
                                        # must divide by 2^depth
    memory_items: int = 25              # MemAE
    shrink_threshold: float = 0.0       # MemAE hard shrinkage; 0 disables (reference)
    entropy_weight: float = 0.0002      # MemAE attention-entropy loss weight
    seed: int = 0
    paired_init: bool = True            # UDM member i starts from NDM member i's weights and shuffle seed:
                                        # A_inter = |mean_NDM - mean_UDM| then measures what Du taught the
                                        # UDM, not two independent inits (+1.6 to +2.7 AUC on ZhangLab);
                                        # False = the reference's independent members
    ema_decay: float = 0.998            # keep an exponential moving average of each member's weights and
                                        # save it (BN statistics recomputed over the training set); warm-up
                                        # min(decay, (1+t)/(10+t)) over steps t. 0 = the reference: last
                                        # step's weights
    checkpoint_every: int = operational(10)  # epochs between checkpoints
    device: Device = operational("auto")
    amp: bool = False                   # bf16 autocast of the training forward pass (changes results; fast on
                                        # GPUs and on CPUs with AMX or AVX512-BF16, slow on other CPUs)

    def check(self) -> None:
        if self.members < 2:
            raise ConfigValueError("members", self.members, "the intra-discrepancy needs K >= 2 members (the "
                                   "reference trains 3).")
        at_least(self, 1, "epochs", "batch_size", "checkpoint_every", "latent_dim", "memory_items")
        in_range(self, "lr", 0.0, float("inf"), lo_open=True)
        in_range(self, "ema_decay", 0.0, 1.0, hi_open=True)
        at_least(self, 0, "weight_decay", "shrink_threshold", "entropy_weight")
        in_range(self, "depth", DEPTHS.start, DEPTHS.stop - 1)


@dataclass
class SynthConfig(StageConfig):
    """`cxrad synthesize`: FPI pseudo-anomaly recipes (docs/method.md, "Synthetic anomalies")."""

    epochs: int = 100                   # one recipe set per ASR training epoch
    seed: int = 0
    patch_probability: float = 0.5
    centre_range: tuple[float, float] = (0.1, 0.9)      # fraction of the side, [lo, hi)
    half_width_range: tuple[float, float] = (0.05, 0.2)  # fraction of the side, [lo, hi)
    preview_count: int = 32
    # Where the patch is blended:
    #   "maps"  — into the discrepancy maps of a Dn image, donor maps from an unlabelled (Du) image;
    #   "image" — the reference: into the image, donor another Dn image (ASR-Net then sees the maps
    #             of the blended image, which at 64 px barely change inside the patch);
    #   "auto"  — "maps" when the prepared data hold unlabelled images, else "image".
    space: Literal["auto", "maps", "image"] = "auto"

    def check(self) -> None:
        at_least(self, 1, "epochs")
        at_least(self, 0, "preview_count")
        in_range(self, "patch_probability", 0.0, 1.0)
        for name in ("centre_range", "half_width_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= 1:
                raise ConfigValueError(name, (lo, hi), "need 0 <= low < high <= 1 (fractions of the side).",
                                       shown=f"{lo} {hi}", label=name)


@dataclass
class RefineConfig(StageConfig):
    """`cxrad refine`: ASR-Net training on maps of synthetic anomalies (docs/method.md, "ASR-Net")."""

    inputs: RefineInputs = "dual"       # "dual" ([A_inter, A_intra]) or "intra"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    hidden_channels: int = 128
    seed: int = 0
    checkpoint_every: int = operational(10)
    device: Device = operational("auto")
    # (the next five fields are the departures from the reference that make the final model
    # stable: docs/method.md, "Where cxrad departs from the paper")
    normalize: Literal["normal-pixel-mean", "normal-mean", "none"] = "normal-pixel-mean"  # divide each map
                                        # channel by the normal training images' mean map, pixel by
                                        # pixel (floored at 10% of the channel mean); "normal-mean": by
                                        # one scalar per channel; "none" = reference: raw maps
    ema_decay: float = 0.999            # keep an exponential moving average of the weights (0 = off);
                                        # warm-up min(decay, (1+t)/(10+t)) so short runs are not stuck at init
    clip_quantile: float = 0.0          # >0: clip each input channel at this quantile of its values on
                                        # the normal training images' maps (recorded); 0 = off
    level_jitter: tuple[float, float] = (1.0, 1.0)  # per-sample, per-channel gain on the input maps,
                                        # log-uniform in [lo, hi]; (1, 1) = off
    donor_fraction: float = added_field(0.5, made_with=1.0)  # map-space FPI: blend only from this
                                        # fraction of the donor (Du) images, those whose input maps are
                                        # highest on average; 1 = every donor, as before (docs/method.md,
                                        # "Where cxrad departs", 5)
    precise_bn: bool = True             # recompute BatchNorm statistics of the kept weights over one
                                        # full synthetic epoch (the running stats of batch-8 training are
                                        # those of the last ~10 batches)
    amp: bool = added_field(False)      # bf16 autocast of ASR-Net's training forward pass (changes results;
                                        # fast on GPUs and on CPUs with AMX or AVX512-BF16); BN statistics
                                        # and scoring stay fp32

    def check(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "hidden_channels", "checkpoint_every")
        in_range(self, "lr", 0.0, float("inf"), lo_open=True)
        in_range(self, "ema_decay", 0.0, 1.0, hi_open=True)
        in_range(self, "clip_quantile", 0.0, 1.0)
        in_range(self, "donor_fraction", 0.0, 1.0, lo_open=True)
        lo, hi = self.level_jitter
        if not 0 < lo <= hi:
            raise ConfigValueError("level_jitter", (lo, hi), "need 0 < low <= high.", shown=f"{lo} {hi}",
                                   label="level_jitter")
